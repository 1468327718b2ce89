"""A federation gateway must name what it lets through: no ``*`` / ``*.local`` hosts, and no
AUTO_PASSTHROUGH (which forwards callers straight to in-mesh services by SNI)."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext
from meshfed.audit.istio import control_plane_only, istio
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.yamlsrc import as_dict, as_list, as_str, str_list


def _bare(host: str) -> str:
    """A Gateway host without its ``namespace/`` prefix."""
    return host.partition("/")[2] if "/" in host else host


def internal_wildcard(host: str) -> bool:
    """``*`` or a wildcard over mesh-internal names (``*.local``, ``*.svc.cluster.local``)."""
    h = _bare(host)
    if h == "*":
        return True
    return h.startswith("*") and (h.endswith(".local") or h.endswith(".svc") or ".svc." in h)


@check(
    "gateway-wildcard-host",
    title="Gateways expose only named hosts",
    severity=Severity.CRITICAL,
    why="A gateway host '*' or '*.local' (or AUTO_PASSTHROUGH, which routes by SNI straight to "
    "in-mesh services) exposes services nobody decided to export, and AUTO_PASSTHROUGH also "
    "skips the gateway's own mTLS termination and authorization.",
    fix="List each exported host (SNI) explicitly on the Gateway and terminate mTLS there "
    "(tls.mode MUTUAL); never use '*', '*.local' or AUTO_PASSTHROUGH on a federation gateway.",
    controls=(
        "SC-7",
        "SC-7(11)",
        "SC-7(21)",
        "PCI 1.2.5",
        "PCI 1.3.1",
        "PCI 1.4.2",
        "PCI 1.4.4",
    ),
)
def gateway_wildcard_host(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    for gw in istio(ctx.docs, "Gateway"):
        if control_plane_only(gw, ctx.docs):
            yield Hit(
                Severity.LOW,
                "passes TLS through to istiod only (primary-remote): remotes dial it by IP, "
                "so it cannot name hosts; limit who can reach it (loadBalancerSourceRanges)",
                gw.at("spec", "servers"),
            )
            continue
        for i, server in enumerate(as_list(gw.spec.get("servers"))):
            server = as_dict(server)
            hosts = str_list(server.get("hosts"))
            mode = as_str(as_dict(server.get("tls")).get("mode")) or ""
            if mode == "AUTO_PASSTHROUGH":
                internal = [h for h in hosts if internal_wildcard(h)]
                yield Hit(
                    Severity.CRITICAL if internal else Severity.HIGH,
                    f"server {i} uses AUTO_PASSTHROUGH"
                    + (f" for {', '.join(internal)}" if internal else "")
                    + ": callers reach in-mesh services by SNI, past the gateway's "
                    "authorization",
                    gw.at("spec", "servers", i, "tls", "mode"),
                )
                continue
            for j, host in enumerate(hosts):
                if internal_wildcard(host):
                    yield Hit(
                        Severity.HIGH,
                        f"server {i} accepts host {host!r}: every service bound to the gateway "
                        "is reachable, including mesh-internal names",
                        gw.at("spec", "servers", i, "hosts", j),
                    )
                elif _bare(host).startswith("*"):
                    yield Hit(
                        Severity.MEDIUM,
                        f"server {i} accepts the wildcard host {host!r}",
                        gw.at("spec", "servers", i, "hosts", j),
                    )
