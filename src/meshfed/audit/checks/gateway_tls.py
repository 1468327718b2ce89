"""Traffic crossing a gateway is encrypted, and the federation ingress authenticates callers."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext
from meshfed.audit.istio import control_plane_only, gateway_workloads
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str

_WEAK_VERSIONS = ("TLSV1_0", "TLSV1_1")
_TLS_PROTOCOLS = ("HTTPS", "TLS")
_UNAUTHENTICATED = {
    "SIMPLE": "callers need not present a certificate, so the ingress cannot authenticate them",
    "OPTIONAL_MUTUAL": "a client certificate is optional, so unauthenticated callers get in",
    "PASSTHROUGH": "the ingress does not terminate TLS, so it can neither authenticate callers "
    "nor enforce who may call what",
}


@check(
    "gateway-tls",
    title="Gateways encrypt and authenticate at the boundary",
    severity=Severity.HIGH,
    why="A plaintext gateway listener exposes the traffic crossing the boundary; an ingress "
    "that does not require client certificates cannot tell callers apart and cannot enforce "
    "per-workload authorization.",
    fix="Use tls.mode MUTUAL (credentialName with the allowed callers' roots) on the federation "
    "ingress, PASSTHROUGH or ISTIO_MUTUAL on the egress, and TLS 1.2 or newer.",
    controls=("SC-8", "SC-8(1)", "IA-3", "IA-9", "PCI 4.2.1"),
)
def gateway_tls(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    seen: set[int] = set()
    for docs in ctx.scopes().values():
        for workload in gateway_workloads(docs):
            for gw in workload.gateways:
                if id(gw) in seen:
                    continue
                seen.add(id(gw))
                if control_plane_only(gw, docs):
                    continue  # istiod terminates and authenticates the remotes' mTLS itself
                for i, server in enumerate(as_list(gw.spec.get("servers"))):
                    yield from _server(gw, i, as_dict(server), workload.role)


def _server(gw: Doc, i: int, server: Obj, role: str) -> Iterator[Hit]:
    tls = as_dict(server.get("tls"))
    protocol = (as_str(as_dict(server.get("port")).get("protocol")) or "").upper()
    mode = as_str(tls.get("mode")) or "PASSTHROUGH"  # Istio's default TLS mode
    if not isinstance(server.get("tls"), dict):
        if protocol in _TLS_PROTOCOLS:
            return  # TLS without settings is rejected by Istio's validation
        yield Hit(
            Severity.HIGH,
            f"server {i} ({protocol or 'no protocol'}) listens in plaintext",
            gw.at("spec", "servers", i, "port"),
        )
        return
    if tls.get("httpsRedirect") is True and protocol == "HTTP":
        return
    if role == "ingress" and mode in _UNAUTHENTICATED:
        yield Hit(
            Severity.MEDIUM,
            f"server {i} uses tls.mode {mode}: {_UNAUTHENTICATED[mode]}",
            gw.at("spec", "servers", i, "tls", "mode"),
        )
    version = as_str(tls.get("minProtocolVersion"))
    if version in _WEAK_VERSIONS:
        yield Hit(
            Severity.MEDIUM,
            f"server {i} accepts {version}, which is no longer strong cryptography",
            gw.at("spec", "servers", i, "tls", "minProtocolVersion"),
            fix="Set minProtocolVersion to TLSV1_2 or TLSV1_3.",
        )
