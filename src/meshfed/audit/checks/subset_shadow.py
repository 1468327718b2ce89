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

meshfed renders the fix: in each namespace of an import's callers, a copy of the subsets' rule
for exactly that host (``exportTo: ["."]``, labelled ``meshfed.dev/copy-of``), which istiod
prefers there to any wildcard. Where it is present and used nothing is reported; a user's rule
for the same exact host can still defeat it (`meshfed.audit.dr_lookup.consolidate`: not merged
with another ``exportTo``, so the one created last wins; taken into a same-host selector rule),
and the finding says which and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.dr_lookup import (
    Entry,
    consolidate,
    export_set,
    in_proxy_pool,
    most_specific,
    resolve_host,
)
from meshfed.audit.install import mesh_configs, root_namespace
from meshfed.audit.istio import action, istio, principal_patterns
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, dig, str_list
from meshfed.render.istio.imports import COPY_LABEL
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


def _private(dr: Doc) -> bool:
    return export_set(dr) in ({"."}, {dr.namespace})


def is_copy(dr: Doc) -> bool:
    """meshfed's caller-side copy of the egress subsets' rule (`meshfed.render.istio.imports`)."""
    return bool(dig(dr.obj, "metadata", "labels", COPY_LABEL))


def subset_routes(docs: list[Doc]) -> list[SubsetRoute]:
    """Every route of a mesh-bound VirtualService to a subset some DestinationRule defines
    (a subset nobody defines fails everywhere: not this check's concern). The defining rule is
    one exported beyond its namespace where there is one (meshfed's: ``meshfed-system``), not
    a namespace's private copy."""
    rules = sorted(istio(docs, "DestinationRule"), key=_private)
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
    note: str = ""
    """Why meshfed's copy in the namespace does not help, when there is one."""
    fix: str = ""
    """The fix, when not the default for the rule's host."""
    unselected: bool = False
    """The sidecars the rule's selector does not pick get no rule at all for the host."""
    order: str = "last"
    """Whether istiod uses the rule: ``last`` (it does), ``later`` (not today: a same-host rule
    standing on its own was created after it; it would if created again), ``unknown`` (no
    creation times: whichever is created last)."""


