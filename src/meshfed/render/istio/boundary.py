"""What the ingress lets in and how it is watched: routes, authorization, mTLS, access logs."""

from __future__ import annotations

from meshfed.plan.model import AllowRule, FederationPlan, IngressServer, MeshPlan
from meshfed.plan.names import EGRESS_GATEWAY, GATEWAY_NAMESPACE, INGRESS_GATEWAY
from meshfed.render.istio.objects import Obj, obj, slug
from meshfed.render.istio.workload import route_headers
from meshfed.spiffe import istio_principal


def _route(plan: FederationPlan, mesh: MeshPlan, server: IngressServer) -> Obj:
    destination = {
        "destination": {
            "host": server.workload.fqdn,
            "port": {"number": server.workload.port},
        }
    }
    spec: Obj = {
        "hosts": [server.sni],
        "gateways": [INGRESS_GATEWAY],
        "exportTo": ["."],
    }
    if server.protocol == "HTTP":
        spec["http"] = [
            {
                "name": slug(server.export.replace("/", "-")),
                "route": [destination],
                # Istio has no virtual-host level header rules: they go on every route
                # (route.go TranslateHeadersOperations -> the route's *_headers_to_remove).
                # Override headers stripped, the caller header set (workload.py).
                "headers": route_headers(mesh, server),
            }
        ]
    else:
        spec["tcp"] = [{"match": [{"port": mesh.ingress.port}], "route": [destination]}]
    return obj(
        "networking.istio.io/v1",
        "VirtualService",
        f"ingress-{slug(server.sni, 55)}",
        plan.name,
        GATEWAY_NAMESPACE,
        spec=spec,
        extra_labels={"meshfed.dev/export": server.export.replace("/", ".")},
    )


def _rule(server: IngressServer, rule: AllowRule) -> Obj:
    out: Obj = {
        "from": [{"source": {"principals": [istio_principal(p) for p in rule.principals]}}],
        "when": [{"key": "connection.sni", "values": [server.sni]}],
    }
    operation: Obj = {}
    if rule.methods:
        operation["methods"] = list(rule.methods)
    if rule.paths:
        operation["paths"] = [f"{p.value}*" if p.prefix else p.value for p in rule.paths]
    if operation:
        out["to"] = [{"operation": operation}]
    return out


def authorization(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """Deny by default at the ingress, then allow exactly the spec's principals per SNI."""
    selector = {"matchLabels": {"istio": INGRESS_GATEWAY}}
    policies = [
        # An ALLOW policy without rules matches nothing: the baseline stays deny-all even if
        # every per-export policy were deleted.
        obj(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            f"{INGRESS_GATEWAY}-allow-nothing",
            plan.name,
            GATEWAY_NAMESPACE,
            spec={"selector": selector, "action": "ALLOW"},
        )
    ]
    for server in mesh.ingress.servers:
        policies.append(
            obj(
                "security.istio.io/v1",
                "AuthorizationPolicy",
                f"allow-{slug(server.sni, 55)}",
                plan.name,
                GATEWAY_NAMESPACE,
                spec={
                    "selector": selector,
                    "action": "ALLOW",
                    "rules": [_rule(server, r) for r in server.allow],
                },
                extra_labels={"meshfed.dev/export": server.export.replace("/", ".")},
            )
        )
    return policies


def routes(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    return [_route(plan, mesh, s) for s in mesh.ingress.servers]


def peer_authentication(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """STRICT mTLS where federated traffic lands: gateway and exported workload namespaces."""
    namespaces = sorted({GATEWAY_NAMESPACE, *mesh.exported_namespaces})
    return [
        obj(
            "security.istio.io/v1",
            "PeerAuthentication",
            "meshfed-strict",
            plan.name,
            ns,
            spec={"mtls": {"mode": "STRICT"}},
        )
        for ns in namespaces
    ]


def log_provider(gateway: str) -> str:
    """The name of the access-log provider (meshConfig ``extensionProviders``) of a gateway."""
    return f"meshfed-{gateway}-log"


def access_logging(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """Every crossing is logged at both gateways (boundary monitoring), in the boundary log's
    format (the caller's URI SAN, SNI, decision): the providers are in the mesh settings
    (`meshfed.render.istio.install`). Istio also writes a gateway listener's log through them,
    but only for ``NR`` (no filter chain: an unknown SNI); refused handshakes are logged by
    `meshfed.render.istio.filters`."""
    return [
        obj(
            "telemetry.istio.io/v1",
            "Telemetry",
            f"{gateway}-access-log",
            plan.name,
            GATEWAY_NAMESPACE,
            spec={
                "selector": {"matchLabels": {"istio": gateway}},
                "accessLogging": [{"providers": [{"name": log_provider(gateway)}]}],
            },
        )
        for gateway in (INGRESS_GATEWAY, EGRESS_GATEWAY)
    ]
