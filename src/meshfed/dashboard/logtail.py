"""The boundary log's newest crossings, read incrementally (``meshfed logs --boundary``, live).

Each gateway log file is followed from a remembered offset; on first sight it is read backwards
from its end until enough crossings are found (the connection logs fill with the egress gateways'
health checks, four lines a second, which the boundary view leaves out). A file that shrank or was
replaced is read afresh.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshfed.local.logs import Kind, LogEntry, boundary_view, decision, request_verdict
from meshfed.local.summary import RuntimeSummary

CHUNK = 64 * 1024
MAX_BACKWARDS = 8 * 1024 * 1024
"""How far back a file is read on first sight (about an hour of health checks)."""


def _parse(process: str, kind: Kind, line: bytes) -> LogEntry | None:
    text = line.decode(errors="replace").strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return LogEntry(process, kind, doc) if isinstance(doc, dict) else None


@dataclass
class _File:
    process: str
    kind: Kind
    path: Path
    keep: int
    inode: int = -1
    offset: int = 0
    entries: deque[LogEntry] = field(default_factory=deque)

    def _kept(self, lines: Iterable[bytes], summary: RuntimeSummary) -> list[LogEntry]:
        parsed = [e for line in lines if (e := _parse(self.process, self.kind, line)) is not None]
        return boundary_view(parsed, summary)

    def _reset(self, st: os.stat_result, summary: RuntimeSummary) -> None:
        """Read the end of the file, a window growing until it holds ``keep`` crossings (or
        reaches the start or ``MAX_BACKWARDS``); only complete lines."""
        self.inode, self.entries = st.st_ino, deque(maxlen=self.keep)
        size, window = st.st_size, CHUNK
        with open(self.path, "rb") as f:
            while True:
                start = max(0, size - window)
                f.seek(start)
                data = f.read(size - start)
                complete = data.rfind(b"\n") + 1
                body = data[:complete]
                if start > 0:  # the first line is cut
                    body = body[body.find(b"\n") + 1 :]
                found = self._kept(body.split(b"\n"), summary)
                if len(found) >= self.keep or start == 0 or window >= MAX_BACKWARDS:
                    break
                window *= 4
        self.entries.extend(found)
        self.offset = start + complete

    def update(self, summary: RuntimeSummary) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        if st.st_ino != self.inode or st.st_size < self.offset:
            self._reset(st, summary)
            return
        if st.st_size == self.offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        self.entries.extend(self._kept(complete.split(b"\n"), summary))


class BoundaryTail:
    """The last crossings of a set of gateway log files."""

    def __init__(self, keep: int = 50) -> None:
        self.keep = keep
        self._files: dict[Path, _File] = {}

    def update(self, files: list[tuple[str, Kind, Path]], summary: RuntimeSummary) -> None:
        """Follow exactly ``files`` (as ``logs.gateway_logs`` lists them) and read what is new."""
        wanted = {path: (process, kind) for process, kind, path in files}
        for path in list(self._files):
            if path not in wanted:
                del self._files[path]
        for path, (process, kind) in wanted.items():
            tail = self._files.setdefault(path, _File(process, kind, path, self.keep))
            tail.update(summary)

    def latest(self, n: int | None = None) -> list[LogEntry]:
        """Newest first."""
        merged = [e for f in self._files.values() for e in f.entries]
        merged.sort(key=lambda e: e.time, reverse=True)
        return merged[: n or self.keep]


_TLS_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "no_trust_bundle": "untrusted: no root for the caller's trust domain",
    "SAN_match": "identity not admitted by this export (SAN)",
    "CERTIFICATE_VERIFY_FAILED": "certificate verification failed",
    "TLSV1_ALERT_UNKNOWN_CA": "caller does not trust the gateway's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "caller rejected the gateway's certificate",
    "WRONG_VERSION_NUMBER": "not TLS",
    "HTTP_REQUEST": "plain HTTP sent to a TLS port",
}


def tls_reason(raw: str) -> str:
    """Envoy's ``%DOWNSTREAM_TRANSPORT_FAILURE_REASON%`` in a few words (BoringSSL codes)."""
    for token, text in _TLS_REASONS.items():
        if token in raw:
            return text
    codes = [
        part
        for segment in raw.split("|")
        for part in segment.split(":")
        if part and part.upper() == part and not part.isdigit() and part != "TLS_error"
    ]
    words = codes[0] if codes else raw.removeprefix("TLS_error:").removesuffix(":TLS_error_end")
    return words.replace("_", " ").strip().lower() or "handshake failed"


def outcome(doc: dict[str, Any]) -> str:
    """One word for the row's colour: allowed, denied, rejected, tls, refused, failed, passed."""
    if doc.get("tls_failure"):
        return "tls"
    if doc.get("kind") == "request":
        return request_verdict(doc)
    text = decision(doc)
    if text.startswith("denied"):
        return "denied"
    if text.startswith("refused"):
        return "refused"
    if text.startswith(("failed", "upstream failed")):
        return "failed"
    return "passed"


def row(entry: LogEntry, summary: RuntimeSummary | None) -> dict[str, Any]:
    """One crossing for the page: who, which SNI, what, and the decision."""
    d = entry.doc
    gateway = str(d.get("gateway") or entry.process.rpartition("/")[2])
    mesh = str(d.get("mesh") or entry.process.partition("/")[0])
    request = ""
    if d.get("kind") == "request":
        request = f"{d.get('method')} {d.get('path')}"
    raw_tls = str(d.get("tls_failure") or "")
    upstream = d.get("upstream")
    target = None
    if upstream and gateway == "egress":
        target = (summary.ingress_at(str(upstream)) if summary else None) or str(upstream)
    return {
        "time": entry.time,
        "mesh": mesh,
        "gateway": gateway,
        "caller": d.get("caller"),
        "caller_verified": bool(d.get("caller")) and not raw_tls,
        "sni": d.get("sni") or d.get("authority"),
        "request": request,
        "code": d.get("code"),
        "decision": decision(d) if not raw_tls else "TLS handshake failed",
        "outcome": outcome(d),
        "policy": d.get("policy"),
        "tls_failure": tls_reason(raw_tls) if raw_tls else None,
        "tls_detail": raw_tls or None,
        "to": target,
    }
