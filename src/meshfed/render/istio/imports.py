"""The consumer side: local names, routing through the egress gateway, failover."""

from __future__ import annotations

import ipaddress

from meshfed.plan.limits import FailoverPolicy
from meshfed.plan.model import EgressRoute, FederationPlan, ImportRoute, MeshPlan
from meshfed.plan.names import EGRESS_GATEWAY, EGRESS_PORT, GATEWAY_NAMESPACE, service_fqdn
from meshfed.render.istio.limits import failover_policy
from meshfed.render.istio.objects import Obj, obj, slug

EGRESS_HOST = service_fqdn(GATEWAY_NAMESPACE, EGRESS_GATEWAY)
FAILOVER_LABEL = "meshfed.dev/failover-{}"
"""Labels whose override values in ``failoverPriority`` encode the spec's failover order."""


def _subset(wire_host: str) -> str:
    return slug(wire_host)


def _local_entry(plan: FederationPlan, route: ImportRoute) -> Obj:
    """The local name consumers call. DNS capture with auto-allocation makes it resolvable."""
    return obj(
        "networking.istio.io/v1",
        "ServiceEntry",
        f"import-{slug(route.local_host, 56)}",
        plan.name,
        GATEWAY_NAMESPACE,
        spec={
            "hosts": [route.local_host],
            "location": "MESH_EXTERNAL",
            "resolution": "NONE",
            "ports": [
                {
                    "number": route.port,
                    "name": f"{route.protocol.lower()}-{route.port}",
                    "protocol": route.protocol,
                }
            ],
            "exportTo": ["*"],
        },
    )


def _local_route(plan: FederationPlan, route: ImportRoute) -> Obj:
    """Send the local name to the egress gateway, over the caller's own mTLS (subset)."""
    destination = {
        "destination": {
            "host": EGRESS_HOST,
            "port": {"number": EGRESS_PORT},
            "subset": _subset(route.wire_host),
        }
    }
    spec: Obj = {"hosts": [route.local_host], "gateways": ["mesh"], "exportTo": ["*"]}
    if route.protocol == "HTTP":
        spec["http"] = [
            {
                "name": "federated",
                "route": [destination],
                "rewrite": {"authority": route.wire_host},
                "retries": {"attempts": 2, "retryOn": "connect-failure,refused-stream,reset"},
            }
        ]
    else:
        spec["tcp"] = [{"match": [{"port": route.port}], "route": [destination]}]
    return obj(
        "networking.istio.io/v1",
        "VirtualService",
        f"import-{slug(route.local_host, 56)}",
        plan.name,
        GATEWAY_NAMESPACE,
        spec=spec,
    )


def _egress_subsets(plan: FederationPlan, mesh: MeshPlan) -> Obj:
    """Per wire host: the sidecar originates mTLS with its own workload certificate, the SNI
    of the export, and accepts only the exporting meshes' ingress gateway identities."""
    subsets = []
    for route in mesh.egress.routes:
        subsets.append(
            {
                "name": _subset(route.wire_host),
                "labels": {"istio": EGRESS_GATEWAY},
                "trafficPolicy": {
                    "tls": {
                        "mode": "ISTIO_MUTUAL",
                        "sni": route.wire_host,
                        "subjectAltNames": [s.ingress_spiffe_id for s in route.sources],
                    }
                },
            }
        )
    return obj(
        "networking.istio.io/v1",
        "DestinationRule",
        f"{EGRESS_GATEWAY}-imports",
        plan.name,
        GATEWAY_NAMESPACE,
        spec={"host": EGRESS_HOST, "exportTo": ["*"], "subsets": subsets},
    )


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _remote(plan: FederationPlan, route: EgressRoute, failover: FailoverPolicy) -> list[Obj]:
    """Where the egress gateway sends a wire host: the exporters' ingresses, in order.

    Endpoints carry no ``network``: Istio would treat them as behind an east-west gateway of
    that network and drop them, while they are plain addresses the egress gateway dials.
    """
    count = len(route.sources)
    endpoints = []
    for source in route.sources:
        endpoint_labels = {
            FAILOVER_LABEL.format(k): "yes" for k in range(count - 1 - source.priority)
        }
        endpoint_labels["meshfed.dev/mesh"] = source.mesh
        endpoint: Obj = {
            "address": source.address,
            "ports": {"tls": source.port},
            "labels": endpoint_labels,
        }
        endpoints.append(endpoint)
    destination = {"host": route.wire_host, "port": {"number": EGRESS_PORT}}
    resolution = "STATIC" if all(_is_ip(s.address) for s in route.sources) else "DNS"
    name = f"remote-{slug(route.wire_host, 56)}"
    traffic_policy: Obj = failover_policy(failover)
    if count > 1:
        traffic_policy["loadBalancer"] = {
            "simple": "ROUND_ROBIN",
            "localityLbSetting": {
                "enabled": True,
                "failoverPriority": [f"{FAILOVER_LABEL.format(k)}=yes" for k in range(count - 1)],
            },
        }
    return [
        obj(
            "networking.istio.io/v1",
            "ServiceEntry",
            name,
            plan.name,
            GATEWAY_NAMESPACE,
            spec={
                "hosts": [route.wire_host],
                "location": "MESH_EXTERNAL",
                "resolution": resolution,
                "ports": [{"number": EGRESS_PORT, "name": "tls", "protocol": "TLS"}],
                "endpoints": endpoints,
                "exportTo": ["."],
            },
        ),
        obj(
            "networking.istio.io/v1",
            "DestinationRule",
            name,
            plan.name,
            GATEWAY_NAMESPACE,
            spec={"host": route.wire_host, "exportTo": ["."], "trafficPolicy": traffic_policy},
        ),
        obj(
            "networking.istio.io/v1",
            "VirtualService",
            f"egress-{slug(route.wire_host, 56)}",
            plan.name,
            GATEWAY_NAMESPACE,
            spec={
                "hosts": [route.wire_host],
                "gateways": [EGRESS_GATEWAY],
                "exportTo": ["."],
                "tls": [
                    {
                        "match": [{"port": EGRESS_PORT, "sniHosts": [route.wire_host]}],
                        "route": [{"destination": destination}],
                    }
                ],
            },
        ),
    ]


def consumer(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    if not mesh.imports:
        return []
    objects: list[Obj] = []
    for route in mesh.imports:
        objects += [_local_entry(plan, route), _local_route(plan, route)]
    objects.append(_egress_subsets(plan, mesh))
    for egress_route in mesh.egress.routes:
        objects += _remote(plan, egress_route, mesh.egress.failover)
    return objects
