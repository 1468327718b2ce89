"""Who may call what: the workloads of a mesh, and the rules an ingress admits callers by.

The leaves of the plan's model: `meshfed.plan.model` (the federation) and `meshfed.plan.guard`
(what an exported workload's sidecar admits) both build on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meshfed.spec.paths import PathMatch
from meshfed.spiffe import PrincipalMatch, domain_prefix

__all__ = ["AllowRule", "Protocol", "Workload"]

Protocol = Literal["HTTP", "TCP"]


@dataclass(frozen=True)
class Workload:
    """A service of a mesh and the identity its sidecar carries."""

    mesh: str
    namespace: str
    name: str
    service_account: str
    port: int
    protocol: Protocol
    spiffe_id: str
    fqdn: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class AllowRule:
    """Requests an ingress lets through: any listed principal, and (HTTP) method and path.

    Empty ``methods`` or ``paths`` mean any. ``principals`` is never empty, and every one is an
    identity (or prefix) of ``trust_domain``: a rule admits callers of one trust domain.
    """

    consumer_mesh: str
    trust_domain: str
    """The consumer's trust domain: every principal of the rule is in it."""
    principals: tuple[PrincipalMatch, ...]
    methods: tuple[str, ...] = ()
    paths: tuple[PathMatch, ...] = ()

    def __post_init__(self) -> None:
        if not self.principals:
            raise ValueError(f"a rule of mesh {self.consumer_mesh} names no principal")
        for p in self.principals:
            # An X.509 SVID has one URI SAN and no SPIFFE ID holds a ','; Envoy joins several
            # SANs with ',', so a principal holding one could be matched by a crafted pair.
            if not p.value.startswith(self.id_prefix) or "," in p.value:
                raise ValueError(f"principal {p} is not an identity of {self.trust_domain}")

    @property
    def id_prefix(self) -> str:
        """``spiffe://<trust domain>/``: what every identity this rule may admit starts with."""
        return domain_prefix(self.trust_domain)

    def allows(self, principal: str, method: str = "GET", path: str = "/") -> bool:
        return (
            any(p.matches(principal) for p in self.principals)
            and (not self.methods or method in self.methods)
            and (not self.paths or any(p.matches(path) for p in self.paths))
        )
