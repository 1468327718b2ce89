"""Every source of an import, failover targets included, authorises the importing mesh.

Spec mode: each ``from`` entry's export lists the importer as a consumer. Manifests mode: an
egress ServiceEntry endpoint is followed to the remote mesh's ingress when that mesh's manifests
are in the tree too (its Gateway must serve the SNI and an ALLOW rule must admit the importer's
trust domain); without the remote side it cannot be checked and is noted as such.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.install import mesh_configs, root_namespace
from meshfed.audit.istio import (
    GatewayWorkload,
    action,
    gateway_workloads,
    istio,
    principal_patterns,
    selects_workload,
)
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.sources.spec import SpecSource
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, str_list, str_map
from meshfed.spiffe import parse_istio_principal

MESH_LABEL = "meshfed.dev/mesh"
_FAILOVER_LABEL = "meshfed.dev/failover-"


def _position(k: int) -> str:
    return "first source" if k == 0 else f"failover target #{k + 1}"


def _from_spec(spec: SpecSource) -> Iterator[Hit]:
    consumers: dict[str, set[str]] = {}
    for _, export in spec.exports():
        ref = f"{export.get('mesh')}/{export.get('name')}"
        meshes = {as_str(as_dict(c).get("mesh")) for c in as_list(export.get("consumers"))}
        consumers.setdefault(ref, set()).update(m for m in meshes if m)
    for i, imp in spec.imports():
        importer = as_str(imp.get("mesh"))
        for k, ref in enumerate(str_list(imp.get("from"))):
            where = spec.at("spec", "imports", i, "from", k)
            if ref not in consumers:
                yield Hit(
                    Severity.HIGH,
                    f"import of {imp.get('host')} by mesh {importer}: {_position(k)} {ref} is "
                    "not an export",
                    where,
                )
            elif importer not in consumers[ref]:
                yield Hit(
                    Severity.HIGH,
                    f"import of {imp.get('host')} by mesh {importer}: {_position(k)} {ref} does "
                    f"not list mesh {importer} as a consumer, so its ingress refuses these calls",
                    where,
                    fix=f"Add a consumer entry for mesh {importer} to export {ref}, or drop it "
                    "from the import's failover list.",
                )


# --- manifests ----------------------------------------------------------------------------------


def host_matches(pattern: str, host: str) -> bool:
    pattern = pattern.partition("/")[2] if "/" in pattern else pattern
    if pattern == "*" or pattern == host:
        return True
    return pattern.startswith("*.") and host.endswith(pattern[1:])


def _served_hosts(workload: GatewayWorkload) -> list[tuple[str, int | None]]:
    out = []
    for gw in workload.gateways:
        for server in as_list(gw.spec.get("servers")):
            server = as_dict(server)
            port = as_dict(server.get("port")).get("number")
            for host in str_list(server.get("hosts")):
                out.append((host, port if isinstance(port, int) else None))
    return out


def _serves(workload: GatewayWorkload, host: str, port: int | None) -> bool:
    return any(
        host_matches(h, host) and (port is None or p is None or p == port)
        for h, p in _served_hosts(workload)
    )


def _sni_matches(rule: Obj, sni: str) -> bool:
    for cond in as_list(rule.get("when")):
        cond = as_dict(cond)
        if cond.get("key") != "connection.sni":
            continue
        values = str_list(cond.get("values"))
        if values and not any(host_matches(v, sni) for v in values):
            return False
        if any(host_matches(v, sni) for v in str_list(cond.get("notValues"))):
            return False
    return True


def _admits_domain(pattern: str, domain: str) -> bool:
    """Whether an Istio principal pattern could admit an identity of ``domain``."""
    match = parse_istio_principal(pattern)
    return match is None or match.may_match_domain(domain)


def authorises(docs: list[Doc], workload: GatewayWorkload, sni: str, domain: str) -> bool:
    """Whether an ALLOW rule at the ingress could admit a caller of ``domain`` for ``sni``."""
    root = root_namespace(docs)
    policies = [
        p
        for p in istio(docs, "AuthorizationPolicy")
        if action(p) == "ALLOW" and selects_workload(p, workload, root)
    ]
    if not policies:
        return True  # allows everything; ingress-deny-by-default reports that
    for policy in policies:
        for rule in as_list(policy.spec.get("rules")):
            rule = as_dict(rule)
            if not _sni_matches(rule, sni):
                continue
            principals, constrained = principal_patterns(rule)
            if not constrained or any(_admits_domain(p, domain) for p in principals):
                return True
    return False


@dataclass(frozen=True)
class _Endpoint:
    scope: str
    entry: Doc
    index: int
    host: str
    address: str
    port: int | None
    labels: dict[str, str]
    order: int
    count: int


def _endpoints(ctx: AuditContext) -> list[_Endpoint]:
    scopes = ctx.scopes()
    ingress = {
        s: [w for w in gateway_workloads(d) if w.role == "ingress"] for s, d in scopes.items()
    }
    out = []
    for scope, docs in sorted(scopes.items()):
        egress = [w for w in gateway_workloads(docs) if w.role == "egress"]
        for entry in istio(docs, "ServiceEntry"):
            endpoints = [as_dict(e) for e in as_list(entry.spec.get("endpoints"))]
            if as_str(entry.spec.get("location")) != "MESH_EXTERNAL" or not endpoints:
                continue
            for host in str_list(entry.spec.get("hosts")):
                remote = any(
                    _serves(w, host, None) for s, ws in ingress.items() if s != scope for w in ws
                )
                if not remote and not any(_serves(w, host, None) for w in egress):
                    continue  # an external service, not an import of a federated mesh
                ranked = _order(endpoints)
                for i, ep in enumerate(endpoints):
                    ports = [p for p in as_dict(ep.get("ports")).values() if isinstance(p, int)]
                    out.append(
                        _Endpoint(
                            scope,
                            entry,
                            i,
                            host,
                            as_str(ep.get("address")) or "",
                            ports[0] if ports else None,
                            str_map(ep.get("labels")),
                            ranked[i],
                            len(endpoints),
                        )
                    )
    return out


def _order(endpoints: list[Obj]) -> list[int]:
    """Failover position of each endpoint: meshfed's failover labels, else listing order."""
    counts = [
        sum(1 for k in str_map(e.get("labels")) if k.startswith(_FAILOVER_LABEL)) for e in endpoints
    ]
    if not any(counts):
        return list(range(len(endpoints)))
    return [len(endpoints) - 1 - c for c in counts]


