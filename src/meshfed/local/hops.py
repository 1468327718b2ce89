"""A TCP import probe's connection, followed hop by hop through the proxies' logs.

A TCP import probe carries no mark (no header, and the workload's own certificate): what ties a
gateway's log line to it is the connection itself. The probe binds its socket, records its own
address and the sidecar's in the probe ledger (``prober.py``), connects, and records again
("released") before it closes the socket; nobody else can bind that address meanwhile (the
probe sets neither ``SO_REUSEADDR`` nor ``SO_REUSEPORT``). Each proxy on the way logs a
connection's four addresses: its peer and its own (``peer``, ``local``) and, when it proxied the
connection, its upstream connection's (``upstream_local``, ``upstream``) with when it began and
how long it lasted (``render/envoy/access_log.py``; the sidecar's TCP import listener writes
such a line too, ``hop_log``; a TCP export's tunnel line carries its caller connection's
addresses, set by the ingress on the CONNECT, never by a caller).

A TCP connection's four addresses belong to one connection at a time. So the line of a
connection that began at ``t`` from ``peer`` to ``local`` continues the upstream connection of
a previous hop from ``peer`` to ``local`` if that hop's connection was open at ``t`` (between its
start and its end, plus 2 ms for the milliseconds both logs truncate); and it is the probe's own
if it came from the probe's recorded address to the recorded sidecar between the two records.
A gateway's line is meshfed's own only if that chain reaches a released ledger record: the
ingress's (a tunnel line, or the listener's line of the same connection) through the egress's
and the sidecar's, the egress's through the sidecar's. No guess: no time proximity alone, no
address alone. A line from while a probe was held that does not (yet) reach a record is
``PENDING``: the logs of the hops before it may still be on their way (each Envoy flushes its
own files), so readers look again a moment later (``SETTLE``) before they count it a caller's.

An HTTP import probe carries a mark (a token in ``x-meshfed-probe``) that the ingress logs; the
egress passes TLS through and logs only the connection. The consumer's sidecar sends a marked
request on an upstream connection of its own (``plan/probes.py``) and logs it with that
connection's addresses (``probe_request_log``): so the egress line of a connection that began
from those addresses while the request ran is the probe's, if the ledger holds its token (sent
near that time; one sidecar line per token). Such a chain starts at the request instead of a
held socket; while a token's request may still be running and its sidecar line is not read,
the egress lines from then are ``PENDING`` too.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["PENDING", "SETTLE", "HopIndex"]

PENDING = "pending"
"""A line from while a TCP probe was held that its hops' logs do not tie to it yet."""
SETTLE = 1.0
"""Seconds a reader waits for the logs of a pending line's earlier hops (Envoy flushes its log
files every 100 ms, ``local/supervisor.py``) before it counts the line as a caller's."""
ROUNDING = timedelta(milliseconds=2)
"""Both a line's start and its duration are truncated to milliseconds."""
HELD_AT_MOST = timedelta(minutes=2)
"""How long a probe's socket may be held before its release is recorded (a probe's attempt
lasts seconds; a record never released never marks anything)."""
MAX_DEPTH = 4
"""Hops from a gateway line back to the probe: ingress, egress, sidecar, the probe's socket."""
REQUEST_AT_MOST = timedelta(seconds=5)
"""How long after its token was recorded a probe's request may begin and run (a probe gives up
on an attempt after 3 s, ``local/probe.py``, which ends the request at the sidecar too)."""
MARK_BEFORE = timedelta(seconds=1)
"""A request's start may precede its token's record by this much (the ledger's clock and
Envoy's are the same host's; the record is written just before the request is sent)."""

Pair = tuple[str, str]
"""(from, to) addresses of one connection."""


@dataclass
class _Held:
    """A probe's socket: from ``source`` to ``to``, held from ``start`` until ``end``."""

    what: str
    start: datetime
    end: datetime | None = None


@dataclass(frozen=True)
class _Hop:
    """A proxied connection: it came ``came`` (peer, local) at ``start``, and its upstream
    connection was open within ``start`` .. ``end``."""

    came: Pair
    start: datetime
    end: datetime


@dataclass(frozen=True)
class _Request:
    """A marked request through a sidecar: its upstream connection was the probe's alone,
    within ``start`` .. ``end``."""

    token: str
    start: datetime
    end: datetime


