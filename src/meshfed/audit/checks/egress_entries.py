"""No ServiceEntry opens egress wider than the hosts it names.

Under REGISTRY_ONLY, every ServiceEntry is a hole in the outbound policy, and two kinds are far
wider than they look (Istio's ServiceEntry reference):

- ``resolution: NONE`` (the default) forwards to the address the caller connected to. On a TCP
  port without ``addresses`` the sidecar listens on ``0.0.0.0:<port>``: traffic to *any* IP on
  that port is allowed. On HTTP or TLS ports the Host header or SNI picks the entry, and the
  connection still goes to whatever IP the caller chose. Istio never auto-allocates an address
  for a NONE entry.
- wildcard hosts (``*.example.com``) allow every name under the domain.

An entry whose traffic a mesh-bound VirtualService routes elsewhere (an egress gateway, as
meshfed's imports do) opens nothing by itself and is not reported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from meshfed.audit.context import AuditContext
from meshfed.audit.istio import istio, route_destinations
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import as_dict, as_list, as_str, str_list

HOST_PROTOCOLS = ("HTTP", "HTTP2", "HTTPS", "GRPC", "GRPC-WEB", "TLS")
"""Protocols whose traffic carries the host (Host header or SNI) that picks the entry."""


def routed_away(host: str, docs: list[Doc]) -> bool:
    """A VirtualService bound to the sidecars routes this host, and none of its routes goes
    back to the host itself."""
    for vs in istio(docs, "VirtualService"):
        gateways = str_list(vs.spec.get("gateways"))
        if gateways and "mesh" not in gateways:
            continue
        if host not in str_list(vs.spec.get("hosts")):
            continue
        targets = [h for h, _ in route_destinations(vs)]
        if targets and host not in targets:
            return True
    return False


def _open_address(cidr: str) -> bool:
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return False


def _wildcard(entry: Doc, hosts: list[str]) -> Iterator[Hit]:
    for j, host in enumerate(hosts):
        if not host.startswith("*"):
            continue
        labels = host.removeprefix("*.").split(".")
        wide = len(labels) < 2
        yield Hit(
            Severity.HIGH if wide else Severity.MEDIUM,
            f"{entry.name} allows every host under {host.removeprefix('*')}"
            + (": a whole top-level domain" if wide else ""),
            entry.at("spec", "hosts", j),
            fix="List the external hosts by name.",
        )


def _resolution_none(entry: Doc) -> Iterator[Hit]:
    addresses = str_list(entry.spec.get("addresses"))
    if any(_open_address(a) for a in addresses):
        yield Hit(
            Severity.HIGH,
            f"{entry.name} has resolution NONE with the address range 0.0.0.0/0: traffic to "
            "every IP on its ports is allowed",
            entry.at("spec", "addresses"),
        )
        return
    if addresses:
        return
    for k, port in enumerate(as_list(entry.spec.get("ports"))):
        port = as_dict(port)
        number = port.get("number")
        protocol = (as_str(port.get("protocol")) or "TCP").upper()
        at = entry.at("spec", "ports", k)
        if protocol in HOST_PROTOCOLS:
            yield Hit(
                Severity.MEDIUM,
                f"{entry.name} has resolution NONE on {protocol} port {number}: the request "
                "goes to whatever IP the caller connected to, so any address is reachable with "
                "a Host header (or SNI) naming the entry",
                at,
                fix="Set resolution DNS (or STATIC with endpoints), so the sidecar picks the "
                "destination itself, or route the host through the egress gateway.",
            )
        else:
            yield Hit(
                Severity.HIGH,
                f"{entry.name} has resolution NONE on {protocol} port {number} without "
                f"addresses: the sidecar listens on 0.0.0.0:{number}, so traffic to every IP on "
                "that port is allowed",
                at,
                fix="Give the entry its addresses, or set resolution DNS or STATIC with "
                "endpoints, or route it through the egress gateway.",
            )


@check(
    "egress-service-entry-open",
    title="No ServiceEntry opens egress wider than the hosts it names",
    severity=Severity.HIGH,
    why="Under REGISTRY_ONLY each ServiceEntry is an allowed destination: one with resolution "
    "NONE (Istio's default) forwards to any IP the caller picks, on a TCP port without "
    "addresses to every IP on that port, and a wildcard host allows a whole domain: the "
    "outbound policy then restricts nothing there.",
    fix="Name external hosts exactly, resolve them with DNS or STATIC endpoints (or give NONE "
    "entries their addresses), and send them through the egress gateway.",
    controls=("SC-7(5)", "SC-7(8)", "AC-4", "PCI 1.3.2"),
)
def egress_service_entry_open(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    for docs in ctx.scopes().values():
        for entry in istio(docs, "ServiceEntry"):
            hosts = str_list(entry.spec.get("hosts"))
            if hosts and all(routed_away(h, docs) for h in hosts):
                continue
            yield from _wildcard(entry, hosts)
            resolution = as_str(entry.spec.get("resolution")) or "NONE"
            if resolution == "NONE":
                yield from _resolution_none(entry)
