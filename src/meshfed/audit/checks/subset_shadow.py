"""Callers' sidecars see the DestinationRule subsets their routes use: no rule of the caller's
own namespace hides them.

An import routes a local name to a subset of the egress gateway's Service (meshfed:
``federation-egress-imports`` in ``meshfed-system``, one subset per imported host: the SNI, mTLS
and the exporters' identities). istiod takes a sidecar's rules for a host from its own
namespace first (`meshfed.audit.dr_lookup`): a rule there whose host covers the egress
gateway's — exactly, or a wildcard such as ``*.local`` or ``*.svc.cluster.local`` — replaces
the subsets' rule for every sidecar of that namespace, whatever its ``exportTo``. The subset
clusters vanish and the import fails: measured on istiod 1.25.5, an HTTP import answered 503
(200 before), a TCP import sent no byte; deleting the rule restored both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.dr_lookup import (
    effective_entry,
    in_proxy_pool,
    most_specific,
    resolve_host,
    selector,
)
from meshfed.audit.install import mesh_configs, root_namespace
from meshfed.audit.istio import action, istio, principal_patterns
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, dig, str_list
from meshfed.spiffe import domain_prefix, parse_istio_principal


@dataclass(frozen=True)
class SubsetRoute:
    """A mesh-bound route to a subset, and the rule that defines the subset."""

    vs: Doc
    host: str
    """The destination host, resolved."""
    subset: str
    owner: Doc
    definition: Obj

    @property
    def callers_call(self) -> str:
        return ", ".join(str_list(self.vs.spec.get("hosts"))) or self.vs.name

    @property
    def sni(self) -> str | None:
        return as_str(dig(self.definition, "trafficPolicy", "tls", "sni"))


def _mesh_bound(vs: Doc) -> bool:
    gateways = str_list(vs.spec.get("gateways"))
    return not gateways or "mesh" in gateways


def _defines(dr: Doc, host: str, name: str) -> Obj | None:
    if resolve_host(as_str(dr.spec.get("host")) or "", dr.namespace) != host:
        return None
    for s in as_list(dr.spec.get("subsets")):
        if as_str(as_dict(s).get("name")) == name:
            return as_dict(s)
    return None


def subset_routes(docs: list[Doc]) -> list[SubsetRoute]:
    """Every route of a mesh-bound VirtualService to a subset some DestinationRule defines
    (a subset nobody defines fails everywhere: not this check's concern)."""
    rules = istio(docs, "DestinationRule")
    out: dict[tuple[str, str, str, str], SubsetRoute] = {}
    for vs in istio(docs, "VirtualService"):
        if not _mesh_bound(vs):
            continue
        for proto in ("http", "tcp", "tls"):
            for route in as_list(vs.spec.get(proto)):
                for dest in as_list(as_dict(route).get("route")):
                    target = as_dict(as_dict(dest).get("destination"))
                    name, raw = as_str(target.get("subset")), as_str(target.get("host"))
                    if not name or not raw:
                        continue
                    host = resolve_host(raw, vs.namespace)
                    for dr in rules:
                        found = _defines(dr, host, name)
                        if found is not None:
                            key = (vs.namespace, vs.name, host, name)
                            out.setdefault(key, SubsetRoute(vs, host, name, dr, found))
    return list(out.values())


def _visible(vs: Doc, namespace: str) -> bool:
    ex = set(str_list(vs.spec.get("exportTo")))
    return not ex or "*" in ex or namespace in ex or ("." in ex and vs.namespace == namespace)


def _default_private(docs: list[Doc]) -> bool:
    return any(
        "." in str_list(c.config.get("defaultDestinationRuleExportTo")) for c in mesh_configs(docs)
    )


def _trust_domain(docs: list[Doc]) -> str | None:
    domains = {as_str(c.config.get("trustDomain")) for c in mesh_configs(docs)} - {None}
    return str(domains.pop()) if len(domains) == 1 else None


def _sni_value(pattern: str, sni: str) -> bool:
    if pattern.startswith("*"):
        return sni.endswith(pattern[1:])
    if pattern.endswith("*"):
        return sni.startswith(pattern[:-1])
    return pattern == sni


def _caller_namespace(pattern: str, domain: str) -> str | None:
    """The namespace every identity an Istio principal pattern admits lives in ("" when it
    admits none of ``domain``; None when it could be any)."""
    match = parse_istio_principal(pattern)
    if match is None:
        return None
    if not match.may_match_domain(domain):
        return ""
    rest = match.value.removeprefix(domain_prefix(domain))
    parts = rest.split("/")
    if rest == match.value or len(parts) < 3 or parts[0] != "ns":
        return None  # a prefix ending inside the namespace, or not a Kubernetes identity
    return parts[1]


def caller_namespaces(scopes: dict[str, list[Doc]], scope: str, sni: str) -> set[str] | None:
    """Namespaces of ``scope`` whose workloads an exporter in the tree admits for ``sni``
    (ALLOW rules naming that SNI in ``connection.sni``); None when that cannot be told."""
    domain = _trust_domain(scopes[scope])
    if domain is None:
        return None
    found: set[str] = set()
    seen = False
    for other, docs in scopes.items():
        if other == scope:
            continue
        for policy in istio(docs, "AuthorizationPolicy"):
            if action(policy) != "ALLOW":
                continue
            for rule in as_list(policy.spec.get("rules")):
                snis = [
                    v
                    for cond in as_list(as_dict(rule).get("when"))
                    if as_dict(cond).get("key") == "connection.sni"
                    for v in str_list(as_dict(cond).get("values"))
                ]
                if not any(_sni_value(v, sni) for v in snis):
                    continue
                seen = True
                principals, constrained = principal_patterns(rule)
                if not constrained:
                    return None
                for p in principals:
                    ns = _caller_namespace(p, domain)
                    if ns is None:
                        return None
                    if ns:
                        found.add(ns)
    return found if seen else None


@dataclass
class _Broken:
    rule: Doc
    namespace: str
    selected_only: bool
    missing: list[SubsetRoute]
    differs: list[SubsetRoute]


def _fix(rule: Doc, host: str, owner: Doc) -> str:
    rule_host = as_str(rule.spec.get("host")) or ""
    add = (
        f"add to namespace {rule.namespace} a DestinationRule for exactly {host} carrying the "
        f"subsets of {owner.namespace}/{owner.name} (same names and trafficPolicy; istiod then "
        "prefers its exact host), and keep it in step with every change of the imports"
    )
    if rule_host.startswith("*"):
        return (
            f"Narrow host {rule_host!r} so that it no longer covers {host} (name the services "
            f"it is meant for, or e.g. '*.{rule.namespace}.svc.cluster.local'), or {add}. "
            "Changing exportTo does not help: a rule is always consulted first by the sidecars "
            "of its own namespace (unless it is exported only to other namespaces)."
        )
    return (
        f"Delete this rule (the subsets' rule in {owner.namespace} then applies), or copy the "
        f"subsets of {owner.namespace}/{owner.name} into it (same names and trafficPolicy) "
        "and keep them in step with every change of the imports."
    )


def _compare(
    routes: list[SubsetRoute], subsets: dict[str, Obj]
) -> tuple[list[SubsetRoute], list[SubsetRoute]]:
    """The routes whose subset is missing, and those whose subset is defined otherwise."""
    missing = [r for r in routes if r.subset not in subsets]
    differs = [r for r in routes if r.subset in subsets and subsets[r.subset] != r.definition]
    return missing, differs


def _judge(docs: list[Doc], routes: list[SubsetRoute], namespace: str, root: str) -> list[_Broken]:
    default_private = _default_private(docs)
    pool = [
        dr
        for dr in istio(docs, "DestinationRule")
        if dr.namespace == namespace and in_proxy_pool(dr, root, default_private)
    ]
    out: list[_Broken] = []
    by_host: dict[str, list[SubsetRoute]] = {}
    for r in routes:
        if r.owner.namespace != namespace and _visible(r.vs, namespace):
            by_host.setdefault(r.host, []).append(r)
    for host, host_routes in sorted(by_host.items()):
        resolved = [resolve_host(as_str(dr.spec.get("host")) or "", namespace) for dr in pool]
        win = most_specific(set(resolved), host)
        if win is None:
            continue  # istiod goes on to the service's namespace: the subsets' own rule
        group = [dr for dr, h in zip(pool, resolved, strict=True) if h == win]
        entry = effective_entry(group)
        if entry is None:
            for dr in group:  # only selector rules: the others get no rule at all
                out.append(_Broken(dr, namespace, False, host_routes, []))
        else:
            missing, differs = _compare(host_routes, entry.subsets)
            if missing or differs:
                out.append(_Broken(entry.rules[-1], namespace, False, missing, differs))
        for dr in group:
            if not selector(dr):
                continue
            mine = {
                str(as_dict(s).get("name")): as_dict(s) for s in as_list(dr.spec.get("subsets"))
            }
            missing, differs = _compare(host_routes, mine)
            if (missing or differs) and entry is not None:
                out.append(_Broken(dr, namespace, True, missing, differs))
    return out


def _names(routes: list[SubsetRoute]) -> str:
    return "; ".join(f"subset {r.subset} (route of {r.callers_call})" for r in routes)


def _hits(
    ctx: AuditContext, scope: str, docs: list[Doc], routes: list[SubsetRoute]
) -> Iterator[Hit]:
    root = root_namespace(docs)
    namespaces = sorted({dr.namespace for dr in istio(docs, "DestinationRule")})
    callers: dict[str, set[str] | None] = {}
    for r in routes:
        if r.sni and r.sni not in callers:
            callers[r.sni] = caller_namespaces(ctx.scopes(), scope, r.sni)
    for ns in namespaces:
        for b in _judge(docs, routes, ns, root):
            broken = b.missing + b.differs
            owner = broken[0].owner
            host = broken[0].host
            known = [callers.get(r.sni or "") for r in broken]
            latent = all(k is not None and ns not in k for k in known)
            who = (
                f"the workloads of namespace {ns} it selects"
                if b.selected_only
                else f"every sidecar of namespace {ns}"
            )
            if not b.selected_only and selector(b.rule):
                who += " (those it does not select get no DestinationRule for it at all)"
            parts = []
            if b.missing:
                parts.append(f"it lacks {_names(b.missing)}")
            if b.differs:
                parts.append(f"it defines {_names(b.differs)} other than {owner.name} does")
            rule_host = as_str(b.rule.spec.get("host")) or ""
            message = (
                f"{b.rule.namespace}/{b.rule.name} (host {rule_host}) is the DestinationRule "
                f"istiod uses for {host} for {who}, instead of {owner.namespace}/{owner.name} "
                f"(a sidecar's own namespace is consulted first): {'; '.join(parts)}, so these "
                "calls fail (HTTP 503, a TCP connection closed without a byte)"
            )
            if latent:
                message += f"; no workload of {ns} is authorised to call them today"
            yield Hit(
                Severity.LOW if latent else Severity.HIGH,
                message,
                b.rule.at("spec", "host"),
                fix=_fix(b.rule, host, owner),
            )


@check(
    "import-subsets-shadowed",
    title="Callers' sidecars see the subsets their imports route to",
    severity=Severity.HIGH,
    why="istiod takes a sidecar's DestinationRules for a host from one namespace only, the "
    "sidecar's own first: a rule there covering the egress gateway's host (exactly, or by a "
    "wildcard such as *.local) replaces the rule that defines the imports' subsets (their SNI, "
    "mTLS and the exporters' identities), so every import of that namespace fails.",
    fix="Narrow the rule's host so it does not cover the egress gateway's Service, or give the "
    "namespace an exact-host rule for it that carries the imports' subsets.",
    controls=("SC-7", "SC-8", "CM-6"),
)
def import_subsets_shadowed(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    assessed = False
    for scope, docs in sorted(ctx.scopes().items()):
        routes = subset_routes(docs)
        if routes:
            assessed = True
            yield from _hits(ctx, scope, docs, routes)
    if not assessed:
        raise NotAssessed("no mesh-bound route uses a DestinationRule subset (no imports)")
