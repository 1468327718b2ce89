"""meshfed's own traffic, marked so the boundary log and the dashboard can tell it from callers'.

``up`` probes every import through a real workload's sidecar, and a rotation checks every mTLS
listener with real handshakes; at an ingress those look like any caller's (a rotation's checks
even like denials). Each of them is written to the **probe ledger**
(``STATE/local/probes.jsonl``, one JSON line per probe, append-only, 0600) *before* it is sent:

- an HTTP request carries a fresh random token in ``x-meshfed-probe`` (the gateways log it as
  ``probe``), and the ledger records the token;
- a handshake with a certificate meshfed issued for the check records the certificate's SHA-256
  (the gateways log the client certificate's as ``peer_cert``, for refused handshakes too); such
  checks present meshfed's own identity (``ns/meshfed-system/sa/meshfed-prober``) wherever the
  listener does not pin identities at the handshake;
- a TCP import probe (through the sidecar, with the workload's own certificate, no header to
  carry a mark) records the address its socket is bound to and the sidecar's, and records again
  before it closes the socket; its connection is then followed hop by hop through the proxies'
  logs, each proxy's upstream connection being the next one's downstream connection (the same
  four addresses, while it was open): ``hops.py``;
- an HTTP import probe's request leaves the sidecar on a connection of its own, which the
  sidecar logs with the request's token: the egress (which passes TLS through and reads no
  header) logs that connection, tied to the token the same way (``hops.py``).

A log line is meshfed's own only if it matches a ledger record: a token is used once, and a line
must come within ``WINDOW`` of its record; a TCP line only if its connection reaches a released
record hop by hop. A caller cannot hide its traffic behind the header: a token the ledger does
not hold (or holds for an earlier line) is flagged as a false claim. A TCP connection has no mark
a caller could send: its addresses are the kernel's and the proxies' (a TCP export's tunnel line
takes its caller connection's addresses from the ingress, which writes the CONNECT itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshfed.local.hops import PENDING, SETTLE, HopIndex
from meshfed.local.paths import RuntimePaths, mkdir_private
from meshfed.plan.names import PROBE_HEADER

__all__ = [
    "FALSE_CLAIM",
    "IMPORT_PROBE",
    "PENDING",
    "PROBE_HEADER",
    "ROTATION_CHECK",
    "SETTLE",
    "Marks",
    "ProbeLedger",
    "fingerprint",
    "ledger_path",
    "load_marks",
]

WINDOW = timedelta(minutes=2)
"""How far a log line's time may be from its ledger record (clocks are the same host's; a
request may wait behind a slow upstream)."""
IMPORT_PROBE = "import probe"
ROTATION_CHECK = "rotation check"
FALSE_CLAIM = "false claim"
"""The mark of a line whose probe header the ledger does not vouch for."""


def ledger_path(paths: RuntimePaths) -> Path:
    return paths.root / "probes.jsonl"


def fingerprint(cert: x509.Certificate) -> str:
    """As Envoy logs ``%DOWNSTREAM_PEER_FINGERPRINT_256%``: hex SHA-256 of the DER."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


class ProbeLedger:
    """Appends a record per probe, before the probe is sent (safe from several threads)."""

    def __init__(self, paths: RuntimePaths) -> None:
        self.path = ledger_path(paths)
        self._lock = threading.Lock()

    def _append(self, record: dict[str, Any]) -> None:
        record["time"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock:
            mkdir_private(self.path.parent)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)  # one write: whole lines, even with several writers
            finally:
                os.close(fd)

    def token(self, what: str, target: str) -> str:
        """A fresh token for one request (``x-meshfed-probe``), recorded."""
        token = secrets.token_hex(16)
        self._append({"what": what, "target": target, "token": token})
        return token

    def certificate(self, what: str, target: str, cert: x509.Certificate) -> None:
        """A certificate issued for one handshake, recorded by its fingerprint."""
        self._append({"what": what, "target": target, "cert": fingerprint(cert)})

    @contextlib.contextmanager
    def holding(self, what: str, target: str, source: str, to: str) -> Iterator[None]:
        """A TCP probe's socket, bound to ``source`` (``host:port``) and about to connect to
        ``to``: recorded before it connects, and its release recorded before it is closed
        (so a connection from ``source`` to ``to`` in between is the probe's, ``hops.py``)."""
        conn = secrets.token_hex(16)
        self._append({"what": what, "target": target, "conn": conn, "source": source, "to": to})
        try:
            yield
        finally:
            self._append({"conn": conn, "released": True})


@dataclass
class Marks:
    """The ledger as read so far, and which of its tokens a log line has used already."""

    tokens: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    certs: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    hops: HopIndex = field(default_factory=HopIndex)
    """TCP import probes' sockets, and the proxied connections that began while one was held."""
    _offset: int = 0

    def read(self, path: Path) -> None:
        """Take in the records appended since the last read (the whole file the first time)."""
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                doc = json.loads(line)
                when = datetime.fromisoformat(doc["time"])
                if "token" in doc:
                    self.tokens[str(doc["token"])] = (str(doc["what"]), when)
                    self.hops.mark(str(doc["token"]), str(doc["what"]), when)
                if "cert" in doc:
                    self.certs[str(doc["cert"])] = (str(doc["what"]), when)
                if "conn" in doc:
                    self.hops.record(doc, when)

    def read_hops(self, files: Iterable[Path]) -> None:
        """Take in the hop logs' new lines (the sidecars' TCP import listeners' and the egress
        gateways' access logs, ``logs.hop_logs``); read the ledger first."""
        self.hops.read(files)

    def mark(self, doc: dict[str, Any]) -> str | None:
        """What meshfed probe the log line ``doc`` is (``import probe``, ``rotation check``),
        ``false claim`` for a probe header the ledger does not vouch for, None for a caller's,
        ``pending`` for a connection from while a TCP probe was held that the hop logs read so
        far do not tie to it (read them again, and ask again, for up to ``SETTLE`` seconds).
        Lines must be given in the order they were written (a token marks one line)."""
        when = _time(doc)
        token = doc.get("probe")
        if token:
            found = self.tokens.get(str(token))
            if found is None or str(token) in self.used or not _near(when, found[1]):
                return FALSE_CLAIM
            self.used.add(str(token))
            return found[0]
        cert = doc.get("peer_cert")
        if cert:
            found = self.certs.get(str(cert))
            if found is not None and _near(when, found[1]):
                return found[0]
        return self.hops.which(doc)


def load_marks(paths: RuntimePaths) -> Marks:
    marks = Marks()
    marks.read(ledger_path(paths))
    return marks


def _time(doc: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(doc.get("time")).replace("Z", "+00:00"))
    except ValueError:
        return None


def _near(when: datetime | None, recorded: datetime) -> bool:
    return when is not None and recorded - timedelta(seconds=5) <= when <= recorded + WINDOW