def _fix(rule: Doc, host: str, owner: Doc) -> str:
    rule_host = as_str(rule.spec.get("host")) or ""
    add = (
        f"add to namespace {rule.namespace} a DestinationRule for exactly {host} carrying the "
        f"subsets of {owner.namespace}/{owner.name} (same names and trafficPolicy; istiod then "
        "prefers its exact host): meshfed renders one, labelled "
        f"{COPY_LABEL}, for every namespace of the import callers it knows; apply it"
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


def _ref(dr: Doc) -> str:
    return f"{dr.namespace}/{dr.name}"


def _beside_copy(rule: Doc, copy: Doc) -> tuple[str, str]:
    """Why an exact-host rule without a selector beats meshfed's copy, and the fix."""
    exports = sorted(export_set(rule)) or ["(none: istiod's default)"]
    note = (
        f"meshfed's copy {_ref(copy)} is in this namespace too, but istiod does not merge "
        f"the two (exportTo {exports} vs the copy's ['.']; rules of one namespace for one host "
        "merge only with equal exportTo) and uses the one created last"
    )
    fix = (
        f"Set this rule's exportTo to ['.'], as meshfed's copy {_ref(copy)} has: istiod then "
        "merges their subsets (this rule's top-level trafficPolicy applies to them where they "
        "set nothing). Or delete it (the copy then applies). Until then, whichever of the two "
        "is created last wins."
    )
    return note, fix


def _swallowed(rule: Doc, copy: Doc) -> tuple[str, str]:
    """Why meshfed's copy is lost in a same-host rule with a selector, and the fix."""
    note = (
        f"meshfed's copy {_ref(copy)} was merged into it (istiod merges a rule without "
        "workloadSelector into an earlier same-host rule with one when their exportTo are "
        "equal, and a selector makes a rule's exportTo ['.']), so the copy gives no rule to "
        "the sidecars the selector does not pick"
    )
    fix = (
        "Remove this rule's workloadSelector (an exact-host rule with exportTo ['.'] merges "
        f"with meshfed's copy {_ref(copy)}), or delete it: on istiod 1.25 a same-host selector "
        "rule of the namespace takes in the copy and leaves every other sidecar there without "
        "a rule for the egress gateway."
    )
    return note, fix


def _compare(
    routes: list[SubsetRoute], subsets: dict[str, Obj]
) -> tuple[list[SubsetRoute], list[SubsetRoute]]:
    """The routes whose subset is missing, and those whose subset is defined otherwise."""
    missing = [r for r in routes if r.subset not in subsets]
    differs = [r for r in routes if r.subset in subsets and subsets[r.subset] != r.definition]
    return missing, differs


def _user_rule(entry: Entry) -> Doc:
    """The rule to report for an entry: the last one merged into it that is not meshfed's."""
    return next((r for r in reversed(entry.rules) if not is_copy(r)), entry.rules[-1])


def _created(entry: Entry) -> str | None:
    return as_str(dig(entry.base.obj, "metadata", "creationTimestamp"))


def _judge_group(group: list[Doc], routes: list[SubsetRoute], ns: str) -> list[_Broken]:
    """The rules of namespace ``ns`` istiod takes for the subsets' host, judged."""
    entries = consolidate(group)
    copy = next((dr for dr in group if is_copy(dr)), None)
    plain = [e for e in entries if not e.selected]
    out: list[_Broken] = []
    if not plain:  # only selector rules: the others get no rule at all
        for e in entries:
            note, fix = _swallowed(e.base, copy) if copy in e.rules else ("", "")
            out.append(_Broken(e.base, ns, False, routes, [], note, fix, unselected=True))
    lacking = [(e, *_compare(routes, e.subsets)) for e in plain]
    lacking = [(e, m, d) for e, m, d in lacking if m or d]
    known = all(_created(e) for e in plain)
    for e, missing, differs in lacking:
        # istiod uses the last entry; of entries standing on their own, the one created last
        # (unknown for files not applied: then any of them may be).
        order = "last" if e is plain[-1] else "later" if known else "unknown"
        rule = _user_rule(e)
        note, fix = ("", "")
        host = as_str(rule.spec.get("host")) or ""
        if copy is not None and copy not in e.rules and not host.startswith("*"):
            note, fix = _beside_copy(rule, copy)
        out.append(_Broken(rule, ns, False, missing, differs, note, fix, order=order))
    for e in entries:
        if e.selected and plain:
            missing, differs = _compare(routes, e.subsets)
            if missing or differs:
                out.append(_Broken(e.base, ns, True, missing, differs))
    return out


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
        out += _judge_group(group, host_routes, namespace)
    return out


def _names(routes: list[SubsetRoute]) -> str:
    return "; ".join(f"subset {r.subset} (route of {r.callers_call})" for r in routes)


def _message(b: _Broken, owner: Doc, host: str) -> str:
    ns = b.namespace
    rule_host = as_str(b.rule.spec.get("host")) or ""
    if b.unselected:
        message = (
            f"{b.rule.namespace}/{b.rule.name} (host {rule_host}) has a workloadSelector, and "
            f"namespace {ns} has no rule without one left for {host}: the sidecars there it "
            "does not select get no DestinationRule for it at all, instead of "
            f"{owner.namespace}/{owner.name} (a sidecar's own namespace is consulted first), so "
            f"their calls through {_names(b.missing)} fail (HTTP 503, a TCP connection closed "
            "without a byte)"
        )
        return message + (f"; {b.note}" if b.note else "")
    who = (
        f"the workloads of namespace {ns} it selects"
        if b.selected_only
        else f"every sidecar of namespace {ns}"
    )
    parts = []
    if b.missing:
        parts.append(f"it lacks {_names(b.missing)}")
    if b.differs:
        parts.append(f"it defines {_names(b.differs)} other than {owner.name} does")
    is_used = {
        "last": "is the DestinationRule istiod uses",
        "later": "is not the DestinationRule istiod uses today (a same-host rule of the "
        "namespace was created after it), but becomes it when created again (a re-apply "
        "that recreates it, a restore)",
        "unknown": "is the DestinationRule istiod uses if it is created after the other "
        "same-host rules of the namespace (no creation times here)",
    }[b.order]
    message = (
        f"{b.rule.namespace}/{b.rule.name} (host {rule_host}) {is_used} for {host} for {who}, "
        f"instead of {owner.namespace}/{owner.name} (a sidecar's own namespace is consulted "
        f"first): {'; '.join(parts)}, so these calls fail (HTTP 503, a TCP connection closed "
        "without a byte)"
    )
    return message + (f"; {b.note}" if b.note else "")


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
            message = _message(b, owner, host)
            if latent:
                message += f"; no workload of {ns} is authorised to call them today"
            severity = Severity.MEDIUM if b.order == "later" else Severity.HIGH
            yield Hit(
                Severity.LOW if latent else severity,
                message,
                b.rule.at("spec", "host"),
                fix=b.fix or _fix(b.rule, host, owner),
            )


@check(
    "import-subsets-shadowed",
    title="Callers' sidecars see the subsets their imports route to",
    severity=Severity.HIGH,
    why="istiod takes a sidecar's DestinationRules for a host from one namespace only, the "
    "sidecar's own first: a rule there covering the egress gateway's host (exactly, or by a "
    "wildcard such as *.local) replaces the rule that defines the imports' subsets (their SNI, "
    "mTLS and the exporters' identities), so every import of that namespace fails.",
    fix="Narrow the rule's host so it does not cover the egress gateway's Service, or apply "
    "meshfed's copy of the subsets' rule in that namespace (an exact-host rule istiod prefers); "
    "a same-host rule beside the copy needs exportTo ['.'] and no workloadSelector.",
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
