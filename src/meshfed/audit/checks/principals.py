"""Who may cross the boundary is named precisely: no ``*`` principals, no whole trust domains,
no ALLOW rules at an ingress that do not constrain the caller's identity at all."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext
from meshfed.audit.install import root_namespace
from meshfed.audit.istio import action, gateway_workloads, istio, selects_workload
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.sources.spec import SpecSource
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, str_list
from meshfed.plan.model import FederationPlan
from meshfed.spec.lint import unmatched_principals
from meshfed.spec.model import Federation
from meshfed.spec.principals import parse_principal
from meshfed.spiffe import PrincipalMatch, parse_istio_principal

UNKNOWN_DOMAIN = "unknown.invalid"
"""Resolves the principals of a consumer mesh the invalid spec gives no trust domain."""


def breadth(match: PrincipalMatch) -> tuple[Severity, str] | None:
    """How broad a match on identities is; None for one exact identity."""
    if not match.within_one_domain:
        return Severity.HIGH, "a prefix of trust domain names: identities of other trust domains"
    if not match.prefix:
        return None
    if match.covers_domain:
        return Severity.MEDIUM, f"every workload of trust domain {match.trust_domain}"
    return Severity.LOW, "a prefix: every service account it matches"


def classify(principal: str) -> tuple[Severity, str] | None:
    """How broad an Istio principal pattern (``td/ns/x/sa/y``, with ``*``) is; None if exact."""
    if principal == "*":
        return Severity.CRITICAL, "any authenticated identity of any trusted domain"
    match = parse_istio_principal(principal)
    if match is None:
        return Severity.HIGH, "a suffix match: the same path in any trust domain"
    return breadth(match)


def _spec_hit(
    spec: SpecSource,
    at: tuple[int, int, int],
    export: str,
    mesh: str,
    text: str,
    match: PrincipalMatch,
) -> Iterator[Hit]:
    found = breadth(match)
    if found is None:
        return
    severity, what = found
    if match.covers_domain:
        what = "every workload of the consumer mesh"
    i, j, k = at
    yield Hit(
        severity,
        f"export {export} allows {text!r} of mesh {mesh}: {what}",
        spec.at("spec", "exports", i, "consumers", j, "principals", k),
        fix="Name the calling workloads: ns/<namespace>/sa/<service account>.",
    )


def _planned(spec: SpecSource, fed: Federation, plan: FederationPlan) -> Iterator[Hit]:
    """A valid spec's principals as the plan resolved them (one rule per consumer, one match
    per principal, in the spec's order), located at the spec's field."""
    for i, export in enumerate(fed.spec.exports):
        ref = f"{export.mesh}/{export.name}"
        servers = plan.ingress_of(export.mesh).servers
        server = next(s for s in servers if s.export == ref and s.alias_of is None)
        for j, rule in enumerate(server.allow):
            texts = export.consumers[j].principals
            for k, match in enumerate(rule.principals):
                yield from _spec_hit(spec, (i, j, k), ref, rule.consumer_mesh, texts[k], match)


def _unplanned(spec: SpecSource) -> Iterator[Hit]:
    """A spec that does not validate (its problems are input-valid's findings): each principal
    that still resolves for its consumer mesh."""
    domains = spec.trust_domains()
    for i, export in spec.exports():
        name = f"{export.get('mesh')}/{export.get('name')}"
        for j, consumer in enumerate(as_list(export.get("consumers"))):
            consumer = as_dict(consumer)
            mesh = as_str(consumer.get("mesh")) or ""
            domain = domains.get(mesh, UNKNOWN_DOMAIN)
            for k, principal in enumerate(str_list(consumer.get("principals"))):
                try:
                    match = parse_principal(principal, domain)
                except ValueError:
                    continue
                yield from _spec_hit(spec, (i, j, k), name, mesh, principal, match)


def _from_spec(spec: SpecSource, plan: FederationPlan | None) -> Iterator[Hit]:
    if spec.federation is None or plan is None:
        yield from _unplanned(spec)
        return
    for problem in unmatched_principals(spec.federation):
        yield Hit(
            Severity.MEDIUM,
            f"{problem.message}: the intended caller is refused, and whoever may create "
            "that service account in the consumer mesh is let in",
            spec.at(*problem.path),
            fix=problem.fix[0].upper() + problem.fix[1:] + ".",
        )
    yield from _planned(spec, spec.federation, plan)


@check(
    "authz-principals",
    title="ALLOW policies name their callers",
    severity=Severity.CRITICAL,
    why="An ALLOW rule for '*' lets any identity the gateway trusts through; 'td/*' lets every "
    'workload of a whole mesh through (allowed by meshfed\'s spec as "*", but rarely '
    "least privilege); a rule without a source at the ingress lets any caller through.",
    fix="Allow exact workload identities (trust-domain/ns/<namespace>/sa/<service account>).",
    controls=("SC-7(11)", "AC-4", "AC-6", "IA-9", "PCI 1.3.1"),
)
def authz_principals(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.spec is not None:
        yield from _from_spec(ctx.spec, ctx.plan)
        return
    ctx.require_docs()
    for docs in ctx.scopes().values():
        root = root_namespace(docs)
        ingresses = [w for w in gateway_workloads(docs) if w.role == "ingress"]
        for policy in istio(docs, "AuthorizationPolicy"):
            if action(policy) != "ALLOW":
                continue
            at_ingress = any(selects_workload(policy, w, root) for w in ingresses)
            for i, rule in enumerate(as_list(policy.spec.get("rules"))):
                yield from _rule(policy, i, as_dict(rule), at_ingress)


def _rule(policy: Doc, i: int, rule: Obj, at_ingress: bool) -> Iterator[Hit]:
    """Broad principals anywhere; at an ingress also rules that do not name callers at all."""
    sources = as_list(rule.get("from"))
    if at_ingress and rule and not sources:
        yield Hit(
            Severity.HIGH,
            f"rule {i} of {policy.name} has no source: any caller that reaches the ingress "
            "matches it",
            policy.at("spec", "rules", i),
        )
    for j, source in enumerate(sources):
        src = as_dict(as_dict(source).get("source"))
        for k, principal in enumerate(str_list(src.get("principals"))):
            found = classify(principal)
            if found is not None:
                yield Hit(
                    found[0],
                    f"{policy.name} allows principal {principal!r}: {found[1]}",
                    policy.at("spec", "rules", i, "from", j, "source", "principals", k),
                )
        if at_ingress and not (src.get("principals") or src.get("requestPrincipals")):
            only_negative = " (only notPrincipals: everyone else is allowed)"
            yield Hit(
                Severity.HIGH,
                f"rule {i} of {policy.name} does not name the callers' principals"
                + (only_negative if "notPrincipals" in src else ""),
                policy.at("spec", "rules", i, "from", j),
            )
