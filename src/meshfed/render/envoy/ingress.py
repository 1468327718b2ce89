"""The local federation ingress of a mesh: mTLS termination per SNI, RBAC exactly as planned.

One listener; one filter chain per exported SNI (HTTP: HCM with the RBAC filter; TCP: only
allowed identities complete the handshake, then a tunnel authorizes the caller's certificate
before the workload is connected, `tunnel`), plus one chain that answers consumers' egress
probes; one cluster per exported workload, reached over the mesh's own mTLS. Every phase of a
connection is bounded by the plan's limits (`limits`).
"""

from __future__ import annotations

from pathlib import Path

from meshfed.plan.model import FederationPlan, IngressServer, MeshPlan
from meshfed.render.envoy import rbac, tls
from meshfed.render.envoy.access_log import connection_log, request_log
from meshfed.render.envoy.builders import (
    hcm,
    listener,
    nothing_chain,
    static_cluster,
    tcp_proxy,
    tls_listener_filters,
)
from meshfed.render.envoy.files import log_path
from meshfed.render.envoy.layout import MeshLayout
from meshfed.render.envoy.limits import chain_fields, cluster_fields, hcm_fields, listener_fields
from meshfed.render.envoy.process import ProcessConfig, Resource
from meshfed.render.envoy.tls import CALLER_CA, LOCAL_CA, cert_details
from meshfed.render.envoy.tunnel import (
    outer_proxy,
    rbac_filter,
    tunnel_cluster,
    tunnel_listener,
)
from meshfed.render.local_reply import local_reply_config

LISTENER_NAME = "federation-ingress"


def tcp_caller_ca(server: IngressServer) -> str:
    """The validation secret of a TCP export's chain: the roots of its consumers only."""
    return f"{CALLER_CA}-{server.sni}"


