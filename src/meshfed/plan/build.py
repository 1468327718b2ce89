"""Resolve a validated spec and its trust roots into the federation plan.

This is the one place where meshfed decides who may call what, who trusts which root, and which
way traffic goes. Renderers translate the result and decide nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta

from meshfed.pki.certs import split_pem
from meshfed.plan.boundary import boundary_policy
from meshfed.plan.callers import caller_namespaces
from meshfed.plan.guard import WorkloadGuard
from meshfed.plan.limits import FailoverPolicy, RetryPolicy
from meshfed.plan.model import (
    AllowRule,
    ClusterPlan,
    Egress,
    EgressRoute,
    FederationPlan,
    ImportRoute,
    Ingress,
    IngressServer,
    MeshPlan,
    PartnerPlan,
    Source,
    TrustBundle,
    Workload,
)
from meshfed.plan.names import EGRESS_GATEWAY, INGRESS_GATEWAY, gateway_spiffe_id, service_fqdn
from meshfed.spec.model import Export, Federation, Mesh
from meshfed.spec.paths import parse_path
from meshfed.spec.principals import parse_principal
from meshfed.spiffe import PrincipalMatch, workload_id

FAILOVER = FailoverPolicy()
"""When an exporter counts as down: the same for every import (`meshfed.plan.limits`)."""

RETRIES = RetryPolicy()
"""How a consumer's sidecar retries an HTTP import's call that reached no workload."""

CONNECTION_LIFE = timedelta(seconds=2)
"""Life of a consumer's pooled HTTP connection to its egress: failback waits at most this long
for the connections pinned to a failover exporter (plus the primary's ejection)."""


def root_name(fed: Federation, mesh: str) -> str:
    """The name of the root a mesh's intermediate chains to."""
    return "root" if fed.spec.trust.mode == "SharedRoot" else mesh


def peerings(fed: Federation) -> tuple[tuple[str, str], ...]:
    """(mesh, peer) pairs where mesh must hold peer's root.

    An exporting mesh's ingress verifies its consumers' workloads; a consumer's sidecars verify
    the ingress gateways of the meshes it imports from. Nobody else trusts anybody. Partner
    meshes are left out on both sides: meshfed runs nothing of theirs and holds no root of
    theirs (their roots come from their bundles, see ``build_plan``'s ``followed``).
    """
    partners = {m.name for m in fed.spec.meshes if m.partner}
    pairs: set[tuple[str, str]] = set()
    for export in fed.spec.exports:
        for consumer in export.consumers:
            pairs.add((export.mesh, consumer.mesh))
    for imp in fed.spec.imports:
        for ref in imp.from_:
            pairs.add((imp.mesh, ref.partition("/")[0]))
    return tuple(sorted((m, p) for m, p in pairs if m not in partners and p not in partners))


def _workloads(mesh: Mesh) -> tuple[Workload, ...]:
    return tuple(
        Workload(
            mesh=mesh.name,
            namespace=w.namespace,
            name=w.name,
            service_account=w.service_account,
            port=w.port,
            protocol=w.protocol,
            spiffe_id=workload_id(mesh.trust_domain, w.namespace, w.service_account),
            fqdn=service_fqdn(w.namespace, w.name),
        )
        for w in sorted(mesh.workloads, key=lambda w: (w.namespace, w.name))
    )


def mesh_clusters(mesh: Mesh) -> tuple[ClusterPlan, ...]:
    """The mesh's clusters, primary first; ``kubernetes`` is one primary named after the mesh."""
    if mesh.clusters is not None:
        ordered = sorted(mesh.clusters, key=lambda c: (c.role != "primary", c.name))
        return tuple(ClusterPlan(c.name, c.context, c.role, c.discovery_address) for c in ordered)
    if mesh.kubernetes is not None:
        return (ClusterPlan(mesh.name, mesh.kubernetes.context, "primary"),)
    return ()


def _allow_rules(fed: Federation, export: Export, meshes: set[str] | None) -> tuple[AllowRule, ...]:
    rules = []
    for consumer in export.consumers:
        if meshes is not None and consumer.mesh not in meshes:
            continue
        domain = fed.mesh(consumer.mesh).trust_domain
        rules.append(
            AllowRule(
                consumer_mesh=consumer.mesh,
                trust_domain=domain,
                principals=tuple(parse_principal(p, domain) for p in consumer.principals),
                methods=tuple(consumer.methods or ()),
                paths=tuple(parse_path(p) for p in consumer.paths or ()),
            )
        )
    return tuple(rules)


def _kept_headers(
    fed: Federation, servers: tuple[IngressServer, ...]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(SNI, request headers its export keeps), for the servers whose export keeps any."""
    kept = []
    for server in servers:
        export = fed.export(server.export)
        if export.keep_request_headers:
            kept.append(
                (server.sni, tuple(sorted({h.lower() for h in export.keep_request_headers})))
            )
    return tuple(kept)


def _guards(ingress: Ingress, header: str) -> tuple[WorkloadGuard, ...]:
    """One guard per exported HTTP workload: the rules of every server that leads to it."""
    rules: dict[Workload, list[AllowRule]] = {}
    for server in ingress.servers:
        if server.protocol != "HTTP":
            continue
        found = rules.setdefault(server.workload, [])
        found.extend(r for r in server.allow if r not in found)
    return tuple(
        WorkloadGuard(workload, ingress.spiffe_id, header, tuple(found))
        for workload, found in sorted(rules.items(), key=lambda item: item[0].ref)
    )


def _limited(trusted: tuple[TrustBundle, ...], server: IngressServer) -> tuple[TrustBundle, ...]:
    """``trusted`` limited to the trust domains ``server``'s rules name."""
    domains = {rule.trust_domain for rule in server.allow}
    return tuple(
        replace(b, trust_domains=tuple(d for d in b.trust_domains if d in domains))
        for b in trusted
        if domains.intersection(b.trust_domains)
    )


class _Resolver:
    def __init__(
        self, fed: Federation, root_pems: Mapping[str, str], followed: Mapping[str, str] | None
    ) -> None:
        self.fed = fed
        self.root_pems = root_pems
        self.followed = followed
        self.workloads = {m.name: {w.ref: w for w in _workloads(m)} for m in fed.spec.meshes}
        # Meshes that reach (mesh, wire host) as a failover alias of one of mesh's exports.
        self.aliases: dict[tuple[str, str], tuple[str, set[str]]] = {}
        for imp in fed.spec.imports:
            wire = fed.wire_host(imp)
            for ref in imp.from_[1:]:
                export = fed.export(ref)
                if fed.export_host(export) == wire:
                    continue
                _, importers = self.aliases.setdefault((export.mesh, wire), (ref, set()))
                importers.add(imp.mesh)

    def root_pem(self, truster: Mesh, mesh: str) -> tuple[str, bool]:
        """The roots ``truster`` trusts for ``mesh``, and whether they come from a bundle: the
        bundle it follows for that peer (fetched, checked and kept by ``meshfed.bundles``), else
        the ones the PKI holds."""
        if self.followed is not None and mesh != truster.name and mesh in (truster.follows or ()):
            return self.followed[mesh], True
        return self.root_pems[mesh], False

    def bundles(
        self, truster: Mesh, meshes: dict[str, set[str]], cross_certify: bool = False
    ) -> tuple[TrustBundle, ...]:
        """One bundle per root, for the given {mesh: trust domains} it must vouch for, as
        ``truster`` trusts them. A followed peer whose bundle is empty (it revoked every key)
        gets none: nothing of it is trusted."""
        by_root: dict[str, set[str]] = defaultdict(set)
        for mesh, domains in meshes.items():
            by_root[root_name(self.fed, mesh)] |= domains
        out = []
        for name, domains in sorted(by_root.items()):
            mesh = name if name != "root" else next(iter(sorted(meshes)))
            pem, followed = self.root_pem(truster, mesh)
            if pem or not followed:
                out.append(
                    TrustBundle(name, pem, tuple(sorted(domains)), split_pem(pem), cross_certify)
                )
        return tuple(out)

    def source(self, priority: int, ref: str) -> Source:
        export = self.fed.export(ref)
        mesh = self.fed.mesh(export.mesh)
        return Source(
            priority=priority,
            mesh=mesh.name,
            export=ref,
            address=_address(mesh),
            port=mesh.ingress.port,
            ingress_spiffe_id=gateway_spiffe_id(mesh.trust_domain, INGRESS_GATEWAY),
            trust_domain=mesh.trust_domain,
            network=mesh.network,
        )

    def ingress(self, mesh: Mesh, trust: bool = True) -> Ingress:
        servers: list[IngressServer] = []
        for export in self.fed.spec.exports:
            if export.mesh != mesh.name:
                continue
            workload = self.workloads[mesh.name][export.workload]
            ref = f"{export.mesh}/{export.name}"
            host = self.fed.export_host(export)
            servers.append(IngressServer(host, ref, workload, _allow_rules(self.fed, export, None)))
            for (alias_mesh, wire), (alias_ref, importers) in self.aliases.items():
                if alias_mesh == mesh.name and alias_ref == ref:
                    rules = _allow_rules(self.fed, export, importers)
                    servers.append(IngressServer(wire, ref, workload, rules, alias_of=host))
        servers.sort(key=lambda s: s.sni)
        callers: dict[str, set[str]] = defaultdict(set)
        for server in servers:
            for rule in server.allow:
                callers[rule.consumer_mesh].add(rule.trust_domain)
        # Istio's ingress credential cannot bind a root to its trust domains; Federated roots
        # constrain nothing, so there the ingress trusts them cross-certified only. A partner's
        # ingress (``trust`` False) trusts nothing of ours: it is only described.
        trusted = (
            self.bundles(mesh, callers, cross_certify=self.fed.spec.trust.mode == "Federated")
            if trust
            else ()
        )
        return Ingress(
            address=_address(mesh),
            port=mesh.ingress.port,
            spiffe_id=gateway_spiffe_id(mesh.trust_domain, INGRESS_GATEWAY),
            servers=tuple(replace(s, trusted=_limited(trusted, s)) for s in servers),
            trusted=trusted,
            dns_names=tuple(s.sni for s in servers),
            probe_sni=FAILOVER.probe_sni,
        )

    def imports(self, mesh: Mesh) -> tuple[ImportRoute, ...]:
        routes = []
        for imp in self.fed.spec.imports:
            if imp.mesh != mesh.name:
                continue
            sources = tuple(self.source(i, ref) for i, ref in enumerate(imp.from_))
            first = self.fed.export(imp.from_[0])
            protocol = self.workloads[first.mesh][first.workload].protocol
            routes.append(
                ImportRoute(
                    mesh=mesh.name,
                    local_host=imp.host,
                    port=imp.port,
                    protocol=protocol,
                    wire_host=self.fed.wire_host(imp),
                    sources=sources,
                    trusted=self.bundles(mesh, {s.mesh: {s.trust_domain} for s in sources}),
                    connection_life=CONNECTION_LIFE if protocol == "HTTP" else None,
                    retries=RETRIES if protocol == "HTTP" else None,
                )
            )
        routes.sort(key=lambda r: (r.local_host, r.port))
        return tuple(routes)

    def import_principals(self, mesh: Mesh) -> set[PrincipalMatch]:
        """Every principal of ``mesh`` that an export behind one of its imports admits."""
        found: set[PrincipalMatch] = set()
        domain = mesh.trust_domain
        for imp in self.fed.spec.imports:
            if imp.mesh != mesh.name:
                continue
            for ref in imp.from_:
                for consumer in self.fed.export(ref).consumers:
                    if consumer.mesh == mesh.name:
                        found.update(parse_principal(p, domain) for p in consumer.principals)
        return found

    def mesh(self, mesh: Mesh) -> MeshPlan:
        imports = self.imports(mesh)
        egress_routes: dict[str, EgressRoute] = {}
        for route in imports:
            egress_routes.setdefault(route.wire_host, EgressRoute(route.wire_host, route.sources))
        trusted: dict[str, set[str]] = {mesh.name: {mesh.trust_domain}}
        for route in imports:
            for source in route.sources:
                trusted.setdefault(source.mesh, set()).add(source.trust_domain)
        workload_trust = self.bundles(mesh, trusted)
        root = root_name(self.fed, mesh.name)
        kube = mesh.kubernetes
        clusters = mesh_clusters(mesh)
        ingress = self.ingress(mesh)
        boundary = boundary_policy(ingress.spiffe_id, _kept_headers(self.fed, ingress.servers))
        return MeshPlan(
            name=mesh.name,
            trust_domain=mesh.trust_domain,
            network=mesh.network,
            root_name=root,
            ingress=ingress,
            egress=Egress(
                spiffe_id=gateway_spiffe_id(mesh.trust_domain, EGRESS_GATEWAY),
                routes=tuple(sorted(egress_routes.values(), key=lambda r: r.wire_host)),
                failover=FAILOVER,
            ),
            imports=imports,
            workloads=tuple(self.workloads[mesh.name].values()),
            caller_namespaces=caller_namespaces(
                self.workloads[mesh.name].values(), self.import_principals(mesh)
            ),
            workload_trust=workload_trust,
            local_trust=self.bundles(mesh, {mesh.name: {mesh.trust_domain}}),
            import_trust=self.bundles(
                mesh, {s.mesh: {s.trust_domain} for route in imports for s in route.sources}
            ),
            foreign_trust=tuple(b for b in workload_trust if b.name != root),
            boundary=boundary,
            workload_guards=_guards(ingress, boundary.caller_header),
            kube_context=clusters[0].context if clusters else None,
            istio_namespace=kube.istio_namespace if kube else "istio-system",
            clusters=clusters,
        )


def _address(mesh: Mesh) -> str:
    """The ingress address: the spec's, or the one discovery filled in (checked before)."""
    if mesh.ingress.address is None:
        raise ValueError(f"mesh {mesh.name}: ingress address not discovered yet")
    return mesh.ingress.address


def build_plan(
    fed: Federation, root_pems: Mapping[str, str], followed: Mapping[str, str] | None = None
) -> FederationPlan:
    """Resolve ``fed``; ``root_pems`` maps each mesh this state directory holds to the PEM of
    the root(s) it chains to; ``followed`` maps each peer some mesh follows to the PEM of the
    X.509 authorities of its last accepted bundle. A mesh trusts a peer it follows through that
    bundle only, and partner meshes (whose roots are not held) are planned only as peers: no
    ``MeshPlan``, nothing rendered or run for them. ``followed`` None: callers that plan without
    trust material (audit of a spec, tests) give every mesh's PEM in ``root_pems``."""
    resolver = _Resolver(fed, root_pems, followed)
    trust = fed.spec.trust
    return FederationPlan(
        name=fed.name,
        trust_mode=trust.mode,
        workload_ttl=trust.ttl("workload"),
        gateway_ttl=trust.ttl("gateway"),
        meshes=tuple(
            resolver.mesh(m) for m in sorted(fed.spec.meshes, key=lambda m: m.name) if not m.partner
        ),
        peerings=peerings(fed) if trust.mode == "Federated" else (),
        partners=tuple(
            PartnerPlan(m.name, m.trust_domain, resolver.ingress(m, trust=False))
            for m in sorted(fed.spec.meshes, key=lambda m: m.name)
            if m.partner
        ),
    )
