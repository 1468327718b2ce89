"""The dedicated federation gateways: namespace, identity, Deployment, Service, Gateway.

Gateways are deployed the way Istio recommends (gateway injection: ``image: auto`` and the
``gateway`` injection template), so istiod gives them their mesh identity and config.
"""

from __future__ import annotations

import json

from meshfed.plan.model import FederationPlan, IngressServer, MeshPlan
from meshfed.plan.names import EGRESS_GATEWAY, EGRESS_PORT, GATEWAY_NAMESPACE, INGRESS_GATEWAY
from meshfed.render.istio import limits
from meshfed.render.istio.objects import Obj, obj, slug

INGRESS_CREDENTIAL = "federation-ingress-credential"
"""Secret holding the ingress server certificate and the roots its callers must chain to."""


def namespace(plan: FederationPlan, mesh: MeshPlan) -> Obj:
    # No istio-injection label: Istio's injection webhook skips a namespace labelled
    # "disabled" entirely, and the gateway pods need injection (image: auto).
    extra: dict[str, str] = {}
    if mesh.network:
        extra["topology.istio.io/network"] = mesh.network
    return obj("v1", "Namespace", GATEWAY_NAMESPACE, plan.name, extra_labels=extra)


def gateway_proxy_config(mesh: MeshPlan) -> Obj:
    """The gateways' ProxyConfig (pod annotation ``proxy.istio.io/config``, read at injection):
    how the boundary policy's header rules become Istio's own settings.

    - XFCC: ``gatewayTopology.forwardClientCertDetails`` (istiod's ``buildGatewayConnectionManager``
      in pilot/pkg/networking/core/gateway.go); a caller-sent XFCC is replaced.
    - ``server``: by default the gateway's connection manager writes ``server: istio-envoy`` on
      every response (OVERWRITE, after the route's header removal, local replies included);
      ``proxyHeaders.server.disabled`` makes it pass through (``GetProxyHeadersFromProxyConfig``
      in httproute.go: no server name, PASS_THROUGH), and the route removes the upstream's.
    - ``x-envoy-*`` debug headers: ``proxyHeaders.envoyDebugHeaders.disabled`` sets the router's
      ``suppress_envoy_headers`` (no ``x-envoy-upstream-service-time`` on responses).
    """
    boundary = mesh.boundary
    config: Obj = {
        "gatewayTopology": {"forwardClientCertDetails": boundary.client_cert.at_ingress},
    }
    headers: Obj = {}
    if "server" in boundary.response_headers_removed:
        headers["server"] = {"disabled": True}
    if not boundary.proxy_debug_headers:
        headers["envoyDebugHeaders"] = {"disabled": True}
    if headers:
        config["proxyHeaders"] = headers
    return config


def _gateway_workload(plan: FederationPlan, mesh: MeshPlan, name: str) -> list[Obj]:
    """ServiceAccount, secret-reading Role and the injected gateway Deployment."""
    pod_labels = {"istio": name, "app": name}
    pod_metadata_labels = {**pod_labels, "sidecar.istio.io/inject": "true"}
    if mesh.network:
        pod_metadata_labels["topology.istio.io/network"] = mesh.network
    # The boundary's header settings, then the gateway's bounds and caps (limits.py).
    proxy_config = {**gateway_proxy_config(mesh), **limits.proxy_config(mesh, name)}
    return [
        obj("v1", "ServiceAccount", name, plan.name, GATEWAY_NAMESPACE),
        obj(
            "rbac.authorization.k8s.io/v1",
            "Role",
            name,
            plan.name,
            GATEWAY_NAMESPACE,
            rules=[
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "watch", "list"]}
            ],
        ),
        obj(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            name,
            plan.name,
            GATEWAY_NAMESPACE,
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            subjects=[{"kind": "ServiceAccount", "name": name}],
        ),
        obj(
            "apps/v1",
            "Deployment",
            name,
            plan.name,
            GATEWAY_NAMESPACE,
            spec={
                "replicas": 2,
                "selector": {"matchLabels": pod_labels},
                "template": {
                    "metadata": {
                        "annotations": {
                            "inject.istio.io/templates": "gateway",
                            "proxy.istio.io/config": json.dumps(proxy_config, sort_keys=True),
                        },
                        "labels": pod_metadata_labels,
                    },
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [{"name": "istio-proxy", "image": "auto"}],
                    },
                },
            },
        ),
    ]


