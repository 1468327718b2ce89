"""The dedicated federation gateways: namespace, identity, Deployment, Service, Gateway.

Gateways are deployed the way Istio recommends (gateway injection: ``image: auto`` and the
``gateway`` injection template), so istiod gives them their mesh identity and config.
"""

from __future__ import annotations

import json

from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.plan.names import EGRESS_GATEWAY, EGRESS_PORT, GATEWAY_NAMESPACE, INGRESS_GATEWAY
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


def _gateway_workload(plan: FederationPlan, mesh: MeshPlan, name: str) -> list[Obj]:
    """ServiceAccount, secret-reading Role and the injected gateway Deployment."""
    pod_labels = {"istio": name, "app": name}
    pod_metadata_labels = {**pod_labels, "sidecar.istio.io/inject": "true"}
    if mesh.network:
        pod_metadata_labels["topology.istio.io/network"] = mesh.network
    xfcc = mesh.boundary.client_cert.at_ingress
    proxy_config = {"gatewayTopology": {"forwardClientCertDetails": xfcc}}
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
                "tls": {"mode": "MUTUAL", "credentialName": INGRESS_CREDENTIAL},
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
