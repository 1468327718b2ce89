"""The boundary policy of a mesh: what happens to requests and responses that cross it.

One policy, decided here, that both renderers translate with their own means: Envoy's HTTP
connection manager and route configuration for the local federation, the gateway's proxy
config and the VirtualService for Istio. Where Istio cannot express a rule it is said where
that renderer is (and one day reported by ``meshfed audit``), never decided there.

Extend by adding fields with defaults here and translating them in both renderers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ADDRESS_HEADERS: tuple[str, ...] = ("x-forwarded-for", "x-real-ip", "x-envoy-external-address")
"""Headers that carry network addresses: a caller can forge them, and they tell about a mesh's
network when they leave it."""

RESPONSE_HEADERS_REMOVED: tuple[str, ...] = (
    "server",
    "x-envoy-upstream-service-time",
    "x-envoy-overloaded",
    "x-envoy-ratelimited",
    "x-envoy-degraded",
    "x-envoy-decorator-operation",
    "x-envoy-immediate-health-check-fail",
    "x-envoy-upstream-healthchecked-cluster",
    *ADDRESS_HEADERS,
)
"""Response headers that would tell a caller about the exporting mesh's insides (software,
timings, load, routing, addresses). Envoy cannot remove by prefix, so x-envoy-* are listed."""


@dataclass(frozen=True)
class ClientCertPolicy:
    """How the verified caller is passed on in ``x-forwarded-client-cert`` (XFCC), and who may
    pass one on to a workload."""

    at_ingress: Literal["SANITIZE_SET"] = "SANITIZE_SET"
    """The ingress drops whatever XFCC a caller sent and sets its own from the caller's
    verified client certificate."""
    fields: tuple[Literal["URI"], ...] = ("URI",)
    """What of the client certificate the ingress sets: its URI SAN (the SPIFFE ID)."""
    forwarder: str = ""
    """The only peer whose XFCC a workload's sidecar accepts: the mesh's federation ingress
    (SPIFFE ID). Any other peer that sends one is refused."""
    to_workload: Literal["APPEND_FORWARD"] = "APPEND_FORWARD"
    """A sidecar passes the ingress's XFCC on to its workload, with its own element for the
    direct peer appended."""
    leaving: Literal["SANITIZE"] = "SANITIZE"
    """A workload's own XFCC never leaves the mesh: the exporting ingress sets its own."""


@dataclass(frozen=True)
class BoundaryPolicy:
    """What the federation ingress of a mesh does to every HTTP request coming in and every
    response going back out."""

    request_headers_removed: tuple[str, ...] = ADDRESS_HEADERS
    """Request headers a caller may send that never reach the exported workload."""
    response_headers_removed: tuple[str, ...] = RESPONSE_HEADERS_REMOVED
    """Response headers that never leave the mesh."""
    forward_caller_address: bool = False
    """Whether the workload learns the caller's network address (``x-forwarded-for``): never,
    addresses of one mesh do not leak into another. The caller is its verified identity."""
    client_cert: ClientCertPolicy = field(default_factory=ClientCertPolicy)


def boundary_policy(ingress_spiffe_id: str) -> BoundaryPolicy:
    """The boundary policy of a mesh whose federation ingress is ``ingress_spiffe_id``."""
    return BoundaryPolicy(client_cert=ClientCertPolicy(forwarder=ingress_spiffe_id))
