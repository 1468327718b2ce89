"""``meshfed logs``: the gateways' access logs (JSON lines written by Envoy), read back.

Each gateway writes two files (paths from ``render/envoy/files.log_path``):

- ``access``: one line per HTTP request at an ingress (caller, SNI, method, path, code, RBAC
  decision) and one per proxied connection at an egress;
- ``conn``: one line per connection at the listener, the only place a failed TLS handshake
  (``tls_failure``) or an unknown SNI (flag ``NR``) shows.

The boundary view (``boundary_view``) records every crossing once: the requests at each ingress,
the TCP sessions of each ingress's TCP exports (the line of the export's tunnel, with its RBAC
decision), the connections each egress let out, and every refused connection (failed TLS
handshake, unknown SNI). It leaves out what would repeat an access line (the connection an HTTP
request or a TCP session came on) and the egress gateways' health checks (plaintext connections
without SNI, and TLS probes that got their ServerHello, within the probe's timeout). A
handshake a client left unfinished until the listener closed it is a crossing attempt too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from meshfed.local.prober import FALSE_CLAIM, PENDING, SETTLE, Marks
from meshfed.local.summary import RuntimeSummary
from meshfed.plan.limits import FailoverPolicy
from meshfed.render.envoy.files import log_path

Kind = Literal["access", "conn"]


@dataclass(frozen=True)
class LogEntry:
    process: str
    file: Kind
    doc: dict[str, Any]
    probe: str | None = None
    """meshfed's own traffic: what probe it is (``prober.Marks.mark``); None: a caller's."""

    @property
    def time(self) -> str:
        return str(self.doc.get("time") or "")


def gateway_logs(
    root: Path, summary: RuntimeSummary, mesh: str | None, boundary: bool
) -> list[tuple[str, Kind, Path]]:
    """The log files to read: (process, file kind, path)."""
    if mesh is not None:
        summary.mesh(mesh)  # a clear error for an unknown mesh
    kinds: tuple[Kind, ...] = ("access", "conn") if boundary else ("access",)
    return [
        (p.name, kind, log_path(root, p.name, kind))
        for p in summary.processes
        if p.role in ("ingress", "egress") and (mesh is None or p.mesh == mesh)
        for kind in kinds
    ]


def hop_logs(root: Path, summary: RuntimeSummary) -> list[Path]:
    """The logs a TCP import probe's connection is followed through (``local/hops.py``): every
    sidecar's (its TCP import listeners') and every egress gateway's access log."""
    return [
        log_path(root, p.name, "access")
        for p in summary.processes
        if p.role in ("sidecar", "egress")
    ]


PROBE_SNI = FailoverPolicy().probe_sni
"""The SNI of the egress gateways' TLS probes (``render/envoy/probe.py``)."""
HANDSHAKE_BOUND = "transport socket timeout was reached"
"""Envoy's connection termination details when a listener's handshake bound
(``transport_socket_connect_timeout``) closed the connection."""
HELD_MS = int(FailoverPolicy().probe_timeout.total_seconds() * 1000) // 2
"""A health check is over in milliseconds (a ServerHello, or a plain connect); a connection
held half the probe's timeout without a handshake is a client's stall (the shortest handshake
bound a listener gets is the probe's timeout)."""


def is_health_check(doc: dict[str, Any]) -> bool:
    """An egress gateway's check of an exporter's ingress: a plaintext connect (no SNI), or a
    TLS probe that got its ServerHello and left (the probe SNI, no certificate, no failure),
    within the probe's timeout. A connection that stalled (held until a timeout closed it) is
    never one, whatever its SNI: that is what an attack on the ingress looks like."""
    return (
        doc.get("kind") == "connection"
        and doc.get("sni") in (None, "", PROBE_SNI)
        and not doc.get("caller")
        and not doc.get("tls_failure")
        and not doc.get("bytes_received")
        and "NR" not in str(doc.get("flags") or "")
        and stalled_handshake(doc) is None
    )


def stalled_handshake(doc: dict[str, Any]) -> str | None:
    """Why a connection closed before its TLS handshake completed without failing it: the
    client sent nothing, half a ClientHello, or a ClientHello and then nothing, until the
    listener's handshake bound closed it (``plan/limits.py``); None for anything else.

    Envoy's own word that the bound closed it (``transport socket timeout was reached``) is
    taken over its TLS failure reason: under load Envoy sometimes names one
    (``CONNECTION_REJECTED``) for a client that sent its ClientHello and then nothing."""
    details = str(doc.get("details") or "")
    if (
        doc.get("kind") != "connection"
        or doc.get("caller")
        or (doc.get("tls_failure") and HANDSHAKE_BOUND not in details)
        or doc.get("upstream")
        or doc.get("bytes_received")
        or str(doc.get("flags") or "-") not in ("-", "")
    ):
        return None
    duration = doc.get("duration_ms")
    held = isinstance(duration, int) and duration >= HELD_MS
    if not held and "timeout" not in details:
        return None
    after = f" after {duration / 1000:.1f} s" if isinstance(duration, int) else ""
    return f"{details or 'closed'}{after}"


