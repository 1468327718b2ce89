"""Translate the plan into one Envoy configuration per local process.

Per mesh: a federation ingress (mTLS termination per SNI, RBAC exactly as planned), a federation
egress (TLS passthrough by SNI, failover in planned order), and a sidecar per workload (mTLS in
front of the workload; plain HTTP/TCP out to the imports through the egress, with the
workload's own certificate). Everything security-relevant comes from the plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshfed.plan.model import (
    EgressRoute,
    FederationPlan,
    ImportRoute,
    IngressServer,
    MeshPlan,
    TrustBundle,
    Workload,
)
from meshfed.plan.names import PROBE_HEADER
from meshfed.render.envoy import rbac, tls
from meshfed.render.envoy.files import ecds_ref, log_path
from meshfed.render.envoy.layout import LocalLayout, MeshLayout, SidecarLayout
from meshfed.render.envoy.process import ProcessConfig, Resource

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_RBAC = rbac.HTTP_RBAC
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
DIRECT_RESPONSE = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

CALLER_CA = "CALLER_CA"
"""Ingress: roots of the meshes allowed to call, each for its own trust domain."""
LOCAL_CA = "LOCAL_CA"
"""The mesh's own root, for its own trust domain: in-mesh peers."""
PEER_CA = "PEER_CA"
"""Sidecar: roots of the exporting meshes it imports from, each for its own domain."""

ECDS_MIN_PRINCIPALS = 32
"""An ingress chain's RBAC filter with at least this many principals loads through ECDS."""

NOTHING_SNI = "nothing-exported.invalid"
"""Envoy refuses a listener without filter chains; this reserved name (RFC 2606) is never sent."""

# Response headers that would tell a caller about the exporting mesh's insides. Envoy cannot
# remove by prefix, so the x-envoy-* names are listed.
HIDDEN_RESPONSE_HEADERS = [
    "server",
    "x-envoy-upstream-service-time",
    "x-envoy-overloaded",
    "x-envoy-ratelimited",
    "x-envoy-degraded",
    "x-envoy-decorator-operation",
    "x-envoy-immediate-health-check-fail",
    "x-envoy-upstream-healthchecked-cluster",
    "x-forwarded-for",
    "x-real-ip",
    "x-envoy-external-address",
]
ADDRESS_REQUEST_HEADERS = ["x-forwarded-for", "x-real-ip", "x-envoy-external-address"]


def _file_log(path: Path, fields: dict[str, str]) -> Resource:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_LOG,
            "path": str(path),
            "log_format": {"json_format": fields},
        },
    }


def _request_log(path: Path, mesh: str, gateway: str) -> Resource:
    return _file_log(
        path,
        {
            "time": "%START_TIME%",
            "kind": "request",
            "mesh": mesh,
            "gateway": gateway,
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
            "probe": f"%REQ({PROBE_HEADER})%",
            "peer_cert": "%DOWNSTREAM_PEER_FINGERPRINT_256%",
        },
    )


def _connection_log(path: Path, mesh: str, gateway: str) -> Resource:
    return _file_log(
        path,
        {
            "time": "%START_TIME%",
            "kind": "connection",
            "mesh": mesh,
            "gateway": gateway,
            "sni": "%REQUESTED_SERVER_NAME%",
            "caller": "%DOWNSTREAM_PEER_URI_SAN%",
            "tls_failure": "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%",
            "upstream": "%UPSTREAM_HOST%",
            "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
            "flags": "%RESPONSE_FLAGS%",
            "details": "%CONNECTION_TERMINATION_DETAILS%",
            "bytes_received": "%BYTES_RECEIVED%",
            "bytes_sent": "%BYTES_SENT%",
            "duration_ms": "%DURATION%",
            "peer_cert": "%DOWNSTREAM_PEER_FINGERPRINT_256%",
        },
    )


def _static_cluster(name: str, endpoints: list[tuple[str, int, int]]) -> Resource:
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


def _http_options(h2: bool, idle: str, max_duration: str | None = None) -> Resource:
    common: dict[str, Any] = {"idle_timeout": idle}
    if max_duration:
        common["max_connection_duration"] = max_duration
    explicit: Resource = {"http2_protocol_options": {}} if h2 else {"http_protocol_options": {}}
    return {
        HTTP_OPTIONS_KEY: {
            "@type": HTTP_OPTIONS,
            "explicit_http_config": explicit,
            "common_http_protocol_options": common,
        }
    }


