"""The local sidecar of a workload: inbound mTLS in front of it (its own trust domain only) and
outbound listeners to its imports, through the mesh's egress, with the workload's certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, assert_never

from meshfed.plan.model import ImportRoute, MeshPlan, Workload
from meshfed.render.envoy import rbac, tls
from meshfed.render.envoy.access_log import hop_log, probe_request_log
from meshfed.render.envoy.builders import hcm, http_options, listener, static_cluster, tcp_proxy
from meshfed.render.envoy.files import log_path
from meshfed.render.envoy.layout import MeshLayout, SidecarLayout
from meshfed.render.envoy.limits import (
    chain_fields,
    cluster_fields,
    duration,
    hcm_fields,
    listener_fields,
    tcp_fields,
)
from meshfed.render.envoy.process import ProcessConfig, Resource
from meshfed.render.envoy.tls import LOCAL_CA, PEER_CA, cert_details
from meshfed.render.local_reply import local_reply_config


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
    limits = mesh.limits.internal
    if not http:
        filters = [tcp_proxy("inbound", "app", **tcp_fields(limits))]
    else:
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
        # Who may pass a caller on to the workload: only the mesh's ingress, and (an exported
        # workload) only for the callers its exports allow, on the identity the ingress read
        # from the caller's certificate (`meshfed.plan.guard`, `rbac.sidecar_config`).
        exported = mesh.guard(workload.ref)
        guard = {
            "name": "envoy.filters.http.rbac",
            "typed_config": rbac.sidecar_config(xfcc.forwarder, exported),
        }
        manager = hcm(
            "inbound",
            route_config,
            [guard],
            [],
            forward_client_cert_details=xfcc.to_workload,
            set_current_client_cert_details=cert_details(xfcc),
            **hcm_fields(limits),
        )
        # Its answers for the workload reach callers across the boundary through the ingress.
        replies = mesh.boundary.local_replies
        if exported is not None and replies.at_exported_workloads:
            manager["typed_config"]["local_reply_config"] = local_reply_config(replies)
        filters = [manager]
    return listener(
        "inbound",
        "127.0.0.1",
        sidecar.inbound_port,
        [{"transport_socket": transport, "filters": filters, **chain_fields(limits)}],
        **listener_fields(limits, listener_filters=False),
    )


def _unregistered(mesh: MeshPlan) -> list[Resource]:
    """The outbound listener's answer to a host that is none of the mesh's imports, as the
    plan's outbound policy says: REGISTRY_ONLY refuses it with 502, as Istio's sidecars do
    (their ``block_all`` virtual host)."""
    if mesh.boundary.outbound == "REGISTRY_ONLY":
        route = {"name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}
        return [{"name": "block_all", "domains": ["*"], "routes": [route]}]
    assert_never(mesh.boundary.outbound)


def _retry_policy(route: ImportRoute) -> Resource:
    """The plan's retries of a call that reached no workload (`meshfed.plan.limits`)."""
    retries = route.retries
    if retries is None:
        return {}
    return {
        "retry_policy": {
            "retry_on": ",".join(retries.retry_on),
            "num_retries": retries.attempts,
            "retry_back_off": {
                "base_interval": duration(retries.base_interval),
                "max_interval": duration(retries.max_interval),
            },
        }
    }


def _probe_route(mesh: MeshPlan, route: ImportRoute) -> list[Resource]:
    """A marked probe's own route (`meshfed.plan.probes.ProbeMarking`): the import's, to its
    own cluster of one request per connection, without the sidecar's retries."""
    if not mesh.probes.own_connection:
        return []
    return [
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": mesh.probes.header, "present_match": True}],
            },
            "route": {
                "cluster": f"probe|{route.wire_host}",
                "host_rewrite_literal": route.wire_host,
                "timeout": "15s",
            },
        }
    ]


