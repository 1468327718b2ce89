"""The resolved federation: every security decision, made once, for renderers to translate.

Everything here is frozen and ordered deterministically (by name), so two plans of the same spec
and trust material compare equal and render byte-identical output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from meshfed.plan.boundary import BoundaryPolicy
from meshfed.plan.guard import WorkloadGuard
from meshfed.plan.limits import FailoverPolicy, MeshLimits, RetryPolicy
from meshfed.plan.probes import ProbeMarking
from meshfed.plan.rules import AllowRule as AllowRule
from meshfed.plan.rules import Protocol as Protocol
from meshfed.plan.rules import Workload as Workload
from meshfed.spec.paths import PathMatch as PathMatch  # the plan's type, defined with its rule
from meshfed.spiffe import PrincipalMatch as PrincipalMatch
from meshfed.spiffe import whole_domain


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
    trusted: tuple[TrustBundle, ...] = ()
    """The roots that may vouch for this server's callers: those of `Ingress.trusted` that
    vouch for a trust domain its rules name, each limited to those domains (a chain that
    verifies can only come from a root that could mint an allowed identity)."""

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
    """The root(s), PEM: one, or both generations during a root rotation's overlap."""
    trust_domains: tuple[str, ...]
    roots: tuple[str, ...] = ()
    """``pem`` one certificate each (what takes one root per entry, e.g. Istio's
    ``caCertificates``)."""
    cross_certify: bool = False
    """Set where a verifier that cannot bind a root to trust domains (the CA bundle of Istio's
    ingress gateway credential) must not trust these roots as they are, only through
    cross-certificates constrained to ``trust_domains`` (`meshfed.pki.anchor`): Federated
    trust, whose roots constrain nothing. SharedRoot's intermediates carry the constraint."""


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
    probe_sni: str | None = None
    """An SNI the ingress answers with a ServerHello and nothing else, for the active probes of
    consumers' egress gateways (`FailoverPolicy`); None: no such probe."""

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
    failover: FailoverPolicy = field(default_factory=FailoverPolicy)
    """When an exporter's ingress counts as down (and up again)."""

    @property
    def allowed_snis(self) -> tuple[str, ...]:
        """The egress allow-list: the only SNIs that may leave the mesh."""
        return tuple(r.wire_host for r in self.routes)


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
    connection_life: timedelta | None = None
    """How long a consumer sidecar may reuse a pooled connection to the egress gateway (HTTP):
    each is pinned end to end to one exporter through the pass-through egress, so this bounds
    how long calls stay on a failover exporter once the primary is back. None (TCP): a session
    is the application's own connection, and cutting it would break the application."""
    retries: RetryPolicy | None = None
    """How the consumer's sidecar retries a call that reached no workload (HTTP); None (TCP):
    a refused connect reaches the application, which reconnects."""

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
    import_trust: tuple[TrustBundle, ...] = ()
    """Roots the mesh's sidecars verify the ingress gateways of its imports' sources with,
    each for the sources' trust domains only (every `ImportRoute.trusted` at once)."""
    foreign_trust: tuple[TrustBundle, ...] = ()
    """Roots the mesh's sidecars trust beyond the mesh's own trust anchor (Istio's
    ``root-cert.pem``): Federated, the roots of meshes it imports from, each for its trust
    domain (Istio: ``meshConfig.caCertificates``). Empty in SharedRoot: one root serves all."""
    boundary: BoundaryPolicy = field(default_factory=BoundaryPolicy)
    """What crossing the mesh's boundary does to requests and responses."""
    limits: MeshLimits = field(default_factory=MeshLimits)
    """How long and how much a client may hold the mesh's proxies."""
    workload_guards: tuple[WorkloadGuard, ...] = ()
    """Per exported HTTP workload, what its own sidecar admits from across the boundary."""
    probes: ProbeMarking = field(default_factory=ProbeMarking)
    caller_namespaces: tuple[str, ...] = ()
    """The namespaces holding the mesh's import callers (workloads the plan knows that an
    export behind one of its imports admits, `meshfed.plan.callers`), sorted, never
    ``meshfed-system``: each gets its own copy of the rule defining the imports' egress subsets.
    Istio only: istiod gives a sidecar the DestinationRules of ONE namespace per host, its own
    first (pilot/pkg/model/push_context.go ``destinationRule``), so a rule there covering the
    egress gateway's Service (``*.local``, ``*``…) would replace meshfed's subsets; an exact-host
    copy there wins over any wildcard (``MostSpecificHostMatch``). The local federation's
    sidecars are meshfed's own Envoys, routed by the plan's imports directly: no rule lookup,
    nothing to copy."""
    """How meshfed's own import probes from this mesh are marked at every hop (local only)."""
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
    def local_peers(self) -> PrincipalMatch:
        """Who may open mTLS to a workload's sidecar: any identity of the mesh's own trust
        domain (its gateways included); federation callers arrive through the ingress."""
        return whole_domain(self.trust_domain)

    @property
    def exported_namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({s.workload.namespace for s in self.ingress.servers}))

    def guard(self, ref: str) -> WorkloadGuard | None:
        """The guard of workload ``ref``'s sidecar, if it is an exported HTTP workload."""
        return next((g for g in self.workload_guards if g.workload.ref == ref), None)

    def workload(self, ref: str) -> Workload:
        for w in self.workloads:
            if w.ref == ref:
                return w
        raise KeyError(ref)


@dataclass(frozen=True)
class PartnerPlan:
    """A mesh another organisation runs (``partner: true``): planned only as a peer.

    Nothing is rendered or run for it. Its ``ingress`` lists what the spec says it offers this
    state directory's meshes (its own control plane enforces that) and trusts nothing here.
    """

    name: str
    trust_domain: str
    ingress: Ingress


@dataclass(frozen=True)
class FederationPlan:
    name: str
    trust_mode: Literal["SharedRoot", "Federated"]
    workload_ttl: timedelta
    gateway_ttl: timedelta
    meshes: tuple[MeshPlan, ...]
    peerings: tuple[tuple[str, str], ...] = field(default=())
    """(mesh, peer): mesh must hold peer's root, for Federated trust."""
    partners: tuple[PartnerPlan, ...] = ()
    """Meshes run by other organisations, by name."""

    def mesh(self, name: str) -> MeshPlan:
        for m in self.meshes:
            if m.name == name:
                return m
        raise KeyError(name)

    def ingress_of(self, name: str) -> Ingress:
        """The ingress of a mesh of this plan, or of a partner mesh (what it offers)."""
        for p in self.partners:
            if p.name == name:
                return p.ingress
        return self.mesh(name).ingress