def _hcm(
    stat_prefix: str,
    route_config: Resource,
    filters: list[Resource],
    access_log: list[Resource],
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
                    "typed_config": {"@type": ROUTER, "suppress_envoy_headers": True},
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


def _tcp_proxy(stat_prefix: str, cluster: str, **extra: Any) -> Resource:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": TCP_PROXY,
            "stat_prefix": stat_prefix,
            "cluster": cluster,
            **extra,
        },
    }


def _listener(name: str, address: str, port: int, chains: list[Resource], **extra: Any) -> Resource:
    return {
        "@type": LISTENER,
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": chains,
        **extra,
    }


def _tls_listener_filters() -> list[Resource]:
    return [
        {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}
    ]


def _nothing_chain() -> Resource:
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


# --- ingress -------------------------------------------------------------------------------------


def tcp_caller_ca(server: IngressServer) -> str:
    """The validation secret of a TCP export's chain: the roots of its consumers only."""
    return f"{CALLER_CA}-{server.sni}"


def _consumer_trust(trusted: tuple[TrustBundle, ...], server: IngressServer) -> list[TrustBundle]:
    """``trusted`` limited to the trust domains ``server``'s rules name."""
    domains = {rbac.trust_domain(p.value) for rule in server.allow for p in rule.principals}
    return [
        TrustBundle(b.name, b.pem, tuple(d for d in b.trust_domains if d in domains))
        for b in trusted
        if domains.intersection(b.trust_domains)
    ]


def _principal_count(server: IngressServer) -> int:
    return sum(len(rule.principals) for rule in server.allow)


def rbac_extension(server: IngressServer) -> str:
    """The ECDS resource (and file) name of ``server``'s RBAC filter configuration."""
    return f"rbac-{server.sni}"


def _rbac_filter(
    process: str,
    server: IngressServer,
    runtime_dir: Path,
    extensions: dict[str, Resource],
) -> Resource:
    """The RBAC filter of ``server``'s chain: inline, or (with many principals) loaded through
    ECDS from its own file, added to ``extensions``.

    With thousands of principals the RBAC configuration is most of the listener (megabytes), and
    Envoy re-parses the whole listener on every change of it. Through ECDS a change of one
    export's principals rewrites only that export's file, and a change elsewhere leaves it alone.
    Small configurations stay inline: every ECDS file is a watched source, and each costs Envoy
    an inotify instance, of which a user has a few hundred on a host.
    """
    http = server.protocol == "HTTP"
    if http:
        config = rbac.http_config(server)
    else:
        config = rbac.network_config(server, f"ingress_{server.sni}")
    if _principal_count(server) < ECDS_MIN_PRINCIPALS:
        name = "envoy.filters.http.rbac" if http else "envoy.filters.network.rbac"
        return {"name": name, "typed_config": config}
    name = rbac_extension(server)
    extensions[name] = config
    # Fails closed: the listener warms until Envoy read the file; if it rejects the file, the
    # filter has no configuration and Envoy answers 500 (HTTP) or closes the connection (TCP).
    return {"name": name, "config_discovery": ecds_ref(runtime_dir, process, name, config["@type"])}


