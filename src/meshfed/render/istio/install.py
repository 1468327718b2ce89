"""How a mesh's Istio is installed: the mesh config and istiod environment federation needs.

Rendered in the three forms Istio is installed with, all saying the same: an ``IstioOperator``
overlay (``istioctl install -f``), values for the ``istiod`` Helm chart (``helm upgrade --install
istiod istio/istiod -f``), and the Sail operator's ``Istio`` resource. None of them is an object
to apply with the federation's manifests (``IstioOperator`` is no CRD on a cluster; Helm values
are no object at all; ``Istio`` needs the Sail operator): they are written beside the manifests,
outside the kustomization.

What they set, and why (Istio 1.25):

- ``trustDomain``; ``outboundTrafficPolicy`` (the plan's ``BoundaryPolicy.outbound``,
  ``REGISTRY_ONLY``): nothing leaves around the egress gateway, imports are registered
  (ServiceEntry) to route through it.
- istiod ``ISTIO_MULTIROOT_MESH=true``: istiod builds a trust bundle of ``caCertificates`` and
  its own root, and takes a new root in ``cacerts`` live (on from the first install, so a root
  rotation never restarts istiod); ``caCertificates`` with ``trustDomains`` in Federated trust.
- ``proxyMetadata.PROXY_CONFIG_XDS_AGENT=true``: only then does each pilot-agent ask istiod for
  that bundle (its PCDS handler, pkg/istio-agent/xds_proxy.go) and serve it as the proxy's
  ROOTCA. Without it the roots of ``caCertificates`` never reach a sidecar and a Federated
  cross-mesh call fails (``CERTIFICATE_VERIFY_FAILED``), as seen on istiod 1.25.5. It is
  injected as the proxy's environment: pods created before it need a restart.
- Local import names: ``ISTIO_META_DNS_CAPTURE`` (the sidecar's DNS proxy answers them) and
  istiod's IP auto-allocation v2 (``PILOT_ENABLE_IP_AUTOALLOCATE``, default on in 1.25, set to
  say so), which gives each import's ServiceEntry an address in its status. The deprecated
  ``ISTIO_META_DNS_AUTO_ALLOCATE`` is not set; ``PILOT_ENABLE_IP_AUTOALLOCATE`` in
  ``proxyMetadata`` is inert for the proxy and tells ``istioctl analyze`` (IST0134) that
  allocation is on.
- The boundary log's access-log providers, which the gateways' Telemetry selects.
"""

from __future__ import annotations

from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.plan.names import EGRESS_GATEWAY, INGRESS_GATEWAY
from meshfed.render.boundary_log import CONNECTION_FIELDS, REQUEST_FIELDS
from meshfed.render.istio import multicluster
from meshfed.render.istio.boundary import log_provider
from meshfed.render.istio.objects import Obj
from meshfed.render.istio.trust import ca_certificates

ISTIO_OPERATOR = "istio-operator.yaml"
HELM_VALUES = "istiod-values.yaml"
SAIL_ISTIO = "sail-istio.yaml"
SAIL_VERSION = "v1.25-latest"
"""The Istio version the Sail ``Istio`` asks for: the minor meshfed's Istio output was checked
on (istiod 1.25.5); it must be one the installed operator lists."""

_GATEWAYS = {INGRESS_GATEWAY: "ingress", EGRESS_GATEWAY: "egress"}


def _log_format(mesh: MeshPlan, gateway: str) -> dict[str, str]:
    """One format for a gateway's HTTP, TCP and listener logs: the fields of both."""
    return {
        "mesh": mesh.name,
        "gateway": _GATEWAYS[gateway],
        "protocol": "%PROTOCOL%",
        **REQUEST_FIELDS,
        **CONNECTION_FIELDS,
    }


def istiod_env(mesh: MeshPlan) -> dict[str, str]:
    return {"ISTIO_MULTIROOT_MESH": "true", "PILOT_ENABLE_IP_AUTOALLOCATE": "true"}


def mesh_config(mesh: MeshPlan) -> Obj:
    """The mesh config federation needs (meshConfig of every form)."""
    config: Obj = {
        "trustDomain": mesh.trust_domain,
        "outboundTrafficPolicy": {"mode": mesh.boundary.outbound},
        "defaultConfig": {
            "proxyMetadata": {
                "ISTIO_META_DNS_CAPTURE": "true",
                "PILOT_ENABLE_IP_AUTOALLOCATE": "true",
                "PROXY_CONFIG_XDS_AGENT": "true",
            }
        },
        "extensionProviders": [
            {
                "name": log_provider(gateway),
                "envoyFileAccessLog": {
                    "path": "/dev/stdout",
                    "logFormat": {"labels": _log_format(mesh, gateway)},
                },
            }
            for gateway in _GATEWAYS
        ],
    }
    roots = ca_certificates(mesh)
    if roots:
        config["caCertificates"] = roots
    return config


def istio_operator(plan: FederationPlan, mesh: MeshPlan) -> Obj:
    """An IstioOperator overlay: ``istioctl install -f`` (with the user's own overlays)."""
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": f"meshfed-{mesh.name}", "namespace": mesh.istio_namespace},
        "spec": {
            "meshConfig": mesh_config(mesh),
            "values": {"pilot": {"env": istiod_env(mesh)}},
        },
    }


def helm_values(plan: FederationPlan, mesh: MeshPlan) -> Obj:
    """Values of the ``istiod`` chart (``pilot.*`` is copied to the top level by the chart's
    ``zzy_descope_legacy.yaml``; ``meshConfig`` is merged over the chart's mesh config)."""
    return {"pilot": {"env": istiod_env(mesh)}, "meshConfig": mesh_config(mesh)}


def sail_istio(plan: FederationPlan, mesh: MeshPlan) -> Obj:
    """The Sail operator's ``Istio`` (cluster-scoped; ``spec.values`` are the Helm values)."""
    return {
        "apiVersion": "sailoperator.io/v1",
        "kind": "Istio",
        "metadata": {"name": "default"},
        "spec": {
            "version": SAIL_VERSION,
            "namespace": mesh.istio_namespace,
            "values": {"pilot": {"env": istiod_env(mesh)}, "meshConfig": mesh_config(mesh)},
        },
    }


def install_files(plan: FederationPlan, mesh: MeshPlan) -> dict[str, list[Obj]]:
    """The mesh's install settings by file name; a multi-cluster mesh's per-cluster overlays
    too."""
    return {
        ISTIO_OPERATOR: [istio_operator(plan, mesh)],
        HELM_VALUES: [helm_values(plan, mesh)],
        SAIL_ISTIO: [sail_istio(plan, mesh)],
        **multicluster.settings_files(mesh),
    }