def outbound_http(
    mesh: MeshPlan, imports: list[ImportRoute], port: int, access_log: list[Resource]
) -> Resource:
    virtual_hosts = [
        {
            "name": route.local_host,
            "domains": [route.local_host],
            "routes": [
                *_probe_route(mesh, route),
                {
                    "match": {"prefix": "/"},
                    "route": {
                        "cluster": f"outbound|{route.wire_host}",
                        "host_rewrite_literal": route.wire_host,
                        "timeout": "15s",
                        **_retry_policy(route),
                    },
                },
            ],
        }
        for route in imports
    ]
    virtual_hosts += _unregistered(mesh)
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
                        access_log,
                        # A workload's own XFCC never leaves: the remote ingress sets its own.
                        forward_client_cert_details=mesh.boundary.client_cert.leaving,
                        **hcm_fields(mesh.limits.internal),
                    )
                ]
            }
        ],
        **listener_fields(mesh.limits.internal, listener_filters=False),
    )


def sidecar_process(
    mesh: MeshPlan, workload: Workload, ports: MeshLayout, runtime_dir: Path
) -> ProcessConfig:
    name = f"{mesh.name}/sidecar/{workload.ref}"
    sidecar = ports.sidecars[workload.ref]
    http_imports = [r for r in mesh.imports if r.protocol == "HTTP"]
    access = log_path(runtime_dir, name, "access")
    # Its log is the first hop of an HTTP import probe's evidence (`access_log.probe_request_log`).
    probe_log = (
        [probe_request_log(access, mesh.name, workload.ref, mesh.probes.header)]
        if mesh.probes.own_connection and http_imports
        else []
    )
    listeners = [
        inbound(name, mesh, workload, sidecar, runtime_dir),
        outbound_http(mesh, http_imports, sidecar.outbound_port, probe_log),
    ]
    limits = mesh.limits.internal
    app = static_cluster("app", [("127.0.0.1", sidecar.app_port, 0)])
    if workload.protocol == "HTTP":
        app["typed_extension_protocol_options"] = http_options(False, "30s")
    clusters = [{**app, **cluster_fields(limits)}]
    for route in mesh.imports:
        http = route.protocol == "HTTP"

        def to_egress(kind: str, route: ImportRoute = route, **pool: Any) -> Resource:
            """The import's cluster: to the egress, the workload's certificate, its SNI."""
            return tls.mtls_cluster(
                f"{kind}|{route.wire_host}",
                ports.egress_port,
                runtime_dir,
                name,
                PEER_CA,
                sni=route.wire_host,
                server_ids=route.upstream_spiffe_ids,
                http=route.protocol == "HTTP",
                idle="10s",
                **pool,
            )

        # Bounded connection life (the plan's): failback and certificate rotation reach new
        # connections.
        life = route.connection_life
        cluster = to_egress(
            "outbound", max_duration=f"{life.total_seconds():g}s" if life is not None else None
        )
        if http and mesh.probes.own_connection:
            # A marked probe's: one request per connection (`ProbeMarking`).
            clusters.append({**to_egress("probe", max_requests=1), **cluster_fields(limits)})
        if not http:
            key = f"{route.local_host}:{route.port}"
            # Its log is the first hop of a TCP import probe's evidence (`access_log.hop_log`).
            hops = hop_log(access, mesh.name, workload.ref, route.wire_host)
            proxy = tcp_proxy(
                f"outbound_{key}",
                f"outbound|{route.wire_host}",
                access_log=[hops],
                **tcp_fields(limits),
            )
            listeners.append(
                listener(
                    f"outbound-tcp|{key}",
                    "127.0.0.1",
                    sidecar.tcp_outbound[key],
                    [{"filters": [proxy]}],
                    **listener_fields(limits, listener_filters=False),
                )
            )
        clusters.append({**cluster, **cluster_fields(limits)})
    trust = {LOCAL_CA: tls.spiffe_validator(mesh.local_trust)}
    if mesh.import_trust:
        trust[PEER_CA] = tls.spiffe_validator(mesh.import_trust)
    return ProcessConfig(
        name=name,
        mesh=mesh.name,
        role="sidecar",
        admin_socket=sidecar.admin_socket,
        clusters=clusters,
        listeners=listeners,
        spiffe_id=workload.spiffe_id,
        trust=trust,
        workload=workload.ref,
        max_connections=mesh.limits.max_connections_per_proxy,
        # Listeners whose names never change: a cap per listener is in the bootstrap, and an
        # import's own listener coming or going must not restart the sidecar (the proxy's
        # overall cap covers those).
        listener_caps={"inbound": limits.max_connections, "outbound": limits.max_connections},
    )