def _ingress_chain(
    process: str,
    mesh: MeshPlan,
    server: IngressServer,
    runtime_dir: Path,
    extensions: dict[str, Resource],
) -> Resource:
    cluster = f"inbound|{server.workload.ref}"
    http = server.protocol == "HTTP"
    if http:
        transport = tls.downstream(runtime_dir, process, CALLER_CA, ["h2", "http/1.1"])
    else:
        # Network RBAC decides only on the caller's first byte, while tcp_proxy connects at
        # once: a server-first workload would greet a denied caller. So a TCP export admits
        # only its allowed identities to the handshake; RBAC stays as the second lock.
        #
        # The handshake's SAN list accepts a certificate if *any* of its SANs matches, and the
        # SPIFFE validator picks the root by the *first* URI SAN only. So the chain trusts only
        # the roots of the trust domains its rules name (not every caller root of the ingress):
        # a certificate that gets through must chain to a root that could mint an allowed
        # identity anyway, and one with several URI SANs is then denied by RBAC (rbac.py).
        #
        # Cost with many principals (bench/authz_scale.py): Envoy tries the SAN list in order,
        # but once per handshake, not per request. With 10,000 principals a new connection
        # cost the ingress ~1 ms more CPU (median 1.6 -> 2.7 ms, handshakes to caller and
        # workload included; 1,000: +0.3 ms); requests on open connections cost nothing more.
        # Kept as the first lock; network RBAC is the matcher (one hash lookup, rbac.py).
        # The SAN list lives in the chain's own validation secret (``_ingress``), not here.
        transport = tls.downstream(runtime_dir, process, tcp_caller_ca(server), [])
    if http:
        route_config = {
            "name": server.sni,
            "virtual_hosts": [
                {
                    "name": server.sni,
                    "domains": [server.sni],
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "15s"}}
                    ],
                }
            ],
            "request_headers_to_remove": ADDRESS_REQUEST_HEADERS,
            "response_headers_to_remove": HIDDEN_RESPONSE_HEADERS,
        }
        filters = [
            _hcm(
                f"ingress_{server.sni}",
                route_config,
                [_rbac_filter(process, server, runtime_dir, extensions)],
                [_request_log(log_path(runtime_dir, process, "access"), mesh.name, "ingress")],
                forward_client_cert_details="SANITIZE_SET",
                set_current_client_cert_details={"uri": True},
                server_header_transformation="PASS_THROUGH",
                use_remote_address=True,
                skip_xff_append=True,
            )
        ]
    else:
        filters = [
            _rbac_filter(process, server, runtime_dir, extensions),
            _tcp_proxy(f"ingress_{server.sni}", cluster),
        ]
    return {
        "name": server.sni,
        "filter_chain_match": {"server_names": [server.sni]},
        "transport_socket": transport,
        "filters": filters,
    }


def _ingress(
    plan: FederationPlan, mesh: MeshPlan, ports: MeshLayout, runtime_dir: Path
) -> ProcessConfig:
    name = f"{mesh.name}/ingress"
    ing = mesh.ingress
    extensions: dict[str, Resource] = {}
    chains = [_ingress_chain(name, mesh, s, runtime_dir, extensions) for s in ing.servers] or [
        _nothing_chain()
    ]
    clusters: list[Resource] = []
    for workload in sorted({s.workload for s in ing.servers}, key=lambda w: w.ref):
        sidecar = ports.sidecars[workload.ref]
        http = workload.protocol == "HTTP"
        cluster = _static_cluster(
            f"inbound|{workload.ref}", [("127.0.0.1", sidecar.inbound_port, 0)]
        )
        cluster["transport_socket"] = tls.upstream(
            runtime_dir,
            name,
            LOCAL_CA,
            sni=workload.fqdn,
            server_ids=[workload.spiffe_id],
            alpn=["h2"] if http else [],
        )
        if http:
            cluster["typed_extension_protocol_options"] = _http_options(True, "30s", "300s")
        clusters.append(cluster)
    listener = _listener(
        "federation-ingress",
        ing.address,
        ing.port,
        chains,
        listener_filters=_tls_listener_filters(),
        access_log=[_connection_log(log_path(runtime_dir, name, "conn"), mesh.name, "ingress")],
    )
    trust = {LOCAL_CA: tls.spiffe_validator(mesh.local_trust)}
    if ing.trusted:
        trust[CALLER_CA] = tls.spiffe_validator(ing.trusted)
    for server in ing.servers:
        if server.protocol == "TCP":
            # Only allowed identities complete the handshake (see ``_ingress_chain``).
            principals = [p for rule in server.allow for p in rule.principals]
            trust[tcp_caller_ca(server)] = tls.peer_validator(
                _consumer_trust(ing.trusted, server),
                san_exact=[p.value for p in principals if not p.prefix],
                san_prefix=[p.value for p in principals if p.prefix],
            )
    return ProcessConfig(
        name=name,
        mesh=mesh.name,
        role="ingress",
        admin_port=ports.ingress_admin_port,
        clusters=clusters,
        listeners=[listener],
        spiffe_id=ing.spiffe_id,
        trust=trust,
        extensions=extensions,
    )


