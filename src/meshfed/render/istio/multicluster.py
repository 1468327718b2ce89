"""Istio primary-remote: one mesh over several clusters, one istiod on the primary.

On the primary: an east-west gateway exposing istiod's xDS/CA port (15012) and its webhook
(15017) to the remotes (TLS passes through to istiod, nothing else is routed), the Istio
settings of a primary that serves remotes, and per remote a remote secret (rendered by the
Kubernetes side, which reads the remote's reader token). On each remote: Istio settings pointing
at the primary's istiod. All clusters of a mesh share its intermediate CA (``cacerts``).
"""

from __future__ import annotations

from meshfed.plan.model import ClusterPlan, FederationPlan, MeshPlan
from meshfed.plan.names import GATEWAY_NAMESPACE
from meshfed.render.istio.objects import Obj, b64, obj

EASTWEST_GATEWAY = "istio-eastwestgateway"
EASTWEST_LABEL = "eastwestgateway"
ISTIOD_PORT = 15012
WEBHOOK_PORT = 15017
REMOTE_SECRET_PREFIX = "istio-remote-secret-"
MULTICLUSTER_LABEL = "istio/multiCluster"
CLUSTER_ANNOTATION = "networking.istio.io/cluster"


def eastwest_gateway(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """The primary's east-west gateway, exposing only istiod (15012, 15017) to its remotes.

    It lives beside the federation gateways in ``meshfed-system`` (STRICT mTLS there), not in
    the Istio namespace, where a namespace-wide STRICT policy would be mesh-wide.
    """
    ns = GATEWAY_NAMESPACE
    pod_labels = {"istio": EASTWEST_LABEL, "app": EASTWEST_GATEWAY}
    pod_metadata_labels = {**pod_labels, "sidecar.istio.io/inject": "true"}
    if mesh.network:
        pod_metadata_labels["topology.istio.io/network"] = mesh.network
    istiod = f"istiod.{mesh.istio_namespace}.svc.cluster.local"
    selector = {"matchLabels": {"istio": EASTWEST_LABEL}}
    servers = [
        {
            "port": {"number": port, "name": name, "protocol": "TLS"},
            # Remotes reach istiod by IP as often as by name, so SNI cannot be relied on; the
            # only route behind these servers is istiod itself (Istio's expose-istiod).
            "tls": {"mode": "PASSTHROUGH"},
            "hosts": ["*"],
        }
        for port, name in ((ISTIOD_PORT, "tls-istiod"), (WEBHOOK_PORT, "tls-istiodwebhook"))
    ]
    routes = [
        {
            "match": [{"port": port, "sniHosts": ["*"]}],
            "route": [{"destination": {"host": istiod, "port": {"number": target}}}],
        }
        for port, target in ((ISTIOD_PORT, ISTIOD_PORT), (WEBHOOK_PORT, 443))
    ]
    return [
        obj("v1", "ServiceAccount", EASTWEST_GATEWAY, plan.name, ns),
        obj(
            "apps/v1",
            "Deployment",
            EASTWEST_GATEWAY,
            plan.name,
            ns,
            spec={
                "replicas": 2,
                "selector": {"matchLabels": pod_labels},
                "template": {
                    "metadata": {
                        "annotations": {"inject.istio.io/templates": "gateway"},
                        "labels": pod_metadata_labels,
                    },
                    "spec": {
                        "serviceAccountName": EASTWEST_GATEWAY,
                        "containers": [{"name": "istio-proxy", "image": "auto"}],
                    },
                },
            },
        ),
        obj(
            "v1",
            "Service",
            EASTWEST_GATEWAY,
            plan.name,
            ns,
            spec={
                "type": "LoadBalancer",
                "selector": {"istio": EASTWEST_LABEL},
                "ports": [
                    {"name": "tcp-istiod", "port": ISTIOD_PORT, "targetPort": ISTIOD_PORT},
                    {"name": "tcp-webhook", "port": WEBHOOK_PORT, "targetPort": WEBHOOK_PORT},
                ],
            },
        ),
        obj(
            "networking.istio.io/v1",
            "Gateway",
            "istiod-gateway",
            plan.name,
            ns,
            spec={"selector": {"istio": EASTWEST_LABEL}, "servers": servers},
        ),
        # Deny by default, then exactly istiod's two ports; every connection is logged.
        obj(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            f"{EASTWEST_GATEWAY}-allow-nothing",
            plan.name,
            ns,
            spec={"selector": selector, "action": "ALLOW"},
        ),
        obj(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            f"{EASTWEST_GATEWAY}-allow-istiod",
            plan.name,
            ns,
            spec={
                "selector": selector,
                "action": "ALLOW",
                "rules": [
                    {"to": [{"operation": {"ports": [str(ISTIOD_PORT), str(WEBHOOK_PORT)]}}]}
                ],
            },
        ),
        obj(
            "telemetry.istio.io/v1",
            "Telemetry",
            f"{EASTWEST_GATEWAY}-access-log",
            plan.name,
            ns,
            spec={"selector": selector, "accessLogging": [{"providers": [{"name": "envoy"}]}]},
        ),
        obj(
            "networking.istio.io/v1",
            "VirtualService",
            "istiod-vs",
            plan.name,
            ns,
            spec={
                "hosts": ["*"],
                "gateways": ["istiod-gateway"],
                "exportTo": ["."],
                "tls": routes,
            },
        ),
    ]


def _global(mesh: MeshPlan, cluster: ClusterPlan) -> Obj:
    values: Obj = {"meshID": mesh.name, "multiCluster": {"clusterName": cluster.name}}
    if mesh.network:
        values["network"] = mesh.network
    return values


def primary_settings(mesh: MeshPlan) -> Obj:
    """IstioOperator overlay for the primary: it serves the remotes as their external istiod."""
    primary = mesh.primary
    assert primary is not None
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {
            "name": f"meshfed-{mesh.name}-{primary.name}",
            "namespace": mesh.istio_namespace,
        },
        "spec": {"values": {"global": {**_global(mesh, primary), "externalIstiod": True}}},
    }