def _parse(process: str, kind: Kind, line: str) -> LogEntry | None:
    line = line.strip()
    if not line:
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        doc = {"message": line}
    if not isinstance(doc, dict):
        doc = {"message": line}
    return LogEntry(process, kind, doc)


def is_failure(doc: dict[str, Any]) -> bool:
    flags = str(doc.get("flags") or "-")
    if "rbac_access_denied" in str(doc.get("details") or ""):
        return True
    return bool(doc.get("tls_failure") or doc.get("upstream_failure")) or flags not in ("-", "")


def _keep(entry: LogEntry, boundary: bool) -> bool:
    return not (boundary and is_health_check(entry.doc))


def boundary_view(entries: list[LogEntry], summary: RuntimeSummary) -> list[LogEntry]:
    """Every crossing once (see the module docstring)."""
    kept = []
    for entry in entries:
        doc = entry.doc
        if is_health_check(doc):
            continue
        if entry.file == "conn" and _in_access_file(doc, entry, summary):
            continue
        kept.append(entry)
    return kept


def _in_access_file(doc: dict[str, Any], entry: LogEntry, summary: RuntimeSummary) -> bool:
    """A listener line whose crossing the gateway's access file records: the egress's
    connections; an ingress's connections to an export (HTTP: its requests; TCP: the line of
    the export's tunnel, which names the RBAC decision, also when it refused the caller). A
    handshake that never completed made no request and opened no tunnel."""
    tunnel_refused = str(doc.get("upstream_failure") or "").startswith("tunnel_response")
    if (is_failure(doc) and not tunnel_refused) or stalled_handshake(doc) is not None:
        return False
    gateway = doc.get("gateway") or entry.process.rpartition("/")[2]
    if gateway == "egress":
        return True
    mesh = doc.get("mesh")
    exports = next((m.exports for m in summary.meshes if m.name == mesh), {})
    return str(doc.get("sni")) in exports


def read_entries(files: list[tuple[str, Kind, Path]], boundary: bool) -> list[LogEntry]:
    entries: list[LogEntry] = []
    for process, kind, path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            entry = _parse(process, kind, line)
            if entry is not None and _keep(entry, boundary):
                entries.append(entry)
    entries.sort(key=lambda e: e.time)
    return entries


def follow(
    files: list[tuple[str, Kind, Path]], boundary: bool, interval: float = 0.2
) -> Iterator[list[LogEntry]]:
    """New entries as they are written (until interrupted), each read's in one batch (in
    time order), so that a batch's lines waiting for their hops' logs wait together. From
    the files' ends when it is called (not when first iterated): nothing written after the
    caller's own read is missed."""
    offsets = {path: (path.stat().st_size if path.exists() else 0) for _, _, path in files}
    return _follow(files, boundary, interval, offsets)


def _follow(
    files: list[tuple[str, Kind, Path]], boundary: bool, interval: float, offsets: dict[Path, int]
) -> Iterator[list[LogEntry]]:
    while True:
        batch: list[LogEntry] = []
        for process, kind, path in files:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < offsets[path]:
                offsets[path] = 0
            if size == offsets[path]:
                continue
            with open(path, "rb") as f:
                f.seek(offsets[path])
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            offsets[path] += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                entry = _parse(process, kind, line)
                if entry is not None and _keep(entry, boundary):
                    batch.append(entry)
        if batch:
            yield sorted(batch, key=lambda e: e.time)
        time.sleep(interval)


_CODEC_DETAILS = {
    "http1.codec_error": "malformed HTTP",
    "http1.invalid_characters": "invalid characters in the request",
    "http1.headers_too_large": "headers too large",
    "http1.invalid_transfer_encoding": "unsupported transfer encoding",
    "http1.invalid_url": "invalid URL",
    "http1.invalid_method": "unknown method",
    "low_version": "HTTP/1.0 not accepted",
    "path_normalization_failed": "path cannot be normalised",
}
"""Envoy's ``%RESPONSE_CODE_DETAILS%`` for requests refused before any policy saw them."""