# --- egress --------------------------------------------------------------------------------------


def _egress_cluster(route: EgressRoute) -> Resource:
    cluster = _static_cluster(
        f"egress|{route.wire_host}",
        [(s.address, s.port, s.priority) for s in route.sources],
    )
    # Passive ejection moves traffic at the first refused connect; the active TCP check lifts
    # it as soon as the exporter is back (outlier detection alone re-tries a dead host).
    cluster["outlier_detection"] = {
        "interval": "0.5s",
        "base_ejection_time": "1s",
        "max_ejection_time": "2s",
        "max_ejection_time_jitter": "0s",
        "max_ejection_percent": 100,
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 1,
        "enforcing_consecutive_local_origin_failure": 100,
    }
    cluster["health_checks"] = [
        {
            # A stopped exporter refuses at once; a busy one may answer late. So: a generous
            # timeout, two misses to mark it down, one success to bring it back.
            "timeout": "1s",
            "interval": "0.25s",
            "no_traffic_interval": "0.25s",
            "unhealthy_interval": "0.25s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "tcp_health_check": {},
        }
    ]
    return cluster


def _egress(mesh: MeshPlan, ports: MeshLayout, runtime_dir: Path) -> ProcessConfig:
    name = f"{mesh.name}/egress"
    access = log_path(runtime_dir, name, "access")
    chains = [
        {
            "name": route.wire_host,
            "filter_chain_match": {"server_names": [route.wire_host]},
            "filters": [
                _tcp_proxy(
                    f"egress_{route.wire_host}",
                    f"egress|{route.wire_host}",
                    max_connect_attempts=3,
                    backoff_options={"base_interval": "0.01s", "max_interval": "0.05s"},
                    idle_timeout="300s",
                    access_log=[_connection_log(access, mesh.name, "egress")],
                )
            ],
        }
        for route in mesh.egress.routes
    ] or [_nothing_chain()]
    listener = _listener(
        "federation-egress",
        "127.0.0.1",
        ports.egress_port,
        chains,
        listener_filters=_tls_listener_filters(),
        access_log=[_connection_log(log_path(runtime_dir, name, "conn"), mesh.name, "egress")],
    )
    return ProcessConfig(
        name=name,
        mesh=mesh.name,
        role="egress",
        admin_port=ports.egress_admin_port,
        clusters=[_egress_cluster(r) for r in mesh.egress.routes],
        listeners=[listener],
        spiffe_id=None,
    )


# --- sidecars ------------------------------------------------------------------------------------


def _inbound(
    process: str, mesh: MeshPlan, workload: Workload, sidecar: SidecarLayout, runtime_dir: Path
) -> Resource:
    """mTLS in front of the workload: peers of its own trust domain only."""
    http = workload.protocol == "HTTP"
    transport = tls.downstream(
        runtime_dir,
        process,
        LOCAL_CA,
        ["h2", "http/1.1"] if http else [],
        san_prefix=[f"spiffe://{mesh.trust_domain}/"],
    )
    if not http:
        filters = [_tcp_proxy("inbound", "app")]
    else:
        # The workload learns its caller from XFCC. Only the mesh's ingress may forward one: a
        # ',' means the peer sent its own element (the sidecar's is appended before filters).
        guard = {
            "action": "DENY",
            "policies": {
                "xfcc-only-from-ingress": {
                    "permissions": [{"any": True}],
                    "principals": [
                        {
                            "and_ids": {
                                "ids": [
                                    {
                                        "header": {
                                            "name": "x-forwarded-client-cert",
                                            "string_match": {"contains": ","},
                                        }
                                    },
                                    {
                                        "not_id": {
                                            "authenticated": {
                                                "principal_name": {"exact": mesh.ingress.spiffe_id}
                                            }
                                        }
                                    },
                                ]
                            }
                        }
                    ],
                }
            },
        }
        route_config = {
            "name": "inbound",
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "15s"}}
                    ],
                }
            ],
        }
        filters = [
            _hcm(
                "inbound",
                route_config,
                [
                    {
                        "name": "envoy.filters.http.rbac",
                        "typed_config": {"@type": HTTP_RBAC, "rules": guard},
                    }
                ],
                [],
                forward_client_cert_details="APPEND_FORWARD",
                set_current_client_cert_details={"uri": True},
            )
        ]
    return _listener(
        "inbound",
        "127.0.0.1",
        sidecar.inbound_port,
        [{"transport_socket": transport, "filters": filters}],
    )


