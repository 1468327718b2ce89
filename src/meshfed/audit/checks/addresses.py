"""No private addresses in what crosses the boundary: where peers reach a mesh's ingress and
where a mesh sends its federated traffic (RFC 1918 and similar; loopback in production)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.istio import istio, of_kind
from meshfed.audit.model import Location, Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import as_dict, as_list, as_str, str_list

_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_LINK_LOCAL = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10"))


def classify(address: str, production: bool) -> tuple[Severity, str] | None:
    """Why an address must not be at the boundary, or None."""
    if address == "localhost":
        return (Severity.HIGH, "loopback") if production else None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None  # a DNS name: not judged here
    if ip.is_loopback:
        return (Severity.HIGH, "a loopback address") if production else None
    if any(ip in net for net in _LINK_LOCAL if net.version == ip.version):
        return Severity.HIGH, "a link-local address"
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return Severity.MEDIUM, "a private (internal) address"
    return None


def _spec_addresses(ctx: AuditContext) -> list[tuple[str, Location, str]]:
    assert ctx.spec is not None
    out = []
    for i, mesh in ctx.spec.meshes():
        address = as_str(as_dict(mesh.get("ingress")).get("address"))
        if address:
            out.append(
                (
                    address,
                    ctx.spec.at("spec", "meshes", i, "ingress", "address"),
                    f"ingress address of mesh {mesh.get('name')}",
                )
            )
    return out


def _doc_addresses(docs: tuple[Doc, ...]) -> list[tuple[str, Location, str]]:
    out: list[tuple[str, Location, str]] = []
    for se in istio(docs, "ServiceEntry"):
        if as_str(se.spec.get("location")) != "MESH_EXTERNAL":
            continue
        for i, endpoint in enumerate(as_list(se.spec.get("endpoints"))):
            address = as_str(as_dict(endpoint).get("address"))
            if address:
                out.append((address, se.at("spec", "endpoints", i, "address"), "remote endpoint"))
    for svc in of_kind(docs, "Service"):
        spec = svc.spec
        lb = as_str(spec.get("loadBalancerIP"))
        if lb:
            out.append((lb, svc.at("spec", "loadBalancerIP"), "load balancer address"))
        for i, ip in enumerate(str_list(spec.get("externalIPs"))):
            out.append((ip, svc.at("spec", "externalIPs", i), "external IP"))
        ingress = as_list(as_dict(as_dict(svc.get("status")).get("loadBalancer")).get("ingress"))
        for i, item in enumerate(ingress):
            status_ip = as_str(as_dict(item).get("ip"))
            if status_ip:
                path = ("status", "loadBalancer", "ingress", i, "ip")
                out.append((status_ip, svc.at(*path), "load balancer address"))
    for gw in docs:
        if gw.kind == "Gateway" and gw.group == "gateway.networking.k8s.io":
            for i, item in enumerate(as_list(gw.spec.get("addresses"))):
                value = as_str(as_dict(item).get("value"))
                if value:
                    out.append((value, gw.at("spec", "addresses", i), "gateway address"))
    return out


@check(
    "boundary-private-address",
    title="No internal addresses at the boundary",
    severity=Severity.HIGH,
    why="Internal addresses in what peers see or dial disclose the internal network layout to "
    "other security domains, and tie federation to networks outside the boundary's control; a "
    "loopback ingress in production means the spec describes a development setup.",
    fix="Publish the ingress on an address meant for peers (a public or dedicated "
    "interconnect address, or a DNS name) and use that address in the spec/ServiceEntries.",
    controls=("SC-7(16)", "PCI 1.4.5"),
)
def boundary_private_address(ctx: AuditContext) -> Iterator[Hit]:
    addresses = _spec_addresses(ctx) if ctx.spec is not None else _doc_addresses(ctx.docs)
    if not addresses:
        raise NotAssessed("no boundary addresses found")
    for address, location, what in addresses:
        found = classify(address, ctx.options.production)
        if found is not None:
            severity, kind = found
            yield Hit(severity, f"{what} {address} is {kind}", location)
