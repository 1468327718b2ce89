"""A TCP export's way to its workload: authorized on the caller's certificate before connecting.

Envoy's network RBAC decides only on the caller's first byte (research notes Q9), while a
server-first workload (a database, SMTP) greets as soon as it is connected. The handshake's SAN
list refuses a single-SAN identity the export does not allow, but it accepts a certificate if
*any* SAN matches, so a leaf with two URI SANs, one allowed, completed the handshake and got the
workload's greeting before RBAC cut it.

So the export's filter chain does not connect to the workload. Its tcp_proxy, once the TLS
handshake is done (``upstream_connect_mode: ON_DOWNSTREAM_TLS_HANDSHAKE``, nothing earlier),
opens an HTTP/1.1 CONNECT tunnel to an internal listener of the same Envoy, with a header it sets
itself to the caller's verified URI SANs (``%DOWNSTREAM_PEER_URI_SAN%``, several joined by
``,``; the caller cannot add headers to a request it never writes). The internal listener's
connection manager runs the export's RBAC (the same unified matcher as the ingress's, on that
header: several SANs are denied first) and only then connects to the workload (CONNECT
terminated, raw TCP onwards). A denied caller gets the handshake and then a closed connection,
no byte of the workload, which never sees a connection. Measured on Envoy 1.40: allowed callers
are greeted before they send anything; ``[allowed, denied]`` and ``[denied, allowed]`` leaves
get 0 bytes; the workload accepts only allowed callers' connections.

One internal listener (and one tunnel cluster) per TCP export; each session is its own internal
connection, so the listener's per-connection buffer limit applies to it as to the outer one.
"""

from __future__ import annotations

from pathlib import Path

from meshfed.plan.model import IngressServer, MeshPlan
from meshfed.plan.names import TUNNEL_LOCAL_ADDRESS, TUNNEL_PEER_ADDRESS
from meshfed.render.envoy import rbac
from meshfed.render.envoy.access_log import TUNNEL_PEER_CERT, tunnel_log
from meshfed.render.envoy.builders import LISTENER, hcm, http_options
from meshfed.render.envoy.files import ecds_ref, log_path
from meshfed.render.envoy.limits import cluster_fields, duration, tcp_fields, tunnel_hcm_fields
from meshfed.render.envoy.process import Resource

ECDS_MIN_PRINCIPALS = 32
"""An export's RBAC filter (its chain's or its tunnel's) with at least this many principals
loads through ECDS (`rbac_filter`)."""


def tunnel_name(server: IngressServer) -> str:
    """The internal listener (and the tunnel cluster) of a TCP export."""
    return f"tunnel|{server.sni}"


def rbac_extension(server: IngressServer) -> str:
    """The ECDS resource (and file) name of ``server``'s RBAC filter configuration."""
    return f"rbac-{server.sni}"


def outer_proxy(mesh: MeshPlan, server: IngressServer) -> Resource:
    """The export chain's tcp_proxy: after the handshake, a CONNECT to the export's tunnel,
    carrying the caller's verified URI SANs."""
    limits = mesh.limits.ingress
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": f"ingress_{server.sni}",
            "cluster": tunnel_name(server),
            **tcp_fields(limits),
            # Nothing is connected for a caller whose handshake fails or stalls.
            "upstream_connect_mode": "ON_DOWNSTREAM_TLS_HANDSHAKE",
            # What a caller sends before its tunnel is authorized waits here, bounded.
            "max_early_data_bytes": limits.buffer_limit_bytes,
            "tunneling_config": {
                # HTTP/1.1 CONNECT wants authority form (host:port).
                "hostname": f"{server.sni}:{mesh.ingress.port}",
                "headers_to_add": [
                    {
                        "header": {
                            "key": mesh.boundary.caller_header,
                            "value": "%DOWNSTREAM_PEER_URI_SAN%",
                        }
                    },
                    {
                        "header": {
                            "key": TUNNEL_PEER_CERT,
                            "value": "%DOWNSTREAM_PEER_FINGERPRINT_256%",
                        }
                    },
                    # The caller connection's addresses, for the tunnel's log line: the evidence
                    # that ties a session to a connection an egress opened (`local/prober.py`).
                    {
                        "header": {
                            "key": TUNNEL_PEER_ADDRESS,
                            "value": "%DOWNSTREAM_REMOTE_ADDRESS%",
                        }
                    },
                    {
                        "header": {
                            "key": TUNNEL_LOCAL_ADDRESS,
                            "value": "%DOWNSTREAM_LOCAL_ADDRESS%",
                        }
                    },
                ],
            },
        },
    }


