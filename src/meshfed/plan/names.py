"""Names meshfed gives the things it creates in every mesh. One place, so renderers agree."""

from __future__ import annotations

# Kept for meshfed by the spec's checks (meshfed.spec.reserved): no workload may take them.
from meshfed.spec.reserved import EGRESS_GATEWAY as EGRESS_GATEWAY
from meshfed.spec.reserved import GATEWAY_NAMESPACE as GATEWAY_NAMESPACE
from meshfed.spec.reserved import INGRESS_GATEWAY as INGRESS_GATEWAY
from meshfed.spec.reserved import PROBER as PROBER
from meshfed.spiffe import workload_id

EGRESS_PORT = 15443
"""Port of the egress gateway's Service inside a cluster (sidecars reach it there)."""
MANAGED_BY = "meshfed"
PROBE_HEADER = "x-meshfed-probe"
"""Request header carrying the mark of meshfed's own probes; gateways log it (``probe``)."""
TUNNEL_PEER_ADDRESS = "x-meshfed-peer-address"
TUNNEL_LOCAL_ADDRESS = "x-meshfed-local-address"
"""Set by a local TCP export's chain on its tunnel's CONNECT (`render/envoy/tunnel.py`) to the
caller connection's two addresses (its peer's, the ingress's own), for the tunnel's log line:
how the runtime ties a session to the connection that carried it (meshfed's own import probes,
``local/prober.py``). Written by the ingress itself; the CONNECT never reaches the workload."""


def service_fqdn(namespace: str, name: str) -> str:
    """The cluster-local DNS name of a Kubernetes Service."""
    return f"{name}.{namespace}.svc.cluster.local"


def gateway_spiffe_id(trust_domain: str, gateway: str) -> str:
    """The SPIFFE ID of one of meshfed's gateways in a mesh."""
    return workload_id(trust_domain, GATEWAY_NAMESPACE, gateway)


def prober_spiffe_id(trust_domain: str) -> str:
    """The identity meshfed's own checks present in a mesh (never an allowed caller)."""
    return workload_id(trust_domain, GATEWAY_NAMESPACE, PROBER)