def _remote_scope(ctx: AuditContext, ep: _Endpoint) -> str | None:
    others = [s for s in ctx.scopes() if s != ep.scope]
    named = [s for s in others if ctx.scope_name(s) == ep.labels.get(MESH_LABEL)]
    if named:
        return named[0]
    serving = [
        s
        for s in others
        for w in gateway_workloads(ctx.scopes()[s])
        if w.role == "ingress" and _serves(w, ep.host, ep.port)
    ]
    return serving[0] if len(set(serving)) == 1 else None


def _trust_domain(docs: list[Doc]) -> str | None:
    domains = {as_str(c.config.get("trustDomain")) for c in mesh_configs(docs)} - {None}
    return str(domains.pop()) if len(domains) == 1 else None


def _from_manifests(ctx: AuditContext) -> Iterator[Hit]:
    endpoints = _endpoints(ctx)
    if not endpoints:
        raise NotAssessed("no imports (ServiceEntries of remote ingresses) found")
    checked = 0
    for ep in endpoints:
        where = ep.entry.at("spec", "endpoints", ep.index, "address")
        what = f"{ep.host} via {ep.address}:{ep.port} ({_position(ep.order)} of {ep.count})"
        remote = _remote_scope(ctx, ep)
        if remote is None:
            yield Hit(
                Severity.INFO,
                f"{what}: no mesh in the audited tree serves this host at that port (its "
                f"manifests are elsewhere?); whether it authorises {ctx.scope_name(ep.scope)} "
                "cannot be checked",
                where,
                fix="Audit the remote mesh's manifests together with these (one tree).",
            )
            continue
        domain = _trust_domain(ctx.scopes()[ep.scope])
        if domain is None:
            yield Hit(
                Severity.INFO,
                f"{what}: the trust domain of {ctx.scope_name(ep.scope)} is unknown (no "
                "meshConfig), so the remote authorization cannot be checked",
                where,
                fix="Include the mesh's meshConfig (IstioOperator) in the audited tree.",
            )
            continue
        checked += 1
        remote_docs = ctx.scopes()[remote]
        serving = [
            w
            for w in gateway_workloads(remote_docs)
            if w.role == "ingress" and _serves(w, ep.host, ep.port)
        ]
        name = ctx.scope_name(remote)
        if not serving:
            yield Hit(
                Severity.HIGH,
                f"{what}: the ingress of {name} does not serve {ep.host}",
                where,
                fix=f"Serve {ep.host} on {name}'s ingress for this importer, or remove the "
                "endpoint.",
            )
        elif not any(authorises(remote_docs, w, ep.host, domain) for w in serving):
            yield Hit(
                Severity.HIGH,
                f"{what}: no ALLOW rule at the ingress of {name} admits callers of trust domain "
                f"{domain} for {ep.host}, so calls (or failover) land on a refusal",
                where,
                fix=f"Authorise the importing workloads of {domain} at {name}'s ingress, or "
                "remove the endpoint.",
            )
    if not checked:
        raise NotAssessed("the exporting meshes of these imports are not in the audited tree")


@check(
    "import-failover-authorised",
    title="Every import source authorises the importer",
    severity=Severity.HIGH,
    why="An import whose source (or failover target) does not authorise the importing mesh "
    "fails when traffic moves there: the allow lists on the two sides of the boundary "
    "disagree, so the configuration does not say who may call what.",
    fix="Make every export an import lists (in any failover position) name the importing mesh "
    "as a consumer, or remove it from the import.",
    controls=("AC-4", "SC-7", "PCI 1.2.1"),
)
def import_failover_authorised(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.spec is not None:
        yield from _from_spec(ctx.spec)
    else:
        ctx.require_docs()
        yield from _from_manifests(ctx)
