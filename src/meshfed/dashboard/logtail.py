"""The boundary log, followed: every line of the gateways' log files read once, in order.

Each gateway log file is read from its start and then from a remembered offset (only complete
lines); a file that shrank or was replaced is read afresh. Every line is marked (meshfed's own
probes, ``local/prober.py``: the probe ledger is read first, so a line is never seen before its
record, then the hop logs that tie a TCP probe's connection to it; a connection line those do not
tie yet while a TCP probe was held waits up to ``SETTLE`` seconds for them) and handed to the
counters (``counts.py``); the newest crossings of the boundary view
(as ``meshfed logs --boundary``) are kept for the page. The egress gateways' health checks, four
lines a second in the connection logs, are recognised without parsing.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshfed.local.logs import (
    Kind,
    LogEntry,
    boundary_view,
    decision,
    is_health_check,
    request_verdict,
    stalled_handshake,
)
from meshfed.local.prober import FALSE_CLAIM, PENDING, SETTLE, Marks
from meshfed.local.summary import RuntimeSummary

CHUNK = 4 * 1024 * 1024
Sink = Callable[[LogEntry], None]
Hold = Callable[["_File", LogEntry], None]

_HEALTH_CHECK = (
    b'"sni":null',
    b'"caller":null',
    b'"tls_failure":null',
    b'"bytes_received":0',
    b'"details":null',
)
_QUICK = re.compile(rb'"duration_ms":([0-9]{1,2}|[0-4][0-9]{2}),')
"""Over within ``logs.HELD_MS`` (500 ms): a stalled connection is held longer."""


def _parse(process: str, kind: Kind, line: bytes) -> LogEntry | None:
    if all(part in line for part in _HEALTH_CHECK) and b'"NR"' not in line and _QUICK.search(line):
        return None  # an egress's health check (``is_health_check``), without parsing it
    text = line.decode(errors="replace").strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or is_health_check(doc):
        return None
    return LogEntry(process, kind, doc)


@dataclass
class _File:
    process: str
    kind: Kind
    path: Path
    keep: int
    inode: int = -1
    offset: int = 0
    entries: deque[LogEntry] = field(default_factory=deque)

    def update(self, summary: RuntimeSummary, marks: Marks, sink: Sink | None, hold: Hold) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        if st.st_ino != self.inode or st.st_size < self.offset:
            # New or replaced: from its start (the counts of the old file stay counted).
            self.inode, self.offset, self.entries = st.st_ino, 0, deque(maxlen=self.keep)
        if st.st_size == self.offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while self.offset < st.st_size:
                data = f.read(min(CHUNK, st.st_size - self.offset))
                complete = data[: data.rfind(b"\n") + 1]
                if not complete:
                    break  # a line still being written
                self.offset += len(complete)
                f.seek(self.offset)
                self._take(complete, summary, marks, sink, hold)

    def _take(
        self, data: bytes, summary: RuntimeSummary, marks: Marks, sink: Sink | None, hold: Hold
    ) -> None:
        parsed = []
        for line in data.split(b"\n"):
            entry = _parse(self.process, self.kind, line)
            if entry is None:
                continue
            entry = replace(entry, probe=marks.mark(entry.doc))
            if entry.probe == PENDING:
                hold(self, entry)
                continue
            if sink is not None:
                sink(entry)
            parsed.append(entry)
        self.entries.extend(boundary_view(parsed, summary))


class BoundaryTail:
    """The last crossings of a set of gateway log files (and every line, to ``sink``)."""

    def __init__(self, keep: int = 50, ledger: Path | None = None) -> None:
        self.keep = keep
        self.ledger = ledger
        self.marks = Marks()
        self._files: dict[Path, _File] = {}
        self._pending: list[tuple[float, _File, LogEntry]] = []
        self._hop_files: list[Path] = []

    def update(
        self,
        files: list[tuple[str, Kind, Path]],
        summary: RuntimeSummary,
        sink: Sink | None = None,
        hops: Iterable[Path] = (),
    ) -> None:
        """Follow exactly ``files`` (as ``logs.gateway_logs`` lists them) and read what is new;
        each new line goes to ``sink`` once. ``hops``: the logs a TCP probe's connection is
        followed through (``logs.hop_logs``)."""
        if self.ledger is not None:
            self.marks.read(self.ledger)
        self._hop_files = list(hops)
        self.marks.read_hops(self._hop_files)
        wanted = {path: (process, kind) for process, kind, path in files}
        for path in list(self._files):
            if path not in wanted:
                del self._files[path]
        for path, (process, kind) in wanted.items():
            tail = self._files.setdefault(path, _File(process, kind, path, self.keep))
            tail.update(summary, self.marks, sink, self._hold)
        self._settle(summary, sink)

    def _hold(self, file: _File, entry: LogEntry) -> None:
        self._pending.append((time.monotonic(), file, entry))

    def _settle(self, summary: RuntimeSummary, sink: Sink | None) -> None:
        """Ask again about the lines held for their hops' logs; past ``SETTLE`` seconds, a line
        still not tied to a probe is a caller's."""
        if self._pending:  # the hops' lines written since this update began
            if self.ledger is not None:
                self.marks.read(self.ledger)
            self.marks.read_hops(self._hop_files)
        still = []
        now = time.monotonic()
        for seen, file, entry in self._pending:
            probe = self.marks.mark(entry.doc)
            if probe == PENDING and now - seen < SETTLE:
                still.append((seen, file, entry))
                continue
            entry = replace(entry, probe=None if probe == PENDING else probe)
            if sink is not None:
                sink(entry)
            file.entries.extend(boundary_view([entry], summary))
        self._pending = still

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
    if doc.get("tls_failure") or stalled_handshake(doc) is not None:
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
        "probe": None if entry.probe == FALSE_CLAIM else entry.probe,
        "false_probe_mark": entry.probe == FALSE_CLAIM,
    }
