"""Names meshfed gives the things it creates in every mesh. One place, so renderers agree."""

from __future__ import annotations

from meshfed.spiffe import workload_id

GATEWAY_NAMESPACE = "meshfed-system"
INGRESS_GATEWAY = "federation-ingress"
EGRESS_GATEWAY = "federation-egress"
EGRESS_PORT = 15443
"""Port of the egress gateway's Service inside a cluster (sidecars reach it there)."""
MANAGED_BY = "meshfed"
PROBER = "meshfed-prober"
"""Service account of meshfed's own checks (rotation handshakes): no policy admits it, so its
requests are refused as any stranger's, and the boundary log names it."""
PROBE_HEADER = "x-meshfed-probe"
"""Request header carrying the mark of meshfed's own probes; gateways log it (``probe``)."""


def service_fqdn(namespace: str, name: str) -> str:
    """The cluster-local DNS name of a Kubernetes Service."""
    return f"{name}.{namespace}.svc.cluster.local"


def gateway_spiffe_id(trust_domain: str, gateway: str) -> str:
    """The SPIFFE ID of one of meshfed's gateways in a mesh."""
    return workload_id(trust_domain, GATEWAY_NAMESPACE, gateway)


def prober_spiffe_id(trust_domain: str) -> str:
    """The identity meshfed's own checks present in a mesh (never an allowed caller)."""
    return workload_id(trust_domain, GATEWAY_NAMESPACE, PROBER)