@dataclass
class HopIndex:
    """The held probe sockets (from the ledger) and the proxied connections (from the hop
    logs) that began while one was held; answers which probe a connection line is."""

    held: dict[str, _Held] = field(default_factory=dict)
    """Ledger ``conn`` id -> the probe's socket."""
    sockets: dict[Pair, list[_Held]] = field(default_factory=dict)
    hops: dict[Pair, list[_Hop]] = field(default_factory=dict)
    """By their upstream connection's (local, remote) addresses."""
    marks: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    """Ledger token -> (what, when recorded): an HTTP probe's mark."""
    requests: dict[Pair, list[_Request]] = field(default_factory=dict)
    """Marked requests, by their upstream connection's (local, remote) addresses."""
    _requested: set[str] = field(default_factory=set)
    """Tokens whose sidecar line was read (one line per token)."""
    _marks_by_time: list[tuple[datetime, str]] = field(default_factory=list)
    _by_start: list[_Held] = field(default_factory=list)
    _offsets: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def mark(self, token: str, what: str, when: datetime) -> None:
        """One ledger record of an HTTP probe's token."""
        if token not in self.marks:
            self.marks[token] = (what, when)
            bisect.insort(self._marks_by_time, (when, token))

    def record(self, doc: dict[str, Any], when: datetime) -> None:
        """One ledger record: a probe's socket held, or released."""
        conn = str(doc["conn"])
        if doc.get("released"):
            held = self.held.get(conn)
            if held is not None and held.end is None and when >= held.start:
                held.end = when
            return
        if conn in self.held:
            return  # a record says a socket once
        held = _Held(str(doc["what"]), when)
        self.held[conn] = held
        self.sockets.setdefault((str(doc["source"]), str(doc["to"])), []).append(held)
        bisect.insort(self._by_start, held, key=lambda h: h.start)

    def read(self, files: Iterable[Path]) -> None:
        """Take in the hop logs' lines written since the last read (each file from its start
        the first time, and again when it was replaced)."""
        for path in files:
            try:
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    seen, offset = self._offsets.get(path, (st.st_ino, 0))
                    if seen != st.st_ino or st.st_size < offset:
                        offset = 0  # replaced or truncated: from its start
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = (st.st_ino, offset + len(complete))
            for line in complete.splitlines():
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    self._hop(json.loads(line))

    def _hop(self, doc: dict[str, Any]) -> None:
        came, went = _pair(doc, "peer", "local"), _pair(doc, "upstream_local", "upstream")
        start = _start(doc)
        duration = doc.get("duration_ms")
        if went is None or start is None or not isinstance(duration, int):
            return
        end = start + timedelta(milliseconds=duration)
        token = doc.get("probe")
        if came is None and doc.get("kind") == "request" and isinstance(token, str) and token:
            if token not in self._requested:  # a token marks one request
                self._requested.add(token)
                self.requests.setdefault(went, []).append(_Request(token, start, end))
            return
        if came is None or not self._near_probe(start):
            return  # no probe was held then: not part of any probe's way
        self.hops.setdefault(went, []).append(_Hop(came, start, end))

    def _near_probe(self, when: datetime) -> bool:
        """Whether ``when`` is at most ``HELD_AT_MOST`` after a probe's socket was taken or
        ``REQUEST_AT_MOST`` after a probe's mark was recorded: the lines worth keeping (a hop's
        own start is checked against its upstream's, not here)."""
        i = bisect.bisect_right(self._by_start, when, key=lambda h: h.start)
        if i > 0 and self._by_start[i - 1].start >= when - HELD_AT_MOST:
            return True
        j = bisect.bisect_right(self._marks_by_time, (when + MARK_BEFORE, "~"))
        return j > 0 and self._marks_by_time[j - 1][0] >= when - REQUEST_AT_MOST

    def during_probe(self, when: datetime) -> bool:
        """Whether some probe's socket was held at ``when`` (or may still have been: its
        release not read yet), or a marked request whose sidecar line is not read yet may
        have been running."""
        i = bisect.bisect_right(self._by_start, when, key=lambda h: h.start)
        earliest = when - HELD_AT_MOST
        while i > 0 and self._by_start[i - 1].start >= earliest:
            i -= 1
            end = self._by_start[i].end
            if end is None or when <= end:
                return True
        j = bisect.bisect_right(self._marks_by_time, (when + MARK_BEFORE, "~"))
        while j > 0 and self._marks_by_time[j - 1][0] >= when - REQUEST_AT_MOST:
            j -= 1
            if self._marks_by_time[j][1] not in self._requested:
                return True
        return False

    def which(self, doc: dict[str, Any]) -> str | None:
        """The probe whose connection the line ``doc`` is (``peer``, ``local`` and its start
        reach a released ledger record hop by hop), ``PENDING``, or None."""
        came, start = _pair(doc, "peer", "local"), _start(doc)
        if came is None or start is None:
            return None
        found = self._trace(came, start, 0)
        if found is not None:
            return found
        return PENDING if self.during_probe(start) else None

    def _trace(self, came: Pair, start: datetime, depth: int) -> str | None:
        for held in self.sockets.get(came, ()):
            if held.end is not None and held.start <= start <= held.end:
                return held.what
        for request in self.requests.get(came, ()):
            if request.start <= start <= request.end + ROUNDING:
                marked = self.marks.get(request.token)
                if marked is not None and _vouched(request.start, marked[1]):
                    return marked[0]
        if depth >= MAX_DEPTH:
            return None
        for hop in self.hops.get(came, ()):
            if hop.start <= start <= hop.end + ROUNDING:
                found = self._trace(hop.came, hop.start, depth + 1)
                if found is not None:
                    return found
        return None


def _vouched(start: datetime, recorded: datetime) -> bool:
    """A marked request that began at ``start`` is the one its token was recorded for."""
    return recorded - MARK_BEFORE <= start <= recorded + REQUEST_AT_MOST


def _pair(doc: dict[str, Any], a: str, b: str) -> Pair | None:
    x, y = doc.get(a), doc.get(b)
    if isinstance(x, str) and isinstance(y, str) and ":" in x and ":" in y:
        return (x, y)
    return None


def _start(doc: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(doc.get("time")).replace("Z", "+00:00"))
    except ValueError:
        return None
