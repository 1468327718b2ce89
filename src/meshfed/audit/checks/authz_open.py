"""No ALLOW policy opens more than it names, at any scope.

Istio ORs every ALLOW policy that applies to a workload -- mesh-wide (root namespace), its
namespace's, and those selecting it -- so one broad ALLOW at a wide scope widens every narrower
one: a rule matching every request in the root namespace makes every workload of the mesh accept
every request, whatever their own policies allow. Rules that match callers only by exclusion
(``notPrincipals``, ``notNamespaces``, ...) match plaintext callers too, which carry no identity.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.attach import Attachment, attachment, dry_run
from meshfed.audit.authz import (
    NEGATIVE_OPERATION,
    NEGATIVE_SOURCE,
    POSITIVE_OPERATION,
    POSITIVE_SOURCE,
    conditions_name_caller,
    empty_rule,
    matches_everyone,
    negative_only,
    operations,
    sources,
)
from meshfed.audit.context import AuditContext
from meshfed.audit.install import root_namespace
from meshfed.audit.istio import action, gateway_workloads, istio, selects_workload
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import as_list

_EVERYTHING = {3: Severity.CRITICAL, 2: Severity.HIGH, 1: Severity.MEDIUM}
_NO_SOURCE = {3: Severity.HIGH, 2: Severity.MEDIUM}


def _widens(scope: Attachment) -> str:
    if scope.level == "mesh":
        return " (a mesh-wide ALLOW is ORed with every workload's own ALLOW policies)"
    if scope.level == "namespace":
        return f" (ORed with the ALLOW policies of every workload in {scope.namespace})"
    return ""


def _policy(policy: Doc, scope: Attachment, at_ingress: bool) -> Iterator[Hit]:
    for i, rule in enumerate(as_list(policy.spec.get("rules"))):
        where = policy.at("spec", "rules", i)
        if empty_rule(rule):
            if not at_ingress:  # ingress-deny-by-default reports those at an ingress
                yield Hit(
                    _EVERYTHING[scope.rank],
                    f"rule {i} of ALLOW policy {policy.name} is empty: every request to "
                    f"{scope.describe()} is allowed{_widens(scope)}",
                    where,
                    fix="Give the rule the sources (principals), hosts and operations it "
                    "allows, or remove it.",
                )
            continue
        found = sources(rule)
        if not found and scope.rank in _NO_SOURCE and not conditions_name_caller(rule):
            yield Hit(
                _NO_SOURCE[scope.rank],
                f"rule {i} of ALLOW policy {policy.name} names no source: what it allows is "
                f"open to every caller of {scope.describe()}, plaintext ones "
                f"included{_widens(scope)}",
                where,
                fix="Add from.source.principals (or namespaces) to the rule.",
            )
        for j, source in enumerate(found):
            at = policy.at("spec", "rules", i, "from", j, "source")
            negative = negative_only(source, POSITIVE_SOURCE, NEGATIVE_SOURCE)
            if negative and not at_ingress:  # authz-principals reports those at an ingress
                yield Hit(
                    Severity.HIGH,
                    f"rule {i} of {policy.name} matches callers only by exclusion "
                    f"({', '.join(negative)}): every other caller of {scope.describe()} is "
                    "allowed, plaintext callers (no identity) included",
                    at,
                    fix="Allow with positive matches (principals, namespaces); keep not* "
                    "fields for DENY policies.",
                )
            everyone = matches_everyone(source)
            if everyone:
                yield Hit(
                    Severity.HIGH,
                    f"rule {i} of {policy.name}: {everyone} ({scope.describe()})",
                    at,
                )
        for k, operation in enumerate(operations(rule)):
            negative = negative_only(operation, POSITIVE_OPERATION, NEGATIVE_OPERATION)
            if negative:
                yield Hit(
                    Severity.LOW,
                    f"rule {i} of {policy.name} allows operations only by exclusion "
                    f"({', '.join(negative)}): every new path, method or port is allowed too",
                    policy.at("spec", "rules", i, "to", k, "operation"),
                    fix="List the allowed paths and methods (ALLOW with positive matching, as "
                    "Istio's security best practices recommend).",
                )


@check(
    "authz-allow-open",
    title="No ALLOW policy opens more than it names, at any scope",
    severity=Severity.CRITICAL,
    why="ALLOW policies are ORed across mesh, namespace and workload scope: one rule that "
    "matches every request, every caller, or callers only by exclusion opens every workload "
    "in its scope, whatever the narrower policies there allow, and matches plaintext callers "
    "too.",
    fix="Write ALLOW rules with positive matches (principals or namespaces, operations), keep "
    "the root namespace for deny-by-default baselines, and scope broad rules to the one "
    "workload that needs them.",
    controls=("SC-7(5)", "AC-3", "AC-4", "AC-6", "PCI 1.3.1"),
)
def authz_allow_open(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    for docs in ctx.scopes().values():
        root = root_namespace(docs)
        ingresses = [w for w in gateway_workloads(docs) if w.role == "ingress"]
        for policy in istio(docs, "AuthorizationPolicy"):
            if action(policy) != "ALLOW" or dry_run(policy):
                continue  # authz-enforced reports policies in dry-run
            scope = attachment(policy, root)
            at_ingress = scope.rank < 2 and any(
                selects_workload(policy, w, root) for w in ingresses
            )
            yield from _policy(policy, scope, at_ingress)
