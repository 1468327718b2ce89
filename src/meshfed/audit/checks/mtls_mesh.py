"""No PeerAuthentication (or mesh setting) weakens mTLS anywhere in the mesh: at mesh,
namespace, workload or port level, and no workload of the tree is left at Istio's PERMISSIVE
default.

The namespaces where federated traffic lands are judged by ``peer-authentication-strict``; this
check covers the rest of the mesh, and the mesh-wide policy everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.attach import Attachment, attachment, mesh_pods
from meshfed.audit.checks.mtls import federation_namespaces
from meshfed.audit.context import AuditContext
from meshfed.audit.install import mesh_configs, root_namespace
from meshfed.audit.istio import istio
from meshfed.audit.model import Severity
from meshfed.audit.peer_auth import competing, decide, mode_of, port_modes
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc

# (mode, scope rank) -> severity: the wider the scope, the worse.
_MODE_SEVERITY = {
    ("DISABLE", 3): Severity.CRITICAL,
    ("DISABLE", 2): Severity.CRITICAL,
    ("DISABLE", 1): Severity.HIGH,
    ("PERMISSIVE", 3): Severity.HIGH,
    ("PERMISSIVE", 2): Severity.HIGH,
    ("PERMISSIVE", 1): Severity.MEDIUM,
}
_MEANS = {
    "DISABLE": "plaintext only: no mTLS, no peer identity",
    "PERMISSIVE": "plaintext accepted beside mTLS",
}


def _policy(pa: Doc, scope: Attachment) -> Iterator[Hit]:
    mode = mode_of(pa)
    if scope.level == "ignored":
        if mode == "STRICT":
            yield Hit(
                Severity.MEDIUM,
                f"{pa.name} asks for STRICT on workloads "
                f"{', '.join(f'{k}={v}' for k, v in scope.labels)}, but Istio ignores "
                f"PeerAuthentication with a selector in the root namespace {scope.root}: these "
                "workloads are not made STRICT by it",
                pa.at("spec", "selector"),
                fix="Move the policy into the workloads' own namespace (a selector policy "
                "applies only there), or drop the selector to make it mesh-wide.",
            )
        return
    if scope.level == "mesh" and mode is None:
        yield Hit(
            Severity.HIGH,
            f"the mesh-wide PeerAuthentication {pa.namespace}/{pa.name} sets no mode: Istio "
            "treats it as PERMISSIVE (plaintext accepted everywhere no policy overrides it)",
            pa.at("spec", "mtls") if "mtls" in pa.spec else pa.at("spec"),
        )
    elif mode is not None and (mode, scope.rank) in _MODE_SEVERITY:
        yield Hit(
            _MODE_SEVERITY[(mode, scope.rank)],
            f"{pa.name} sets mTLS {mode} for {scope.describe()}: {_MEANS[mode]}",
            pa.at("spec", "mtls", "mode"),
        )
    for port, port_mode in port_modes(pa):
        if port_mode in _MEANS:
            yield Hit(
                Severity.HIGH if port_mode == "DISABLE" else Severity.MEDIUM,
                f"{pa.name} sets mTLS {port_mode} on workload port {port} of "
                f"{scope.describe()}: {_MEANS[port_mode]}",
                pa.at("spec", "portLevelMtls", port),
            )


def _unprotected(docs: list[Doc], root: str, skip: set[str]) -> Iterator[Hit]:
    """Namespaces whose workloads no PeerAuthentication reaches at all (Istio's default)."""
    pas = istio(docs, "PeerAuthentication")
    seen: set[str] = set()
    for pod in mesh_pods(docs):
        if pod.namespace in skip or pod.namespace in seen:
            continue
        decision = decide(pas, root, pod.namespace, pod.labels)
        if decision.by is None:
            seen.add(pod.namespace)
            yield Hit(
                Severity.MEDIUM,
                f"no PeerAuthentication in this tree applies to {pod.describe()} (nor mesh-wide "
                f"in {root}): Istio's default PERMISSIVE accepts plaintext",
                pod.doc.at(),
                fix="Add a mesh-wide PeerAuthentication (mtls.mode STRICT, no selector) in the "
                f"root namespace {root}, or one in namespace {pod.namespace}.",
            )


@check(
    "mtls-mesh-wide",
    title="mTLS is not weakened anywhere in the mesh",
    severity=Severity.CRITICAL,
    why="Every PERMISSIVE or DISABLE setting, at any level (mesh, namespace, workload, port), "
    "lets plaintext in: traffic there is neither encrypted nor authenticated, and "
    "authorization on principals or namespaces can be bypassed by a caller that skips mTLS. "
    "A mesh-wide setting reaches every namespace that does not override it.",
    fix="Make mTLS STRICT mesh-wide (a PeerAuthentication without selector in the root "
    "namespace) and remove the PERMISSIVE/DISABLE exceptions, or scope them to the single "
    "port that needs plaintext.",
    controls=("SC-8", "SC-8(1)", "IA-3", "IA-9", "PCI 4.2.1"),
)
def mtls_mesh_wide(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    for docs in ctx.scopes().values():
        root = root_namespace(docs)
        federated = set(federation_namespaces(docs)) - {root}
        pas = istio(docs, "PeerAuthentication")
        for pa in pas:
            if pa.namespace not in federated:
                yield from _policy(pa, attachment(pa, root))
        for group in competing(pas, root):
            if group[0].namespace in federated:
                continue
            names = ", ".join(f"{p.name} ({mode_of(p) or 'UNSET'})" for p in group)
            yield Hit(
                Severity.MEDIUM,
                f"{len(group)} PeerAuthentications without selector in namespace "
                f"{group[0].namespace} disagree ({names}): istiod uses only the oldest and "
                "ignores the others",
                group[1].at("spec"),
                fix="Keep one PeerAuthentication without selector per namespace.",
            )
        yield from _unprotected(docs, root, federated)
        for cfg in mesh_configs(docs):
            if cfg.config.get("enableAutoMtls") is False:
                yield Hit(
                    Severity.MEDIUM,
                    f"enableAutoMtls is false in {cfg.source}: clients send plaintext to every "
                    "service without a DestinationRule setting ISTIO_MUTUAL, which "
                    "PERMISSIVE workloads accept",
                    cfg.at("enableAutoMtls"),
                    fix="Remove meshConfig.enableAutoMtls: false (Istio's default is true).",
                )
