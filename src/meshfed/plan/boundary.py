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

from meshfed.spec.headers import ADDRESS_HEADERS, CALLER_HEADER, STRIPPED_HEADERS

RESPONSE_HEADERS_REMOVED: tuple[str, ...] = (
    "server",
    "x-powered-by",
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
timings, load, routing, addresses). ``x-powered-by``: frameworks name themselves in it (seen
reaching a caller through an Istio gateway). Envoy cannot remove by prefix, so x-envoy-* are
listed."""


LOCAL_REPLY_BODIES: tuple[tuple[int, str], ...] = (
    (400, "bad request"),
    (403, "access denied"),
    (404, "not found"),
    (408, "request timeout"),
    (413, "payload too large"),
    (414, "uri too long"),
    (426, "upgrade required"),
    (429, "too many requests"),
    (431, "request header fields too large"),
    (500, "internal error"),
    (501, "not implemented"),
    (502, "bad gateway"),
    (503, "service unavailable"),
    (504, "gateway timeout"),
)
"""The body of each reply the ingress makes itself, by status: what the status says, nothing
more."""


@dataclass(frozen=True)
class LocalReplyPolicy:
    """The bodies of the replies the federation ingress makes itself (it refused the request,
    or could not get an answer from the exported workload).

    Envoy's own bodies tell a caller about the exporting mesh's insides: ``upstream connect
    error or disconnect/reset before headers. reset reason: remote connection failure``, ``no
    healthy upstream``, ``RBAC: access denied``, a codec's parse error. The caller gets the
    status and a neutral body; the status code is never changed, and the boundary log keeps
    the real reason (``flags``, ``details``). A workload's own replies pass unchanged.
    """

    bodies: tuple[tuple[int, str], ...] = LOCAL_REPLY_BODIES
    """Status -> the whole body (a line of plain text)."""
    other: str = "request failed"
    """The body of a reply with any other status from ``lowest_status`` up."""
    lowest_status: int = 400
    """The lowest status whose body is replaced: Envoy's own replies below 400 (redirects,
    configured direct responses) carry nothing of the mesh and stay."""
    at_exported_workloads: bool = True
    """The same at the inbound of each exported HTTP workload's sidecar (`WorkloadGuard`): it
    answers for its workload when the application is down (``... reset reason: remote
    connection failure``) or refuses (``RBAC: access denied``), and the ingress passes that
    answer on as the workload's own. In-mesh callers of the workload get the same bodies."""

    def body(self, status: int | None = None) -> str:
        """The whole body of a reply with ``status`` (None: any other error status)."""
        return dict(self.bodies).get(status or 0, self.other) + "\n"


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
class PathPolicy:
    """How the ingress reads a request's path before authorization decides on it: the path
    the policy sees is the path the workload gets, so a path rule cannot be walked around."""

    normalize: bool = True
    """RFC 3986 normalization: ``.`` and ``..`` segments resolved, backslashes made slashes."""
    merge_slashes: bool = True
    """``//a///b`` is ``/a/b``, for the policy and the workload alike."""
    escaped_slashes: Literal["REJECT"] = "REJECT"
    """A path holding ``%2F``/``%5C`` (which a workload may decode into a separator the policy
    never saw) is refused with 400."""


@dataclass(frozen=True)
class BoundaryPolicy:
    """What the federation ingress of a mesh does to every HTTP request coming in and every
    response going back out, and what the mesh's sidecars let out."""

    request_headers_removed: tuple[str, ...] = (*STRIPPED_HEADERS, CALLER_HEADER)
    """Request headers a caller may send that never reach the exported workload: method, path
    and host overrides, addresses, framework and proxy switches (`meshfed.spec.headers`), and
    the caller header (set by the ingress itself). Per export, less what it keeps."""
    kept_request_headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(SNI, headers) an export keeps (spec ``keepRequestHeaders``): only these reach its
    workload as the caller sent them."""
    caller_header: str = CALLER_HEADER
    """Set by the ingress on every request to the caller's verified URI SAN(s) (Envoy's
    ``%DOWNSTREAM_PEER_URI_SAN%``; several SANs are joined by ``,`` and so never equal one
    identity): what the exported workload's sidecar authorizes the original caller on
    (`WorkloadGuard`). A caller's own copy is removed first."""
    tcp_authorized_before_connect: bool = True
    """A TCP export connects to its workload only once the caller's verified certificate has
    been authorized (every URI SAN, exactly as for HTTP): a certificate with two URI SANs, one
    of them allowed, completes the handshake but gets no byte of the workload, which never sees
    a connection. (Envoy's network RBAC decides only on the caller's first byte, while a
    server-first workload would greet at once.)"""
    response_headers_removed: tuple[str, ...] = RESPONSE_HEADERS_REMOVED
    """Response headers that never leave the mesh."""
    proxy_debug_headers: bool = False
    """Whether the gateway adds its own diagnostic headers (``x-envoy-upstream-service-time``
    and kin): never, they tell about the mesh's insides."""
    forward_caller_address: bool = False
    """Whether the workload learns the caller's network address (``x-forwarded-for``): never,
    addresses of one mesh do not leak into another. The caller is its verified identity."""
    client_cert: ClientCertPolicy = field(default_factory=ClientCertPolicy)
    paths: PathPolicy = field(default_factory=PathPolicy)
    local_replies: LocalReplyPolicy = field(default_factory=LocalReplyPolicy)
    """What the ingress's own replies say (their bodies): only what the status says."""
    outbound: Literal["REGISTRY_ONLY"] = "REGISTRY_ONLY"
    """What a workload's sidecar lets out: only registered destinations (the mesh's own
    services, and its imports, which leave through the egress gateway); a request for any
    other host is refused by the sidecar itself (HTTP 502, Istio's ``block_all`` route; TCP:
    nothing listens), so nothing leaves the mesh around its egress gateway. Istio:
    ``meshConfig.outboundTrafficPolicy.mode``."""

    def request_headers_removed_for(self, sni: str) -> tuple[str, ...]:
        """The request headers the ingress removes on ``sni``: all, less what its export keeps."""
        kept = dict(self.kept_request_headers).get(sni, ())
        return tuple(h for h in self.request_headers_removed if h not in kept)


def boundary_policy(
    ingress_spiffe_id: str, kept: tuple[tuple[str, tuple[str, ...]], ...] = ()
) -> BoundaryPolicy:
    """The boundary policy of a mesh whose federation ingress is ``ingress_spiffe_id``;
    ``kept``: (SNI, request headers its export keeps)."""
    return BoundaryPolicy(
        kept_request_headers=kept, client_cert=ClientCertPolicy(forwarder=ingress_spiffe_id)
    )
