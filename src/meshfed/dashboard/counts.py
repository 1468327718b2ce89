"""The dashboard's counters, counted from the gateways' access logs: the evidence itself.

An Envoy's ``/stats`` start at zero whenever it starts again (``meshfed lab start-gateway``, a
crash, a new ``up`` after ``down``), while its log files are appended to: counted from the logs,
the dashboard shows the same totals as ``meshfed logs --boundary``, across restarts, since the
first line of the logs. meshfed's own probes (``local/prober.py``) are counted apart.

Per ingress and exported SNI, from the ingress's two files (``local/logs.py``):

- HTTP export, one request line each: ``allowed`` (the RBAC policy let it through), ``denied``
  (the policy refused it: 403), ``rejected`` (refused before the policy: a malformed request or
  an unknown route, Envoy's 400, 404, 426, 431, 501);
- TCP export, one line of its tunnel each (access file): ``denied`` (the tunnel's RBAC refused
  it before the workload was connected: a leaf with two URI SANs), else ``allowed`` (its
  handshake admits only the export's allowed identities);
- both: ``tls_failures``, connection lines with a failed handshake (no, an untrusted or an
  unadmitted certificate) for that SNI, or one the client left unfinished until the listener
  closed it (a stalled ClientHello: what an attack on the ingress looks like).

Per ingress also: failed handshakes without an SNI (in ``tls_failures`` of the mesh, on no
arrow), completed ``handshakes``, and connections refused for an ``unknown_sni``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshfed.local.logs import LogEntry, is_health_check, request_verdict, stalled_handshake
from meshfed.local.prober import FALSE_CLAIM


@dataclass
class Tally:
    allowed: int = 0
    denied: int = 0
    rejected: int = 0
    tls_failures: int = 0

    @property
    def total(self) -> int:
        return self.allowed + self.denied + self.rejected + self.tls_failures

    def add(self, other: Tally) -> None:
        self.allowed += other.allowed
        self.denied += other.denied
        self.rejected += other.rejected
        self.tls_failures += other.tls_failures


@dataclass
class IngressCounts:
    """One ingress gateway's counters (see the module docstring)."""

    chains: dict[str, Tally] = field(default_factory=dict)
    """Callers' traffic, by SNI."""
    probes: dict[str, Tally] = field(default_factory=dict)
    """meshfed's own, by SNI."""
    tls_failures: int = 0
    """Callers' failed handshakes on the whole listener (with an SNI or without)."""
    probe_tls_failures: int = 0
    handshakes: int = 0
    unknown_sni: int = 0
    since: str | None = None
    """Time of the first line counted."""

    def tally(self, sni: str, probe: bool) -> Tally:
        return (self.probes if probe else self.chains).setdefault(sni, Tally())

    def count(self, entry: LogEntry, exports: Mapping[str, str]) -> None:
        """Count one line of this ingress's logs (health checks are no crossing)."""
        doc = entry.doc
        if is_health_check(doc):
            return
        if self.since is None and doc.get("time"):
            self.since = str(doc["time"])
        probe = entry.probe is not None and entry.probe != FALSE_CLAIM
        sni = str(doc.get("sni") or "")
        if doc.get("kind") == "request":
            verdict = request_verdict(doc)
            tally = self.tally(sni or str(doc.get("authority") or ""), probe)
            if verdict == "allowed":
                tally.allowed += 1
            elif verdict == "denied":
                tally.denied += 1
            else:
                tally.rejected += 1
            return
        if doc.get("tls_failure") or stalled_handshake(doc) is not None:
            if probe:
                self.probe_tls_failures += 1
            else:
                self.tls_failures += 1
            if sni:
                self.tally(sni, probe).tls_failures += 1
            return
        if "NR" in str(doc.get("flags") or "").split(","):
            self.unknown_sni += 1
            return
        if entry.file == "conn":
            # The listener's line: the handshake. A TCP export's decision is in the line of
            # its tunnel, in the access file (render/envoy/tunnel.py).
            if doc.get("caller"):
                self.handshakes += 1
            return
        if exports.get(sni) == "TCP":
            tally = self.tally(sni, probe)
            if "rbac_access_denied" in str(doc.get("details") or ""):
                tally.denied += 1
            else:
                tally.allowed += 1

    def callers(self) -> Tally:
        total = Tally()
        for t in self.chains.values():
            total.add(t)
        return total

    def own(self) -> Tally:
        total = Tally()
        for t in self.probes.values():
            total.add(t)
        return total


@dataclass(frozen=True)
class ArrowCounters:
    allowed: int
    denied: int
    rejected: int
    tls_failures: int
    probes: int
    """meshfed's own requests and handshakes on these chains (not in the numbers above)."""
    snis: tuple[str, ...]
    """The chains counted (an import's wire host and the export's own host, where served)."""


def arrow_counters(
    ingress: IngressCounts, snis: Iterable[str], served: Iterable[str]
) -> ArrowCounters:
    """The sum over the chains an arrow's calls arrive on (each counted once); ``served``: the
    SNI names the ingress serves."""
    chosen = [s for s in dict.fromkeys(snis) if s in set(served)]
    real, own = Tally(), Tally()
    for sni in chosen:
        real.add(ingress.chains.get(sni, Tally()))
        own.add(ingress.probes.get(sni, Tally()))
    return ArrowCounters(
        allowed=real.allowed,
        denied=real.denied,
        rejected=real.rejected,
        tls_failures=real.tls_failures,
        probes=own.total,
        snis=tuple(chosen),
    )
