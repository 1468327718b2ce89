"""Names meshfed gives the things it creates in every mesh. One place, so renderers agree."""

from __future__ import annotations

from meshfed.spiffe import workload_id

GATEWAY_NAMESPACE = "meshfed-system"
INGRESS_GATEWAY = "federation-ingress"
EGRESS_GATEWAY = "federation-egress"
EGRESS_PORT = 15443
"""Port of the egress gateway's Service inside a cluster (sidecars reach it there)."""
MANAGED_BY = "meshfed"


def service_fqdn(namespace: str, name: str) -> str:
    """The cluster-local DNS name of a Kubernetes Service."""
    return f"{name}.{namespace}.svc.cluster.local"


def gateway_spiffe_id(trust_domain: str, gateway: str) -> str:
    """The SPIFFE ID of one of meshfed's gateways in a mesh."""
    return workload_id(trust_domain, GATEWAY_NAMESPACE, gateway)
