"""Every federation gateway logs every crossing (Telemetry accessLogging, or meshConfig's
accessLogFile)."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.install import mesh_configs, root_namespace
from meshfed.audit.istio import GatewayWorkload, gateway_workloads, istio, selects_workload
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import as_dict, as_list, as_str, dig


def _logging(telemetry: Doc) -> bool | None:
    """True: logs; False: disables logging; None: says nothing about access logs."""
    entries = [as_dict(e) for e in as_list(telemetry.spec.get("accessLogging"))]
    if not entries:
        return None
    return not all(e.get("disabled") is True for e in entries)


def _decision(docs: list[Doc], workload: GatewayWorkload) -> bool | None:
    """The most specific Telemetry wins: workload, then namespace, then mesh-wide."""
    root = root_namespace(docs)
    telemetry = [t for t in istio(docs, "Telemetry") if selects_workload(t, workload, root)]

    def level(t: Doc) -> int:
        selected = bool(dig(t.spec, "selector", "matchLabels"))
        if t.namespace == workload.namespace:
            return 0 if selected else 1
        return 2

    for rank in (0, 1, 2):
        decisions = [_logging(t) for t in telemetry if level(t) == rank]
        decided = [d for d in decisions if d is not None]
        if decided:
            return any(decided)
    return None


@check(
    "gateway-access-logging",
    title="Federation gateways log every crossing",
    severity=Severity.HIGH,
    why="Without access logs at the boundary nobody can tell who called what across it, "
    "detect misuse, or give auditors the record of boundary traffic.",
    fix="Add a Telemetry selecting the gateway with accessLogging (e.g. provider envoy), or set "
    "meshConfig.accessLogFile.",
    controls=("SC-7", "AU-2", "AU-12", "PCI 10.2.1"),
)
def gateway_access_logging(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    found = False
    for docs in ctx.scopes().values():
        log_file = any(as_str(cfg.config.get("accessLogFile")) for cfg in mesh_configs(docs))
        for workload in gateway_workloads(docs):
            found = True
            decision = _decision(docs, workload)
            if decision is False:
                yield Hit(
                    Severity.HIGH,
                    f"a Telemetry disables access logging at the {workload.describe()}",
                    workload.location(),
                )
            elif decision is None and not log_file:
                yield Hit(
                    Severity.HIGH,
                    f"no access logging at the {workload.describe()}",
                    workload.location(),
                )
    if not found:
        raise NotAssessed("no federation gateway found")
