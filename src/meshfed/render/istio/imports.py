"""The consumer side: local names, routing through the egress gateway, failover."""

from __future__ import annotations

from datetime import timedelta

from meshfed.plan.limits import FailoverPolicy
from meshfed.plan.model import EgressRoute, FederationPlan, ImportRoute, MeshPlan
from meshfed.plan.names import EGRESS_GATEWAY, EGRESS_PORT, GATEWAY_NAMESPACE, service_fqdn
from meshfed.render.istio.limits import failover_policy
from meshfed.render.istio.objects import Obj, is_ip, obj, slug

EGRESS_HOST = service_fqdn(GATEWAY_NAMESPACE, EGRESS_GATEWAY)
FAILOVER_LABEL = "meshfed.dev/failover-{}"
"""Labels whose override values in ``failoverPriority`` encode the spec's failover order."""
COPY_LABEL = "meshfed.dev/copy-of"
"""On a caller namespace's copy of the egress subsets' rule: ``<namespace>.<name>`` of the
original."""


def _subset(wire_host: str) -> str:
    return slug(wire_host)


def _local_entry(plan: FederationPlan, route: ImportRoute) -> Obj:
    """The local name consumers call, given an address of its own so that it resolves and a TCP
    import captures only traffic to it.

    ``resolution: STATIC`` without endpoints (the import's VirtualService sends its traffic to
    the egress gateway; nothing dials the entry itself): istiod's IP auto-allocation gives it an
    address in its status (pilot/pkg/networking/serviceentry/ip_autoallocation.go: never for
    ``NONE``, nor with ``spec.addresses``), proxies capturing DNS use that address
    (``nodeUsesAutoallocatedIPs``, pilot/pkg/model/service.go), the DNS proxy's name table
    answers the name with it (pkg/dns/server/name_table.go skips a service without one), and a
    TCP import's listener binds ``<address>:<port>``. With ``NONE`` and no address the name did
    not resolve, and a TCP import's listener was ``0.0.0.0:<port>``: every connection to that
    port, to any address, went to the federation.
    """
    return obj(
        "networking.istio.io/v1",
        "ServiceEntry",
        f"import-{slug(route.local_host, 56)}",
        plan.name,
        GATEWAY_NAMESPACE,
        spec={
            "hosts": [route.local_host],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
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


def _retries(route: ImportRoute) -> Obj:
    """The plan's retries of a call that reached no workload. Istio 1.25's ``HTTPRetry`` has
    no back-off: Envoy's default (25 ms, at most 250 ms) applies, which is the plan's."""
    retries = route.retries
    if retries is None:
        return {}
    return {"retries": {"attempts": retries.attempts, "retryOn": ",".join(retries.retry_on)}}


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
                **_retries(route),
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


def _duration(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"


def _egress_subsets(mesh: MeshPlan) -> list[Obj]:
    """Per wire host: the sidecar originates mTLS with its own workload certificate, the SNI
    of the export, and accepts only the exporting meshes' ingress gateway identities.

    A pooled connection's life is the plan's (HTTP imports): ``connectionPool.tcp.
    maxConnectionDuration`` of a subset becomes its cluster's HTTP ``max_connection_duration``
    (cluster_traffic_policy.go ``applyConnectionPool``), so connections pinned to a failover
    exporter drain and failback happens. A subset's value never reaches a TCP listener's
    ``tcp_proxy`` (networkfilter.go reads only the top-level policy): TCP sessions live on.
    """
    life = {r.wire_host: r.connection_life for r in mesh.imports}
    subsets = []
    for route in mesh.egress.routes:
        policy: Obj = {
            "tls": {
                "mode": "ISTIO_MUTUAL",
                "sni": route.wire_host,
                "subjectAltNames": [s.ingress_spiffe_id for s in route.sources],
            }
        }
        connection_life = life.get(route.wire_host)
        if connection_life is not None:
            policy["connectionPool"] = {
                "tcp": {"maxConnectionDuration": _duration(connection_life)}
            }
        subsets.append(
            {
                "name": _subset(route.wire_host),
                "labels": {"istio": EGRESS_GATEWAY},
                "trafficPolicy": policy,
            }
        )
    return subsets


def _subsets_rules(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """The rule defining the subsets, in ``meshfed-system`` for every namespace, and its copy
    in each namespace of the plan's ``caller_namespaces``: exactly the egress gateway's host
    (istiod prefers it there over any wildcard rule of that namespace), ``exportTo: ["."]`` (for
    that namespace's sidecars only: istiod consults another namespace's rules only in the
    service's namespace and the root namespace), the same subsets."""
    name = f"{EGRESS_GATEWAY}-imports"
    rules = [
        obj(
            "networking.istio.io/v1",
            "DestinationRule",
            name,
            plan.name,
            GATEWAY_NAMESPACE,
            spec={"host": EGRESS_HOST, "exportTo": ["*"], "subsets": _egress_subsets(mesh)},
        )
    ]
    for namespace in mesh.caller_namespaces:
        rules.append(
            obj(
                "networking.istio.io/v1",
                "DestinationRule",
                name,
                plan.name,
                namespace,
                # built again, not shared: each object is its own to whoever changes one
                spec={"host": EGRESS_HOST, "exportTo": ["."], "subsets": _egress_subsets(mesh)},
                extra_labels={COPY_LABEL: f"{GATEWAY_NAMESPACE}.{name}"},
            )
        )
    return rules


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
    resolution = "STATIC" if all(is_ip(s.address) for s in route.sources) else "DNS"
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
    objects += _subsets_rules(plan, mesh)
    for egress_route in mesh.egress.routes:
        objects += _remote(plan, egress_route, mesh.egress.failover)
    return objects
