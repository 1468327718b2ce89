"""Defense in depth to the workload: what an exported workload's own sidecar admits.

The federation ingress authorizes every cross-mesh request. Behind it, the exported workload's
sidecar sees the ingress as its peer, so by itself it could only say "the ingress sent this".
The guard makes it check the original caller too, on the identity the ingress vouched for:

- a request from the mesh's federation ingress is admitted only if the caller header the
  ingress set (`BoundaryPolicy.caller_header`, the caller's verified URI SAN(s)) names exactly
  one identity that some export of this workload allows for that method and path;
- a request from anyone else that carries a caller header (a value) is refused (a forger inside
  the mesh: only the ingress sets it);
- everything else is the mesh's own traffic, which the guard leaves to the mesh's policies.

Why a header of meshfed's own and not XFCC: a sidecar appends its own element to XFCC before
its authorization runs, and Istio's header matching knows only exact, prefix and suffix, so no
AuthorizationPolicy can pin the caller inside XFCC (research notes Q10). The ingress removes any
caller-sent copy before it sets the header. (That XFCC comes only from the ingress, the
``BoundaryPolicy.client_cert.forwarder`` rule, each renderer enforces at the workload too: on
Istio with an EnvoyFilter, render/istio/workload.py.) HTTP workloads only: a TCP stream carries
no header, and its callers are authorized at the ingress (locally before the workload is
connected; on Istio 1.25 its gateway connects at accept, and pins callers in the handshake).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshfed.plan.rules import AllowRule, Workload
from meshfed.spiffe import PrincipalMatch

__all__ = ["WorkloadGuard"]


@dataclass(frozen=True)
class WorkloadGuard:
    """What the sidecar of one exported HTTP workload admits from across the boundary."""

    workload: Workload
    forwarder: str
    """The SPIFFE ID of the mesh's federation ingress: the only peer that vouches for callers."""
    header: str
    """The caller header the ingress sets (`BoundaryPolicy.caller_header`)."""
    rules: tuple[AllowRule, ...]
    """Every rule of every ingress server (export or failover alias) that leads to this
    workload: a caller the ingress let through on any of them, for that method and path."""

    @property
    def callers(self) -> tuple[PrincipalMatch, ...]:
        """Every caller (identity or prefix) some rule names, exact ones first."""
        found = {p for rule in self.rules for p in rule.principals}
        return tuple(sorted(found, key=lambda p: (p.prefix, p.value)))

    def rules_for(self, caller: PrincipalMatch) -> tuple[AllowRule, ...]:
        """The rules that admit every identity ``caller`` stands for: a rule naming it, or a
        prefix of it."""
        return tuple(
            rule
            for rule in self.rules
            if any(
                (p.prefix and caller.value.startswith(p.value)) or (not p.prefix and p == caller)
                for p in rule.principals
            )
        )

    def callers_below(self, prefix: PrincipalMatch) -> tuple[PrincipalMatch, ...]:
        """The other callers a prefix caller also matches (each has rules of its own, and every
        rule of the prefix covers them too)."""
        return tuple(c for c in self.callers if c != prefix and c.value.startswith(prefix.value))

    def allows(self, caller: str, method: str = "GET", path: str = "/") -> bool:
        """Whether ``caller`` (the header's value as the ingress set it) may make the request:
        exactly one identity (several SANs are joined by ``,``), allowed by a rule."""
        if "," in caller:
            return False
        return any(rule.allows(caller, method, path) for rule in self.rules)

    def admits(self, peer: str | None, caller: str | None, method: str, path: str) -> bool:
        """The sidecar's verdict on a request from mTLS peer ``peer`` (None: plaintext) with the
        caller header ``caller`` (None: absent)."""
        if peer == self.forwarder:
            return caller is not None and self.allows(caller, method, path)
        return not caller  # an empty value names nobody
