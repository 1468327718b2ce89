"""Sidecars reach only registered destinations (outboundTrafficPolicy REGISTRY_ONLY), so leaving
the mesh means going through the federation egress gateway."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.istio import mesh_configs
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.yamlsrc import as_dict, as_str


@check(
    "egress-registry-only",
    title="Outbound traffic is restricted to registered destinations",
    severity=Severity.MEDIUM,
    why="With outboundTrafficPolicy ALLOW_ANY (Istio's default) every workload can open "
    "connections to any external address directly, bypassing the egress gateway, its SNI "
    "allow-list and its access log.",
    fix="Set meshConfig.outboundTrafficPolicy.mode: REGISTRY_ONLY (and add ServiceEntries for "
    "the external services workloads legitimately need).",
    controls=("SC-7(5)", "SC-7(8)", "PCI 1.3.2"),
)
def egress_registry_only(ctx: AuditContext) -> Iterator[Hit]:
    scopes = {scope: mesh_configs(docs) for scope, docs in sorted(ctx.scopes().items())}
    scopes = {scope: configs for scope, configs in scopes.items() if configs}
    if not scopes:
        raise NotAssessed(
            ctx.docs_note if not ctx.docs else "no meshConfig (IstioOperator or istio ConfigMap)"
        )
    for scope, configs in scopes.items():
        modes = [
            (cfg, as_str(as_dict(cfg.config.get("outboundTrafficPolicy")).get("mode")))
            for cfg in configs
        ]
        if any(mode == "REGISTRY_ONLY" for _, mode in modes):
            continue
        cfg, mode = next(((c, m) for c, m in modes if m), modes[0])
        yield Hit(
            Severity.MEDIUM,
            f"{ctx.scope_name(scope)}: outboundTrafficPolicy is "
            f"{mode or 'not set (ALLOW_ANY)'}: workloads may bypass the egress gateway",
            cfg.at("outboundTrafficPolicy"),
        )