def _http_chain(
    process: str,
    mesh: MeshPlan,
    server: IngressServer,
    runtime_dir: Path,
    extensions: dict[str, Resource],
) -> Resource:
    boundary = mesh.boundary
    route_config = {
        "name": server.sni,
        "virtual_hosts": [
            {
                "name": server.sni,
                "domains": [server.sni],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {"cluster": f"inbound|{server.workload.ref}", "timeout": "15s"},
                    }
                ],
            }
        ],
        # Removed first, then added (Envoy's header parser): a caller's own copy of the caller
        # header never survives, also where the value would be empty.
        "request_headers_to_remove": list(boundary.request_headers_removed_for(server.sni)),
        "request_headers_to_add": [
            {
                "header": {"key": boundary.caller_header, "value": "%DOWNSTREAM_PEER_URI_SAN%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "response_headers_to_remove": list(boundary.response_headers_removed),
    }
    manager = hcm(
        f"ingress_{server.sni}",
        route_config,
        [rbac_filter(process, server, rbac.http_config(server), runtime_dir, extensions)],
        [request_log(log_path(runtime_dir, process, "access"), mesh.name, "ingress")],
        suppress_envoy_headers=not boundary.proxy_debug_headers,
        forward_client_cert_details=boundary.client_cert.at_ingress,
        set_current_client_cert_details=cert_details(boundary.client_cert),
        # The upstream's server header reaches the route, which removes it (above).
        server_header_transformation="PASS_THROUGH",
        # The caller's address is its TCP peer, never a header it sent; and it is not
        # appended to x-forwarded-for unless the plan forwards it.
        use_remote_address=True,
        skip_xff_append=not boundary.forward_caller_address,
        normalize_path=boundary.paths.normalize,
        merge_slashes=boundary.paths.merge_slashes,
        path_with_escaped_slashes_action=f"{boundary.paths.escaped_slashes}_REQUEST",
        # What the ingress answers itself says what the status says, nothing of the mesh.
        local_reply_config=local_reply_config(boundary.local_replies),
        **hcm_fields(mesh.limits.ingress),
    )
    return {
        "name": server.sni,
        "filter_chain_match": {"server_names": [server.sni]},
        "transport_socket": tls.downstream(runtime_dir, process, CALLER_CA, ["h2", "http/1.1"]),
        "filters": [manager],
        **chain_fields(mesh.limits.ingress),
    }


def _tcp_chain(process: str, mesh: MeshPlan, server: IngressServer, runtime_dir: Path) -> Resource:
    # Only allowed identities complete the handshake: the chain trusts only the roots of the
    # trust domains its rules name (not every caller root of the ingress), and its validation
    # secret lists the allowed identities (``ingress_process``). A certificate with several URI
    # SANs gets through when one of them is listed (Envoy's SAN check is any-SAN); the tunnel
    # then refuses it before the workload is connected (`tunnel`).
    #
    # Cost with many principals (bench/authz_scale.py): Envoy tries the SAN list in order, but
    # once per handshake, not per request. With 10,000 principals a new connection cost the
    # ingress ~1 ms more CPU (median 1.6 -> 2.7 ms, handshakes to caller and workload included;
    # 1,000: +0.3 ms); requests on open connections cost nothing more.
    return {
        "name": server.sni,
        "filter_chain_match": {"server_names": [server.sni]},
        "transport_socket": tls.downstream(runtime_dir, process, tcp_caller_ca(server), []),
        "filters": [outer_proxy(mesh, server)],
        **chain_fields(mesh.limits.ingress),
    }


PROBE_CLUSTER = "probe"
"""A cluster without endpoints: where the probe chain would send a completed handshake."""


def _probe_chain(process: str, mesh: MeshPlan, sni: str, runtime_dir: Path) -> Resource:
    """Answers a consumer egress's probe (`render/envoy/probe.py`) with the ServerHello: a TLS
    chain whose proxy waits for a completed handshake (never, for a probe; bounded like any
    other) and then has nowhere to go."""
    proxy = tcp_proxy(
        "probe",
        PROBE_CLUSTER,
        upstream_connect_mode="ON_DOWNSTREAM_TLS_HANDSHAKE",
        max_early_data_bytes=0,
    )
    return {
        "name": "probe",
        "filter_chain_match": {"server_names": [sni]},
        "transport_socket": tls.downstream(runtime_dir, process, LOCAL_CA, []),
        "filters": [proxy],
        **chain_fields(mesh.limits.ingress),
    }


def ingress_process(
    plan: FederationPlan, mesh: MeshPlan, ports: MeshLayout, runtime_dir: Path
) -> ProcessConfig:
    name = f"{mesh.name}/ingress"
    ing = mesh.ingress
    limits = mesh.limits.ingress
    extensions: dict[str, Resource] = {}
    chains = [
        _http_chain(name, mesh, s, runtime_dir, extensions)
        if s.protocol == "HTTP"
        else _tcp_chain(name, mesh, s, runtime_dir)
        for s in ing.servers
    ]
    if ing.probe_sni:
        chains.append(_probe_chain(name, mesh, ing.probe_sni, runtime_dir))
    tcp = [s for s in ing.servers if s.protocol == "TCP"]
    internal = [tunnel_listener(name, mesh, s, runtime_dir, extensions) for s in tcp]
    clusters: list[Resource] = [tunnel_cluster(mesh, s) for s in tcp]
    if ing.probe_sni:
        clusters.append(static_cluster(PROBE_CLUSTER, []))
    for workload in sorted({s.workload for s in ing.servers}, key=lambda w: w.ref):
        sidecar = ports.sidecars[workload.ref]
        cluster = tls.mtls_cluster(
            f"inbound|{workload.ref}",
            sidecar.inbound_port,
            runtime_dir,
            name,
            LOCAL_CA,
            sni=workload.fqdn,
            server_ids=[workload.spiffe_id],
            http=workload.protocol == "HTTP",
            idle="30s",
            max_duration="300s",
        )
        clusters.append({**cluster, **cluster_fields(limits)})
    gateway = listener(
        LISTENER_NAME,
        ing.address,
        ing.port,
        chains or [nothing_chain()],
        listener_filters=tls_listener_filters(),
        access_log=[connection_log(log_path(runtime_dir, name, "conn"), mesh.name, "ingress")],
        **listener_fields(limits, listener_filters=True),
    )
    trust = {LOCAL_CA: tls.spiffe_validator(mesh.local_trust)}
    if ing.trusted:
        trust[CALLER_CA] = tls.spiffe_validator(ing.trusted)
    for server in ing.servers:
        if server.protocol == "TCP":
            # Only allowed identities complete the handshake (see ``_ingress_chain``).
            principals = [p for rule in server.allow for p in rule.principals]
            trust[tcp_caller_ca(server)] = tls.peer_validator(
                server.trusted,
                san_exact=[p.value for p in principals if not p.prefix],
                san_prefix=[p.value for p in principals if p.prefix],
            )
    return ProcessConfig(
        name=name,
        mesh=mesh.name,
        role="ingress",
        admin_socket=ports.ingress_admin,
        clusters=clusters,
        listeners=[gateway, *internal],
        spiffe_id=ing.spiffe_id,
        trust=trust,
        max_connections=mesh.limits.max_connections_per_proxy,
        listener_caps={LISTENER_NAME: limits.max_connections},
        # Always: the first TCP export must not change the bootstrap (a restart).
        internal_listeners=True,
        extensions=extensions,
    )