def tunnel_cluster(mesh: MeshPlan, server: IngressServer) -> Resource:
    """The cluster the outer tcp_proxy tunnels through: the export's internal listener."""
    name = tunnel_name(server)
    return {
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "envoy_internal_address": {"server_listener_name": name}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        # One internal connection per session (HTTP/1.1), never reused.
        "typed_extension_protocol_options": http_options(
            False, duration(mesh.limits.ingress.tcp_idle_timeout)
        ),
        **cluster_fields(mesh.limits.ingress),
    }


def rbac_filter(
    process: str,
    server: IngressServer,
    config: Resource,
    runtime_dir: Path,
    extensions: dict[str, Resource],
) -> Resource:
    """The RBAC filter of ``server`` (its chain's, or its tunnel's) with ``config``: inline,
    or (with many principals) loaded through ECDS from its own file, added to ``extensions``.

    With thousands of principals the RBAC configuration is most of the listener (megabytes), and
    Envoy re-parses the whole listener on every change of it. Through ECDS a change of one
    export's principals rewrites only that export's file, and a change elsewhere leaves it alone.
    Small configurations stay inline: every ECDS file is a watched source, and each costs Envoy
    an inotify instance, of which a user has a few hundred on a host.
    """
    if sum(len(rule.principals) for rule in server.allow) < ECDS_MIN_PRINCIPALS:
        return {"name": "envoy.filters.http.rbac", "typed_config": config}
    name = rbac_extension(server)
    extensions[name] = config
    # Fails closed: the listener warms until Envoy read the file; if it rejects the file, the
    # filter has no configuration and Envoy answers 500.
    return {"name": name, "config_discovery": ecds_ref(runtime_dir, process, name, config["@type"])}


def tunnel_listener(
    process: str,
    mesh: MeshPlan,
    server: IngressServer,
    runtime_dir: Path,
    extensions: dict[str, Resource],
) -> Resource:
    """The export's internal listener: RBAC on the CONNECT, then the workload, raw TCP."""
    route_config = {
        "name": server.sni,
        "virtual_hosts": [
            {
                "name": server.sni,
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"connect_matcher": {}},
                        "route": {
                            "cluster": f"inbound|{server.workload.ref}",
                            "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                            "timeout": "0s",
                        },
                    }
                ],
            }
        ],
    }
    manager = hcm(
        f"ingress_{server.sni}",
        route_config,
        [
            rbac_filter(
                process,
                server,
                rbac.tunnel_config(server, mesh.boundary.caller_header),
                runtime_dir,
                extensions,
            )
        ],
        [
            tunnel_log(
                log_path(runtime_dir, process, "access"),
                mesh.name,
                server.sni,
                mesh.boundary.caller_header,
            )
        ],
        **tunnel_hcm_fields(mesh.limits.ingress),
    )
    return {
        "@type": LISTENER,
        "name": tunnel_name(server),
        "internal_listener": {},
        # Its sessions are the outer listener's, which the caps already count.
        "ignore_global_conn_limit": True,
        "per_connection_buffer_limit_bytes": mesh.limits.ingress.buffer_limit_bytes,
        "filter_chains": [{"filters": [manager]}],
    }
