"""Authorization policies are enforced as written, in Istio's order.

istiod evaluates CUSTOM policies first, then DENY, then ALLOW; AUDIT decides nothing. What
quietly fails to enforce:

- ``istio.io/dry-run: "true"``: the policy is only evaluated and logged (shadow rules);
- a DENY rule that matches callers by identity (principals, namespaces, service accounts, trust
  domains) where mTLS is not STRICT: a plaintext caller has no identity, so the rule never
  matches it and the request goes on to the ALLOW policies;
- a CUSTOM policy whose provider fails open (``failOpen: true``): when the external
  authorizer is down or answers 5xx, requests pass; a provider the mesh config does not define
  makes istiod deny what the policy matches (fail closed);
- AUDIT: only marks requests for an audit plugin.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.attach import Attachment, attachment, dry_run, mesh_pods
from meshfed.audit.authz import names_identity, sources
from meshfed.audit.context import AuditContext
from meshfed.audit.install import MeshConfig, mesh_configs, root_namespace
from meshfed.audit.istio import action, istio
from meshfed.audit.model import Severity
from meshfed.audit.peer_auth import decide
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, dig

_PROVIDER_KINDS = ("envoyExtAuthzHttp", "envoyExtAuthzGrpc")


def _not_strict(docs: list[Doc], root: str, scope: Attachment) -> str | None:
    """Where in the policy's scope mTLS is not STRICT (as Istio composes it), or None."""
    pas = istio(docs, "PeerAuthentication")
    if scope.level == "targets":
        return None  # gateways: judged by gateway-tls
    if scope.level == "mesh":
        decision = decide(pas, root, root)
        return None if decision.strict else f"the mesh default is {decision.mode}"
    reached = [p for p in mesh_pods(docs) if scope.reaches(p.namespace, p.labels)]
    for pod in reached:
        decision = decide(pas, root, pod.namespace, pod.labels)
        if not decision.strict:
            return f"{pod.describe()} accepts {decision.mode} traffic"
    if not reached and scope.level != "ignored":
        decision = decide(pas, root, scope.namespace)
        if not decision.strict:
            return f"namespace {scope.namespace} is {decision.mode}"
    return None


def _providers(configs: list[MeshConfig]) -> dict[str, tuple[MeshConfig, int, Obj]]:
    out: dict[str, tuple[MeshConfig, int, Obj]] = {}
    for cfg in configs:
        for i, provider in enumerate(as_list(cfg.config.get("extensionProviders"))):
            name = as_str(as_dict(provider).get("name"))
            if name:
                out.setdefault(name, (cfg, i, as_dict(provider)))
    return out


def _custom(policy: Doc, providers: dict[str, tuple[MeshConfig, int, Obj]]) -> Iterator[Hit]:
    name = as_str(dig(policy.spec, "provider", "name")) or ""
    if name not in providers:
        yield Hit(
            Severity.INFO,
            f"CUSTOM policy {policy.name} names provider {name!r}, which no meshConfig in the "
            "tree defines: istiod then denies every request the policy matches (fail closed)",
            policy.at("spec", "provider", "name"),
            fix="Define the provider in meshConfig.extensionProviders.",
        )
        return
    cfg, i, provider = providers[name]
    for kind in _PROVIDER_KINDS:
        if as_dict(provider.get(kind)).get("failOpen") is True:
            yield Hit(
                Severity.MEDIUM,
                f"CUSTOM policy {policy.name} delegates to provider {name}, which fails open "
                f"({kind}.failOpen in {cfg.source}): when the authorizer is unreachable or "
                "answers 5xx, the requests it should judge are allowed",
                cfg.at("extensionProviders", i, kind, "failOpen"),
                fix="Remove failOpen (Istio's default rejects the request when the authorizer "
                "fails).",
            )


def _policy(
    policy: Doc, docs: list[Doc], root: str, providers: dict[str, tuple[MeshConfig, int, Obj]]
) -> Iterator[Hit]:
    kind = action(policy)
    scope = attachment(policy, root)
    if dry_run(policy) and kind != "AUDIT":
        yield Hit(
            Severity.MEDIUM,
            f"{kind} policy {policy.name} ({scope.describe()}) is in dry-run (istio.io/dry-run): "
            "it is evaluated and logged, never enforced",
            policy.at("metadata", "annotations"),
            fix="Remove the istio.io/dry-run annotation once the policy is verified.",
        )
        return
    if kind == "AUDIT":
        yield Hit(
            Severity.INFO,
            f"AUDIT policy {policy.name} ({scope.describe()}) allows and denies nothing: it only "
            "marks requests for an audit plugin",
            policy.at("spec", "action"),
            fix="Use DENY (or ALLOW) to enforce; AUDIT only records.",
        )
    elif kind == "CUSTOM":
        yield from _custom(policy, providers)
    elif kind == "DENY":
        rules = as_list(policy.spec.get("rules"))
        by_identity = [
            i for i, rule in enumerate(rules) if any(names_identity(s) for s in sources(rule))
        ]
        gap = _not_strict(docs, root, scope) if by_identity else None
        if gap is not None:
            yield Hit(
                Severity.MEDIUM,
                f"DENY policy {policy.name} matches callers by identity (rule "
                f"{', '.join(map(str, by_identity))}) but {gap}: a plaintext caller has no "
                "identity, so the rule never matches it",
                policy.at("spec", "rules", by_identity[0]),
                fix="Make mTLS STRICT where the policy applies, or deny by exclusion "
                "(notPrincipals) so that callers without an identity are denied too.",
            )


@check(
    "authz-enforced",
    title="Authorization policies are enforced as written",
    severity=Severity.MEDIUM,
    why="Istio evaluates CUSTOM, then DENY, then ALLOW; a policy in dry-run, a DENY on "
    "identities that plaintext callers (no identity) slip past, or an external authorizer "
    "that fails open looks like protection in review and enforces nothing when it matters.",
    fix="Enforce policies (no istio.io/dry-run), keep mTLS STRICT where DENY rules name "
    "identities, and let external authorizers fail closed.",
    controls=("AC-3", "AC-4", "SC-7(5)", "PCI 1.2.1"),
)
def authz_enforced(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    for docs in ctx.scopes().values():
        root = root_namespace(docs)
        providers = _providers(mesh_configs(docs))
        for policy in istio(docs, "AuthorizationPolicy"):
            yield from _policy(policy, docs, root, providers)
