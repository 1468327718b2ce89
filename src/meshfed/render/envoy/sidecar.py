"""The local sidecar of a workload: inbound mTLS in front of it (its own trust domain only) and
outbound listeners to its imports, through the mesh's egress, with the workload's certificate.
"""

from __future__ import annotations

from pathlib import Path

from meshfed.plan.model import ImportRoute, MeshPlan, Workload
from meshfed.render.envoy import tls
from meshfed.render.envoy.builders import hcm, http_options, listener, static_cluster, tcp_proxy
from meshfed.render.envoy.layout import MeshLayout, SidecarLayout
from meshfed.render.envoy.process import ProcessConfig, Resource
from meshfed.render.envoy.rbac import HTTP_RBAC
from meshfed.render.envoy.tls import LOCAL_CA, PEER_CA, cert_details


def inbound(
    process: str, mesh: MeshPlan, workload: Workload, sidecar: SidecarLayout, runtime_dir: Path
) -> Resource:
    """mTLS in front of the workload: peers of its own trust domain only."""
    http = workload.protocol == "HTTP"
    xfcc = mesh.boundary.client_cert
    transport = tls.downstream(
        runtime_dir,
        process,
        LOCAL_CA,
        ["h2", "http/1.1"] if http else [],
        san_prefix=[mesh.local_peers.value],
    )
    if not http:
        filters = [tcp_proxy("inbound", "app")]
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
                                                "principal_name": {"exact": xfcc.forwarder}
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
            hcm(
                "inbound",
                route_config,
                [
                    {
                        "name": "envoy.filters.http.rbac",
                        "typed_config": {"@type": HTTP_RBAC, "rules": guard},
                    }
                ],
                [],
                forward_client_cert_details=xfcc.to_workload,
                set_current_client_cert_details=cert_details(xfcc),
            )
        ]
    return listener(
        "inbound",
        "127.0.0.1",
        sidecar.inbound_port,
        [{"transport_socket": transport, "filters": filters}],
    )


def outbound_http(mesh: MeshPlan, imports: list[ImportRoute], port: int) -> Resource:
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
    return listener(
        "outbound",
        "127.0.0.1",
        port,
        [
            {
                "filters": [
                    hcm(
                        "outbound",
                        {"name": "outbound", "virtual_hosts": virtual_hosts},
                        [],
                        [],
                        # A workload's own XFCC never leaves: the remote ingress sets its own.
                        forward_client_cert_details=mesh.boundary.client_cert.leaving,
                    )
                ]
            }
        ],
    )


def sidecar_process(
    mesh: MeshPlan, workload: Workload, ports: MeshLayout, runtime_dir: Path
) -> ProcessConfig:
    name = f"{mesh.name}/sidecar/{workload.ref}"
    sidecar = ports.sidecars[workload.ref]
    http_imports = [r for r in mesh.imports if r.protocol == "HTTP"]
    listeners = [
        inbound(name, mesh, workload, sidecar, runtime_dir),
        outbound_http(mesh, http_imports, sidecar.outbound_port),
    ]
    app = static_cluster("app", [("127.0.0.1", sidecar.app_port, 0)])
    if workload.protocol == "HTTP":
        app["typed_extension_protocol_options"] = http_options(False, "30s")
    clusters = [app]
    for route in mesh.imports:
        http = route.protocol == "HTTP"
        cluster = static_cluster(
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
            cluster["typed_extension_protocol_options"] = http_options(True, "10s", "2s")
        else:
            key = f"{route.local_host}:{route.port}"
            listeners.append(
                listener(
                    f"outbound-tcp|{key}",
                    "127.0.0.1",
                    sidecar.tcp_outbound[key],
                    [{"filters": [tcp_proxy(f"outbound_{key}", f"outbound|{route.wire_host}")]}],
                )
            )
        clusters.append(cluster)
    trust = {LOCAL_CA: tls.spiffe_validator(mesh.local_trust)}
    if mesh.import_trust:
        trust[PEER_CA] = tls.spiffe_validator(mesh.import_trust)
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