def injection_path(mesh: MeshPlan, cluster: ClusterPlan) -> str:
    path = f"/inject/cluster/{cluster.name}"
    return f"{path}/net/{mesh.network}" if mesh.network else path


def remote_settings(mesh: MeshPlan, cluster: ClusterPlan) -> Obj | None:
    """IstioOperator overlay for a remote: no istiod of its own, the primary's through its
    east-west gateway. None while the primary's discovery address is unknown."""
    primary = mesh.primary
    assert primary is not None and cluster.role == "remote"
    if primary.discovery_address is None:
        return None
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {
            "name": f"meshfed-{mesh.name}-{cluster.name}",
            "namespace": mesh.istio_namespace,
        },
        "spec": {
            "profile": "remote",
            "values": {
                "istiodRemote": {"enabled": True, "injectionPath": injection_path(mesh, cluster)},
                "global": {
                    **_global(mesh, cluster),
                    "remotePilotAddress": primary.discovery_address,
                },
            },
        },
    }


def remote_secret(
    plan: FederationPlan, mesh: MeshPlan, cluster: ClusterPlan, kubeconfig: str
) -> Obj:
    """The remote secret on the primary (as ``istioctl create-remote-secret`` makes it, plus
    meshfed's labels; ``data`` rather than ``stringData``, which the server stores the same):
    istiod reads the remote cluster's API server with this kubeconfig."""
    secret = obj(
        "v1",
        "Secret",
        f"{REMOTE_SECRET_PREFIX}{cluster.name}",
        plan.name,
        mesh.istio_namespace,
        extra_labels={MULTICLUSTER_LABEL: "true"},
        type="Opaque",
        data={cluster.name: b64(kubeconfig)},
    )
    secret["metadata"]["annotations"] = {CLUSTER_ANNOTATION: cluster.name}
    return secret


def settings_files(mesh: MeshPlan) -> dict[str, list[Obj]]:
    """The IstioOperator overlays of a multi-cluster mesh, by file name."""
    if not mesh.remotes:
        return {}
    primary = mesh.primary
    assert primary is not None
    files = {f"istio-operator-{primary.name}.yaml": [primary_settings(mesh)]}
    for cluster in mesh.remotes:
        settings = remote_settings(mesh, cluster)
        if settings is not None:
            files[f"istio-operator-{cluster.name}.yaml"] = [settings]
    return files