def request_verdict(doc: dict[str, Any]) -> str:
    """One word for a request at a gateway: ``allowed`` (the RBAC policy let it through, or it
    was answered by the workload), ``denied`` (the policy refused it), ``rejected`` (refused
    before the policy: a malformed request, a codec or protocol error, Envoy's 400, 426, 431,
    501), ``refused`` (no route for it)."""
    verdict = doc.get("decision")
    if verdict in ("allowed", "denied"):
        return str(verdict)
    details = str(doc.get("details") or "")
    flags = str(doc.get("flags") or "-").split(",")
    if "rbac_access_denied" in details:
        return "denied"
    if details == "via_upstream":
        return "allowed"
    if "NR" in flags or details == "route_not_found":
        return "refused"
    code = doc.get("code")
    if code == 403 and not details:
        return "denied"  # a log line without the RBAC fields (older format)
    if "DPE" in flags or details.startswith(("http1.", "http2.", "http3.", "codec")):
        return "rejected"
    if isinstance(code, int) and code >= 400:
        return "rejected"
    return "allowed"


def decision(doc: dict[str, Any]) -> str:
    """What happened, in a few words: ``allowed 200``, ``denied 403``, ``rejected 400:
    malformed HTTP (http1.codec_error)``, ``TLS handshake failed``."""
    stalled = stalled_handshake(doc)
    if stalled is not None:
        return f"TLS handshake not completed: {stalled}"
    if doc.get("tls_failure"):
        said = f"TLS handshake failed: {doc['tls_failure']}"
        if doc.get("sni") == PROBE_SNI and not doc.get("caller"):
            # Seen when an egress drops its probes (an exporter's ingress went away or answered
            # late): the ingress's ServerHello meets a closed connection.
            said += " (the egress probes' name: a probe its egress gave up on, or a client's)"
        return said
    flags = str(doc.get("flags") or "-")
    if doc.get("kind") == "request":
        verdict = request_verdict(doc)
        code = doc.get("code")
        details = str(doc.get("details") or "")
        if verdict == "rejected":
            why = _CODEC_DETAILS.get(details, "refused before the policy")
            return f"rejected {code}: {why}" + (f" ({details})" if details else "")
        if verdict == "refused":
            return f"refused {code}: no route"
        return f"{verdict} {code}"
    details = str(doc.get("details") or "")
    if "rbac_access_denied" in details:
        return f"denied ({details})"
    if "NR" in flags.split(","):
        return "refused: no route for this SNI"
    if doc.get("upstream_failure"):
        return f"upstream failed: {doc['upstream_failure']}"
    if flags not in ("-", ""):
        return f"failed (flags {flags})"
    return "passed" if doc.get("upstream") else "closed"


def summary_line(entry: LogEntry, summary: RuntimeSummary | None = None) -> str:
    d = entry.doc
    if "message" in d and len(d) == 1:
        return f"{entry.process}: {d['message']}"
    when = entry.time[11:23] if len(entry.time) >= 23 else entry.time
    where = f"{d.get('mesh', '?')}/{d.get('gateway', entry.process.rpartition('/')[2])}"
    parts = [when, f"{where:<20}"]
    if d.get("kind") == "request":
        parts.append(f"{d.get('method')} {d.get('authority')}{d.get('path')}")
    else:
        parts.append(f"tcp sni={d.get('sni') or '-'}")
    if d.get("caller"):
        # A failed handshake's certificate was not verified: its identity is only a claim.
        parts.append(f"{'claimed' if d.get('tls_failure') else 'caller'}={d['caller']}")
    parts.append(decision(d))
    if d.get("policy"):
        parts.append(f"policy={d['policy']}")
    upstream = d.get("upstream")
    if upstream and d.get("gateway") == "egress":
        target = summary.ingress_at(str(upstream)) if summary else None
        parts.append(f"-> {target} ingress" if target else f"-> {upstream}")
    if entry.probe == FALSE_CLAIM:
        parts.append("[NOT meshfed's: a probe mark meshfed did not send]")
    elif entry.probe:
        parts.append(f"[meshfed's own {entry.probe}]")
    return "  ".join(parts)


def marked(
    entries: list[LogEntry],
    marks: Marks,
    refresh: Callable[[], None] | None = None,
    settle: float = SETTLE,
) -> list[LogEntry]:
    """``entries`` (in the order they were written) with meshfed's own probes marked. A line
    the hop logs may still tie to a TCP probe (``PENDING``) is asked about again after
    ``refresh`` (which reads the ledger and the hop logs again), for up to ``settle`` seconds;
    then it is a caller's."""
    out = [replace(e, probe=marks.mark(e.doc)) for e in entries]
    deadline = time.monotonic() + settle
    while refresh is not None and any(e.probe == PENDING for e in out):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
        refresh()
        out = [replace(e, probe=marks.mark(e.doc)) if e.probe == PENDING else e for e in out]
    return [replace(e, probe=None) if e.probe == PENDING else e for e in out]
