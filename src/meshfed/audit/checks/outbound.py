"""Sidecars reach only registered destinations (outboundTrafficPolicy REGISTRY_ONLY), so leaving
the mesh means going through the federation egress gateway.

The mesh default is ``meshConfig.outboundTrafficPolicy.mode`` (Istio's default: ALLOW_ANY); a
``Sidecar`` overrides it for the workloads it selects (``workloadSelector``), for its namespace
(no selector), or for every namespace without a Sidecar of its own (no selector, in the root
namespace). A Sidecar that sets ``egressProxy`` sends unknown traffic to that proxy instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.attach import attachment
from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.install import MeshConfig, mesh_configs, root_namespace
from meshfed.audit.istio import istio
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import as_dict, as_str

_OPEN = ("ALLOW_ANY", "ALLOW_ANY_DYNAMIC_DNS")


def _mesh(ctx: AuditContext, scope: str, configs: list[MeshConfig]) -> Iterator[Hit]:
    modes = [
        (cfg, as_str(as_dict(cfg.config.get("outboundTrafficPolicy")).get("mode")))
        for cfg in configs
    ]
    if any(mode == "REGISTRY_ONLY" for _, mode in modes):
        return
    cfg, mode = next(((c, m) for c, m in modes if m), modes[0])
    yield Hit(
        Severity.MEDIUM,
        f"{ctx.scope_name(scope)}: outboundTrafficPolicy is "
        f"{mode or 'not set (ALLOW_ANY)'}: workloads may bypass the egress gateway",
        cfg.at("outboundTrafficPolicy"),
    )


def _sidecar(sidecar: Doc, root: str) -> Iterator[Hit]:
    policy = as_dict(sidecar.spec.get("outboundTrafficPolicy"))
    mode = as_str(policy.get("mode"))
    if mode not in _OPEN or policy.get("egressProxy"):
        return
    scope = attachment(sidecar, root)
    reach = (
        f"every namespace without a Sidecar of its own (root namespace {root})"
        if scope.level == "mesh"
        else scope.describe()
    )
    yield Hit(
        Severity.MEDIUM,
        f"Sidecar {sidecar.name} sets outboundTrafficPolicy {mode} for {reach}: those "
        "workloads may connect anywhere, bypassing the egress gateway",
        sidecar.at("spec", "outboundTrafficPolicy", "mode"),
        fix="Set the Sidecar's outboundTrafficPolicy.mode to REGISTRY_ONLY (or remove it to "
        "inherit a REGISTRY_ONLY mesh config), or send unknown traffic through an egressProxy.",
    )


@check(
    "egress-registry-only",
    title="Outbound traffic is restricted to registered destinations",
    severity=Severity.MEDIUM,
    why="With outboundTrafficPolicy ALLOW_ANY (Istio's default) every workload can open "
    "connections to any external address directly, bypassing the egress gateway, its SNI "
    "allow-list and its access log.",
    fix="Set meshConfig.outboundTrafficPolicy.mode: REGISTRY_ONLY (and add ServiceEntries for "
    "the external services workloads legitimately need); no Sidecar may set ALLOW_ANY.",
    controls=("SC-7(5)", "SC-7(8)", "PCI 1.3.2"),
)
def egress_registry_only(ctx: AuditContext) -> Iterator[Hit]:
    assessed = False
    for scope, docs in sorted(ctx.scopes().items()):
        configs = mesh_configs(docs)
        sidecars = istio(docs, "Sidecar")
        assessed = assessed or bool(configs) or bool(sidecars)
        if configs:
            yield from _mesh(ctx, scope, configs)
        root = root_namespace(docs)
        for sidecar in sidecars:
            yield from _sidecar(sidecar, root)
    if not assessed:
        raise NotAssessed(
            ctx.docs_note
            if not ctx.docs
            else "no meshConfig (IstioOperator, Helm values, istio ConfigMap) and no Sidecar"
        )