def _outbound_http(imports: list[ImportRoute], port: int) -> Resource:
    virtual_hosts = [
        {
            "name": route.local_host,
            "domains": [route.local_host],
            "routes": [
                {
                    "match": {"prefix": "/"},
                    "route": {
                        "cluster": f"outbound|{route.wire_host}",
                        "host_rewrite_literal": route.wire_host,
                        "timeout": "15s",
                        "retry_policy": {
                            "retry_on": "reset,connect-failure,refused-stream",
                            "num_retries": 3,
                            "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
                        },
                    },
                }
            ],
        }
        for route in imports
    ]
    return _listener(
        "outbound",
        "127.0.0.1",
        port,
        [
            {
                "filters": [
                    _hcm(
                        "outbound",
                        {"name": "outbound", "virtual_hosts": virtual_hosts},
                        [],
                        [],
                        # A workload's own XFCC never leaves: the remote ingress sets its own.
                        forward_client_cert_details="SANITIZE",
                    )
                ]
            }
        ],
    )


def _sidecar(
    mesh: MeshPlan, workload: Workload, ports: MeshLayout, runtime_dir: Path
) -> ProcessConfig:
    name = f"{mesh.name}/sidecar/{workload.ref}"
    sidecar = ports.sidecars[workload.ref]
    http_imports = [r for r in mesh.imports if r.protocol == "HTTP"]
    listeners = [
        _inbound(name, mesh, workload, sidecar, runtime_dir),
        _outbound_http(http_imports, sidecar.outbound_port),
    ]
    app = _static_cluster("app", [("127.0.0.1", sidecar.app_port, 0)])
    if workload.protocol == "HTTP":
        app["typed_extension_protocol_options"] = _http_options(False, "30s")
    clusters = [app]
    for route in mesh.imports:
        http = route.protocol == "HTTP"
        cluster = _static_cluster(
            f"outbound|{route.wire_host}", [("127.0.0.1", ports.egress_port, 0)]
        )
        cluster["transport_socket"] = tls.upstream(
            runtime_dir,
            name,
            PEER_CA,
            sni=route.wire_host,
            server_ids=list(route.upstream_spiffe_ids),
            alpn=["h2"] if http else [],
        )
        if http:
            # Bounded connection life: failback and certificate rotation reach new connections.
            cluster["typed_extension_protocol_options"] = _http_options(True, "10s", "2s")
        else:
            key = f"{route.local_host}:{route.port}"
            listeners.append(
                _listener(
                    f"outbound-tcp|{key}",
                    "127.0.0.1",
                    sidecar.tcp_outbound[key],
                    [{"filters": [_tcp_proxy(f"outbound_{key}", f"outbound|{route.wire_host}")]}],
                )
            )
        clusters.append(cluster)
    trust = {LOCAL_CA: tls.spiffe_validator(mesh.local_trust)}
    peer_bundles = [b for r in mesh.imports for b in r.trusted]
    if peer_bundles:
        trust[PEER_CA] = tls.spiffe_validator(peer_bundles)
    return ProcessConfig(
        name=name,
        mesh=mesh.name,
        role="sidecar",
        admin_port=sidecar.admin_port,
        clusters=clusters,
        listeners=listeners,
        spiffe_id=workload.spiffe_id,
        trust=trust,
        workload=workload.ref,
    )


def render_local(
    plan: FederationPlan, layout: LocalLayout, runtime_dir: Path
) -> list[ProcessConfig]:
    """Every Envoy of the local federation, in a stable order."""
    processes: list[ProcessConfig] = []
    for mesh in plan.meshes:
        ports = layout.meshes[mesh.name]
        processes.append(_ingress(plan, mesh, ports, runtime_dir))
        processes.append(_egress(mesh, ports, runtime_dir))
        processes.extend(_sidecar(mesh, w, ports, runtime_dir) for w in mesh.workloads)
    return processes
