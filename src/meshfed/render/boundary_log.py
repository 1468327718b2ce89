"""The boundary log's fields: one JSON object per request, connection or refused handshake.

Both renderers run Envoy, so both write the same fields with the same command operators: the
local gateways (files ``meshfed logs`` reads) and Istio's gateways (an access-log provider in
the mesh config, and for refused handshakes a listener access log). A field name means the same
thing in either log, so one query serves both.
"""

from __future__ import annotations

__all__ = ["CONNECTION_FIELDS", "HANDSHAKE_FIELDS", "REFUSED_HANDSHAKE", "REQUEST_FIELDS"]

REQUEST_FIELDS: dict[str, str] = {
    "time": "%START_TIME%",
    "sni": "%REQUESTED_SERVER_NAME%",
    "caller": "%DOWNSTREAM_PEER_URI_SAN%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "code": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "decision": "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_engine_result)%",
    "policy": "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)%",
    "duration_ms": "%DURATION%",
}
"""An HTTP request at a gateway: who called (the verified URI SAN), what, and the decision."""

CONNECTION_FIELDS: dict[str, str] = {
    "time": "%START_TIME%",
    "sni": "%REQUESTED_SERVER_NAME%",
    "caller": "%DOWNSTREAM_PEER_URI_SAN%",
    "tls_failure": "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%",
    "upstream": "%UPSTREAM_HOST%",
    "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "flags": "%RESPONSE_FLAGS%",
    "termination": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "peer": "%DOWNSTREAM_REMOTE_ADDRESS%",
}
"""A connection at a gateway (TCP exports, pass-through, refused handshakes): ``termination``
names a network RBAC deny, ``tls_failure`` a refused handshake."""

REFUSED_HANDSHAKE = "connection.transport_failure_reason != ''"
"""CEL (Envoy's access-log filter ``envoy.access_loggers.extension_filters.cel``): the
connection's TLS handshake was refused (unknown CA, expired, name constraints, no client
certificate, SAN not allowed)."""

HANDSHAKE_FIELDS: dict[str, str] = {
    "time": "%START_TIME%",
    "sni": "%REQUESTED_SERVER_NAME%",
    # Not verified: the handshake failed, so this is only what the caller's leaf claims.
    "caller_presented": "%DOWNSTREAM_PEER_URI_SAN%",
    "issuer_presented": "%DOWNSTREAM_PEER_ISSUER%",
    "tls_failure": "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%",
    "peer": "%DOWNSTREAM_REMOTE_ADDRESS%",
}
"""A refused handshake (Istio gateways; the local gateways log it with ``CONNECTION_FIELDS``,
whose ``caller`` is then just as unverified)."""
