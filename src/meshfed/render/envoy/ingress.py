"""The local federation ingress of a mesh: mTLS termination per SNI, RBAC exactly as planned.

One listener; one filter chain per exported SNI (HTTP: HCM with the RBAC filter; TCP: network
RBAC in front of tcp_proxy, and only allowed identities complete the handshake); one cluster per
exported workload, reached over the mesh's own mTLS.
"""

from __future__ import annotations

from pathlib import Path

from meshfed.plan.model import FederationPlan, IngressServer, MeshPlan
from meshfed.render.envoy import rbac, tls
from meshfed.render.envoy.access_log import connection_log, request_log
from meshfed.render.envoy.builders import (
    hcm,
    http_options,
    listener,
    nothing_chain,
    static_cluster,
    tcp_proxy,
    tls_listener_filters,
)
from meshfed.render.envoy.files import ecds_ref, log_path
from meshfed.render.envoy.layout import MeshLayout
from meshfed.render.envoy.process import ProcessConfig, Resource
from meshfed.render.envoy.tls import CALLER_CA, LOCAL_CA, cert_details

ECDS_MIN_PRINCIPALS = 32
"""An ingress chain's RBAC filter with at least this many principals loads through ECDS."""


def tcp_caller_ca(server: IngressServer) -> str:
    """The validation secret of a TCP export's chain: the roots of its consumers only."""
    return f"{CALLER_CA}-{server.sni}"


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
    boundary = mesh.boundary
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
        # The SAN list lives in the chain's own validation secret (``ingress``), not here.
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
            "request_headers_to_remove": list(boundary.request_headers_removed),
            "response_headers_to_remove": list(boundary.response_headers_removed),
        }
        filters = [
            hcm(
                f"ingress_{server.sni}",
                route_config,
                [_rbac_filter(process, server, runtime_dir, extensions)],
                [request_log(log_path(runtime_dir, process, "access"), mesh.name, "ingress")],
                forward_client_cert_details=boundary.client_cert.at_ingress,
                set_current_client_cert_details=cert_details(boundary.client_cert),
                # The upstream's server header reaches the route, which removes it (above).
                server_header_transformation="PASS_THROUGH",
                # The caller's address is its TCP peer, never a header it sent; and it is not
                # appended to x-forwarded-for unless the plan forwards it.
                use_remote_address=True,
                skip_xff_append=not boundary.forward_caller_address,
            )
        ]
    else:
        filters = [
            _rbac_filter(process, server, runtime_dir, extensions),
            tcp_proxy(f"ingress_{server.sni}", cluster),
        ]
    return {
        "name": server.sni,
        "filter_chain_match": {"server_names": [server.sni]},
        "transport_socket": transport,
        "filters": filters,
    }


def ingress_process(
    plan: FederationPlan, mesh: MeshPlan, ports: MeshLayout, runtime_dir: Path
) -> ProcessConfig:
    name = f"{mesh.name}/ingress"
    ing = mesh.ingress
    extensions: dict[str, Resource] = {}
    chains = [_ingress_chain(name, mesh, s, runtime_dir, extensions) for s in ing.servers] or [
        nothing_chain()
    ]
    clusters: list[Resource] = []
    for workload in sorted({s.workload for s in ing.servers}, key=lambda w: w.ref):
        sidecar = ports.sidecars[workload.ref]
        http = workload.protocol == "HTTP"
        cluster = static_cluster(
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
            cluster["typed_extension_protocol_options"] = http_options(True, "30s", "300s")
        clusters.append(cluster)
    gateway = listener(
        "federation-ingress",
        ing.address,
        ing.port,
        chains,
        listener_filters=tls_listener_filters(),
        access_log=[connection_log(log_path(runtime_dir, name, "conn"), mesh.name, "ingress")],
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
        admin_port=ports.ingress_admin_port,
        clusters=clusters,
        listeners=[gateway],
        spiffe_id=ing.spiffe_id,
        trust=trust,
        extensions=extensions,
    )
