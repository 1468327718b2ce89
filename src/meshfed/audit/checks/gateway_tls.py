"""Traffic crossing a gateway is encrypted, and the federation ingress authenticates callers."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.attach import dry_run
from meshfed.audit.authz import names_identity, sources
from meshfed.audit.context import AuditContext
from meshfed.audit.install import root_namespace
from meshfed.audit.istio import (
    GatewayWorkload,
    action,
    control_plane_only,
    gateway_workloads,
    istio,
    selects_workload,
)
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str

_WEAK_VERSIONS = ("TLSV1_0", "TLSV1_1")
_TLS_PROTOCOLS = ("HTTPS", "TLS")
_PUBLIC_SEVERITY = {
    "SIMPLE": Severity.INFO,
    "OPTIONAL_MUTUAL": Severity.LOW,
    "PASSTHROUGH": Severity.MEDIUM,
}
_UNAUTHENTICATED = {
    "SIMPLE": "callers need not present a certificate, so the ingress cannot authenticate them",
    "OPTIONAL_MUTUAL": "a client certificate is optional, so unauthenticated callers get in",
    "PASSTHROUGH": "the ingress does not terminate TLS, so it can neither authenticate callers "
    "nor enforce who may call what",
}


_FEDERATION_NAMES = ("federation", "eastwest", "east-west", "cross-network", "crossnetwork")
MESH_TO_MESH_PORT = 15443
"""The port Istio's multi-network gateways (and meshfed's federation ingress) listen on."""


def needs_mutual(workload: GatewayWorkload, docs: list[Doc], root: str) -> str | None:
    """Why callers of this gateway must present a client certificate, or None: it is a
    federation / east-west gateway, or its authorization names callers by identity."""
    names = [workload.name, *workload.labels.values(), *(g.name for g in workload.gateways)]
    named = next((n for n in names if any(f in n.lower() for f in _FEDERATION_NAMES)), None)
    if named is not None:
        return f"{named!r} is a federation or east-west gateway"
    for policy in istio(docs, "AuthorizationPolicy"):
        if action(policy) not in ("ALLOW", "DENY") or dry_run(policy):
            continue
        if not selects_workload(policy, workload, root):
            continue
        rules = as_list(policy.spec.get("rules"))
        if any(names_identity(s) for rule in rules for s in sources(rule)):
            return (
                f"{action(policy)} policy {policy.name} matches callers by identity, which only "
                "a client certificate gives"
            )
    return None


@check(
    "gateway-tls",
    title="Gateways encrypt and authenticate at the boundary",
    severity=Severity.HIGH,
    why="A plaintext gateway listener exposes the traffic crossing the boundary; a federation "
    "ingress, or one whose policies name callers by identity, that does not require client "
    "certificates cannot tell callers apart: ALLOW rules on principals never match and DENY "
    "rules on principals never fire.",
    fix="Use tls.mode MUTUAL (credentialName with the allowed callers' roots) on the federation "
    "ingress, PASSTHROUGH or ISTIO_MUTUAL on the egress, httpsRedirect on plain HTTP servers, "
    "and TLS 1.2 or newer.",
    controls=("SC-8", "SC-8(1)", "IA-3", "IA-9", "PCI 4.2.1"),
)
def gateway_tls(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    seen: set[int] = set()
    for docs in ctx.scopes().values():
        root = root_namespace(docs)
        for workload in gateway_workloads(docs):
            need = needs_mutual(workload, docs, root) if workload.role == "ingress" else None
            for gw in workload.gateways:
                if id(gw) in seen:
                    continue
                seen.add(id(gw))
                if control_plane_only(gw, docs):
                    continue  # istiod terminates and authenticates the remotes' mTLS itself
                for i, server in enumerate(as_list(gw.spec.get("servers"))):
                    server = as_dict(server)
                    port = as_dict(server.get("port")).get("number")
                    why = need or (
                        f"port {port} is the mesh-to-mesh port"
                        if workload.role == "ingress" and port == MESH_TO_MESH_PORT
                        else None
                    )
                    yield from _server(gw, i, server, workload.role, why)


def _plaintext(gw: Doc, i: int, server: Obj, protocol: str) -> Iterator[Hit]:
    tls = server.get("tls")
    if protocol == "HTTP" and as_dict(tls).get("httpsRedirect") is True:
        return
    redirect = " (httpsRedirect is off)" if protocol == "HTTP" and isinstance(tls, dict) else ""
    yield Hit(
        Severity.HIGH,
        f"server {i} ({protocol or 'no protocol'}) listens in plaintext{redirect}",
        gw.at("spec", "servers", i, "tls", "httpsRedirect")
        if redirect
        else gw.at("spec", "servers", i, "port"),
    )


def _server(gw: Doc, i: int, server: Obj, role: str, need: str | None) -> Iterator[Hit]:
    tls = as_dict(server.get("tls"))
    protocol = (as_str(as_dict(server.get("port")).get("protocol")) or "").upper()
    if protocol not in _TLS_PROTOCOLS and not (protocol == "" and tls.get("mode")):
        yield from _plaintext(gw, i, server, protocol)
        return
    if not isinstance(server.get("tls"), dict):
        return  # TLS without settings is rejected by Istio's validation
    mode = as_str(tls.get("mode")) or "PASSTHROUGH"  # Istio's default TLS mode
    if role == "ingress" and mode in _UNAUTHENTICATED:
        if need is not None:
            yield Hit(
                Severity.HIGH,
                f"server {i} uses tls.mode {mode} where MUTUAL is needed ({need}): "
                f"{_UNAUTHENTICATED[mode]}",
                gw.at("spec", "servers", i, "tls", "mode"),
            )
        else:
            yield Hit(
                _PUBLIC_SEVERITY[mode],
                f"server {i} uses tls.mode {mode}: {_UNAUTHENTICATED[mode]}"
                + (
                    " (fine for a public HTTPS ingress, not for a mesh boundary)"
                    if mode == "SIMPLE"
                    else ""
                ),
                gw.at("spec", "servers", i, "tls", "mode"),
            )
    for field in ("minProtocolVersion", "maxProtocolVersion"):
        version = as_str(tls.get(field))
        if version in _WEAK_VERSIONS:
            yield Hit(
                Severity.MEDIUM,
                f"server {i} {'accepts' if field.startswith('min') else 'is capped at'} "
                f"{version}, which is no longer strong cryptography",
                gw.at("spec", "servers", i, "tls", field),
                fix="Set minProtocolVersion to TLSV1_2 or TLSV1_3 (and no maxProtocolVersion "
                "below TLSV1_2).",
            )
