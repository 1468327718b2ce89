"""A federation ingress denies everything it does not explicitly allow.

In Istio, a workload that no ALLOW policy selects accepts every request; once any ALLOW policy
selects it (even one without rules, "allow-nothing"), only requests some rule matches pass. A
policy in dry-run (``istio.io/dry-run: "true"``) is only logged, so it counts for nothing here.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.attach import dry_run
from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.install import root_namespace
from meshfed.audit.istio import action, gateway_workloads, istio, selects_workload
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import as_list


def _denies_all(policy: Doc) -> bool:
    return action(policy) == "DENY" and any(
        rule == {} for rule in as_list(policy.spec.get("rules"))
    )


@check(
    "ingress-deny-by-default",
    title="Federation ingress is deny-all by default",
    severity=Severity.CRITICAL,
    why="An ingress gateway that no ALLOW AuthorizationPolicy selects lets every caller through "
    "to every route bound to it; an ALLOW rule that is empty matches every request. Access "
    "must be denied by default and allowed by exception.",
    fix="Add an ALLOW AuthorizationPolicy without rules (allow-nothing) selecting the ingress "
    "gateway, then one ALLOW policy per exported host naming exactly the allowed principals.",
    controls=("SC-7", "SC-7(5)", "SC-7(11)", "AC-4", "PCI 1.3.1", "PCI 1.4.1", "PCI 1.4.2"),
)
def ingress_deny_by_default(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    found = False
    for docs in ctx.scopes().values():
        root = root_namespace(docs)
        policies = istio(docs, "AuthorizationPolicy")
        for workload in gateway_workloads(docs):
            if workload.role != "ingress":
                continue
            found = True
            applying = [
                p for p in policies if selects_workload(p, workload, root) and not dry_run(p)
            ]
            if not any(action(p) == "ALLOW" or _denies_all(p) for p in applying):
                yield Hit(
                    Severity.CRITICAL,
                    f"no ALLOW AuthorizationPolicy selects the {workload.describe()}: it "
                    "accepts every request",
                    workload.location(),
                )
            for policy in applying:
                if action(policy) != "ALLOW":
                    continue
                for i, rule in enumerate(as_list(policy.spec.get("rules"))):
                    if rule == {} or rule is None:
                        yield Hit(
                            Severity.CRITICAL,
                            f"rule {i} of ALLOW policy {policy.name} is empty: it allows every "
                            f"request to the {workload.describe()}",
                            policy.at("spec", "rules", i),
                            fix="Give the rule a source (principals), and the host and "
                            "operations it allows, or remove it.",
                        )
    if not found:
        raise NotAssessed("no federation ingress gateway found")
