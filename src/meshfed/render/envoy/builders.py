"""Builders shared by every local Envoy: listeners, clusters, the HTTP connection manager, TCP
proxy. Plain shapes of Envoy's v3 API; what goes into them is decided by the plan.
"""

from __future__ import annotations

from typing import Any

from meshfed.render.envoy.process import Resource

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
DIRECT_RESPONSE = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

NOTHING_SNI = "nothing-exported.invalid"
"""Envoy refuses a listener without filter chains; this reserved name (RFC 2606) is never sent."""


def static_cluster(name: str, endpoints: list[tuple[str, int, int]]) -> Resource:
    """A STATIC cluster of (address, port, priority) endpoints."""
    priorities: dict[int, list[Resource]] = {}
    for address, port, priority in endpoints:
        priorities.setdefault(priority, []).append(
            {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}
        )
    return {
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"priority": p, "lb_endpoints": eps} for p, eps in sorted(priorities.items())
            ],
        },
    }


def http_options(
    h2: bool, idle: str, max_duration: str | None = None, max_requests: int | None = None
) -> Resource:
    common: dict[str, Any] = {"idle_timeout": idle}
    if max_duration:
        common["max_connection_duration"] = max_duration
    if max_requests is not None:
        common["max_requests_per_connection"] = max_requests
    explicit: Resource = {"http2_protocol_options": {}} if h2 else {"http_protocol_options": {}}
    return {
        HTTP_OPTIONS_KEY: {
            "@type": HTTP_OPTIONS,
            "explicit_http_config": explicit,
            "common_http_protocol_options": common,
        }
    }


def hcm(
    stat_prefix: str,
    route_config: Resource,
    filters: list[Resource],
    access_log: list[Resource],
    suppress_envoy_headers: bool = True,
    **extra: Any,
) -> Resource:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": route_config,
            "http_filters": [
                *filters,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": ROUTER,
                        "suppress_envoy_headers": suppress_envoy_headers,
                    },
                },
            ],
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            "strip_any_host_port": True,
            "access_log": access_log,
            **extra,
        },
    }


def tcp_proxy(stat_prefix: str, cluster: str, **extra: Any) -> Resource:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": TCP_PROXY,
            "stat_prefix": stat_prefix,
            "cluster": cluster,
            **extra,
        },
    }


def listener(name: str, address: str, port: int, chains: list[Resource], **extra: Any) -> Resource:
    return {
        "@type": LISTENER,
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": chains,
        **extra,
    }


def tls_listener_filters() -> list[Resource]:
    return [
        {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}
    ]


def nothing_chain() -> Resource:
    """A chain for a name no client sends, so an empty gateway still holds its port."""
    return {
        "name": "nothing",
        "filter_chain_match": {"server_names": [NOTHING_SNI]},
        "filters": [
            {
                "name": "envoy.filters.network.direct_response",
                "typed_config": {"@type": DIRECT_RESPONSE},
            }
        ],
    }