def handshake_identities(server: IngressServer) -> list[str] | None:
    """The SPIFFE IDs a TCP export's Gateway server lets complete the handshake, or None where
    Istio cannot say it.

    Network RBAC decides on the caller's first byte while the gateway's tcp_proxy connects
    upstream at once, so a server-first workload greets a denied caller; the local federation
    pins the allowed identities in the handshake. Istio's ``tls.subjectAltNames`` does the same
    (``match_subject_alt_names``, exact matches only: ``util.StringToExactMatch``), with full
    SPIFFE IDs. A rule admitting by prefix (``ns/x/*``, ``*``) cannot be listed exactly: no pin
    then (``meshfed audit`` names the gap), RBAC still denies on the first byte.
    HTTP exports are not pinned, as locally: a denied caller gets a logged 403 before any byte
    of the workload's.
    """
    if server.protocol != "TCP":
        return None
    principals = [p for rule in server.allow for p in rule.principals]
    if any(p.prefix for p in principals):
        return None
    return sorted({p.value for p in principals})


def _server_tls(server: IngressServer) -> Obj:
    tls: Obj = {"mode": "MUTUAL", "credentialName": INGRESS_CREDENTIAL}
    pinned = handshake_identities(server)
    if pinned:
        tls["subjectAltNames"] = pinned
    return tls


def ingress(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """The federation ingress: peers reach it; it terminates their mTLS, one SNI per export."""
    ing = mesh.ingress
    objects = _gateway_workload(plan, mesh, INGRESS_GATEWAY)
    objects.append(
        obj(
            "v1",
            "Service",
            INGRESS_GATEWAY,
            plan.name,
            GATEWAY_NAMESPACE,
            spec={
                "type": "LoadBalancer",
                "selector": {"istio": INGRESS_GATEWAY},
                "ports": [
                    {"name": "tls", "port": ing.port, "targetPort": ing.port, "protocol": "TCP"}
                ],
            },
        )
    )
    if ing.servers:
        servers = [
            {
                "port": {
                    "number": ing.port,
                    "name": f"{'https' if s.protocol == 'HTTP' else 'tls'}-{slug(s.sni, 50)}",
                    "protocol": "HTTPS" if s.protocol == "HTTP" else "TLS",
                },
                "hosts": [s.sni],
                "tls": _server_tls(s),
            }
            for s in ing.servers
        ]
        objects.append(
            obj(
                "networking.istio.io/v1",
                "Gateway",
                INGRESS_GATEWAY,
                plan.name,
                GATEWAY_NAMESPACE,
                spec={"selector": {"istio": INGRESS_GATEWAY}, "servers": servers},
            )
        )
    return objects


def egress(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """The federation egress: the mesh's sidecars' only way out; passes imported SNIs only."""
    objects = _gateway_workload(plan, mesh, EGRESS_GATEWAY)
    objects.append(
        obj(
            "v1",
            "Service",
            EGRESS_GATEWAY,
            plan.name,
            GATEWAY_NAMESPACE,
            spec={
                "type": "ClusterIP",
                "selector": {"istio": EGRESS_GATEWAY},
                "ports": [
                    {
                        "name": "tls",
                        "port": EGRESS_PORT,
                        "targetPort": EGRESS_PORT,
                        "protocol": "TCP",
                    }
                ],
            },
        )
    )
    if mesh.egress.routes:
        objects.append(
            obj(
                "networking.istio.io/v1",
                "Gateway",
                EGRESS_GATEWAY,
                plan.name,
                GATEWAY_NAMESPACE,
                spec={
                    "selector": {"istio": EGRESS_GATEWAY},
                    "servers": [
                        {
                            "port": {"number": EGRESS_PORT, "name": "tls", "protocol": "TLS"},
                            "hosts": list(mesh.egress.allowed_snis),
                            "tls": {"mode": "PASSTHROUGH"},
                        }
                    ],
                },
            )
        )
    return objects
