"""The resolved federation: every security decision, made once, for renderers to translate.

Everything here is frozen and ordered deterministically (by name), so two plans of the same spec
and trust material compare equal and render byte-identical output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from meshfed.spiffe import PrincipalMatch

Protocol = Literal["HTTP", "TCP"]


@dataclass(frozen=True)
class PathMatch:
    """An HTTP path: exact, or a prefix when the spec wrote a trailing ``*``."""

    value: str
    prefix: bool = False

    def matches(self, path: str) -> bool:
        return path.startswith(self.value) if self.prefix else path == self.value

    def __str__(self) -> str:
        return f"{self.value}*" if self.prefix else self.value


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

    Empty ``methods`` or ``paths`` mean any. ``principals`` is never empty.
    """

    consumer_mesh: str
    principals: tuple[PrincipalMatch, ...]
    methods: tuple[str, ...] = ()
    paths: tuple[PathMatch, ...] = ()

    def allows(self, principal: str, method: str = "GET", path: str = "/") -> bool:
        return (
            any(p.matches(principal) for p in self.principals)
            and (not self.methods or method in self.methods)
            and (not self.paths or any(p.matches(path) for p in self.paths))
        )


@dataclass(frozen=True)
class IngressServer:
    """One SNI name on a mesh's ingress: the export it leads to and who may use it."""

    sni: str
    export: str
    """``<mesh>/<export>`` this name leads to."""
    workload: Workload
    allow: tuple[AllowRule, ...]
    alias_of: str | None = None
    """When set, ``sni`` is a failover alias and this is the export's own host."""

    @property
    def protocol(self) -> Protocol:
        return self.workload.protocol

    def allows(self, principal: str, method: str = "GET", path: str = "/") -> bool:
        """Deny by default: only a matching rule lets a request through."""
        return any(rule.allows(principal, method, path) for rule in self.allow)


@dataclass(frozen=True)
class TrustBundle:
    """A root certificate some component must trust, and for which trust domains."""

    name: str
    pem: str
    trust_domains: tuple[str, ...]


@dataclass(frozen=True)
class Ingress:
    """The federation ingress gateway of a mesh: the only way into it from other meshes."""

    address: str
    port: int
    spiffe_id: str
    servers: tuple[IngressServer, ...]
    trusted: tuple[TrustBundle, ...]
    """Roots a caller's chain must lead to: only those of meshes allowed to call."""
    dns_names: tuple[str, ...]
    """Names in the gateway's server certificate (every SNI it serves)."""

    def server(self, sni: str) -> IngressServer | None:
        return next((s for s in self.servers if s.sni == sni), None)


@dataclass(frozen=True)
class Source:
    """One exporting mesh behind an import, in failover order (0 first)."""

    priority: int
    mesh: str
    export: str
    """``<mesh>/<export>``."""
    address: str
    port: int
    ingress_spiffe_id: str
    trust_domain: str
    network: str | None


@dataclass(frozen=True)
class EgressRoute:
    """An SNI the egress gateway lets out, and where it sends it, in failover order."""

    wire_host: str
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class Egress:
    """The federation egress gateway of a mesh: TLS passes through, by SNI, nothing else."""

    spiffe_id: str
    routes: tuple[EgressRoute, ...]


@dataclass(frozen=True)
class ImportRoute:
    """A local name in a consumer mesh and the remote exports it reaches."""

    mesh: str
    local_host: str
    port: int
    protocol: Protocol
    wire_host: str
    """SNI and ``:authority`` on the wire, the same for every source."""
    sources: tuple[Source, ...]
    trusted: tuple[TrustBundle, ...] = ()
    """Roots a consumer sidecar verifies the sources' ingress gateways with, each bound to the
    trust domains it may vouch for."""

    @property
    def upstream_spiffe_ids(self) -> tuple[str, ...]:
        """Server identities a consumer sidecar accepts: the sources' ingress gateways."""
        return tuple(s.ingress_spiffe_id for s in self.sources)


@dataclass(frozen=True)
class ClusterPlan:
    """One Kubernetes cluster of a mesh, and what it holds.

    The primary runs istiod and holds all of the mesh's configuration and gateways; a remote
    holds only the mesh's CA secret and the reader account istiod uses to watch it.
    """

    name: str
    context: str | None
    """kubeconfig context; None: the current context."""
    role: Literal["primary", "remote"]
    discovery_address: str | None = None
    """primary: where remotes reach istiod (its east-west gateway)."""


@dataclass(frozen=True)
class MeshPlan:
    """Everything one mesh needs."""

    name: str
    trust_domain: str
    network: str | None
    root_name: str
    ingress: Ingress
    egress: Egress
    imports: tuple[ImportRoute, ...]
    workloads: tuple[Workload, ...]
    workload_trust: tuple[TrustBundle, ...]
    """Roots the mesh's sidecars trust: their own, plus (Federated) the roots of meshes whose
    exports they import, each limited to that mesh's trust domain."""
    local_trust: tuple[TrustBundle, ...] = ()
    """The mesh's own root, for its own trust domain only: what in-mesh peers chain to."""
    kube_context: str | None = None
    istio_namespace: str = "istio-system"
    clusters: tuple[ClusterPlan, ...] = ()
    """The primary first, then the remotes by name; empty when no cluster is named."""

    @property
    def primary(self) -> ClusterPlan | None:
        return self.clusters[0] if self.clusters else None

    @property
    def remotes(self) -> tuple[ClusterPlan, ...]:
        return self.clusters[1:]

    @property
    def exported_namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({s.workload.namespace for s in self.ingress.servers}))

    def workload(self, ref: str) -> Workload:
        for w in self.workloads:
            if w.ref == ref:
                return w
        raise KeyError(ref)


@dataclass(frozen=True)
class FederationPlan:
    name: str
    trust_mode: Literal["SharedRoot", "Federated"]
    workload_ttl: timedelta
    gateway_ttl: timedelta
    meshes: tuple[MeshPlan, ...]
    peerings: tuple[tuple[str, str], ...] = field(default=())
    """(mesh, peer): mesh must hold peer's root, for Federated trust."""

    def mesh(self, name: str) -> MeshPlan:
        for m in self.meshes:
            if m.name == name:
                return m
        raise KeyError(name)
