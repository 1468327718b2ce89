"""The local federation egress of a mesh: TLS passes through by SNI, to the exporting meshes'
ingresses in the planned failover order; any other SNI finds no chain.
"""

from __future__ import annotations

from pathlib import Path

from meshfed.plan.limits import FailoverPolicy, ListenerLimits
from meshfed.plan.model import EgressRoute, MeshPlan
from meshfed.render.envoy.access_log import connection_log
from meshfed.render.envoy.builders import (
    listener,
    nothing_chain,
    static_cluster,
    tcp_proxy,
    tls_listener_filters,
)
from meshfed.render.envoy.files import log_path
from meshfed.render.envoy.layout import MeshLayout
from meshfed.render.envoy.limits import cluster_fields, duration, listener_fields, tcp_fields
from meshfed.render.envoy.probe import SERVER_HELLO, client_hello
from meshfed.render.envoy.process import ProcessConfig, Resource

LISTENER_NAME = "federation-egress"


def egress_cluster(
    route: EgressRoute, failover: FailoverPolicy, limits: ListenerLimits
) -> Resource:
    """The exporters of a wire host, in failover order (one priority each).

    Passive ejection moves traffic at the first refused or timed-out connect. The active probe
    (`render/envoy/probe.py`) also takes out an exporter whose ingress accepts and closes (at
    its connection cap) or does not answer its TLS in time (stalled, overloaded), which no
    connect shows through this pass-through gateway; and it brings the exporter back.
    """
    cluster = static_cluster(
        f"egress|{route.wire_host}",
        [(s.address, s.port, s.priority) for s in route.sources],
    )
    cluster["connect_timeout"] = duration(failover.connect_timeout)
    cluster["outlier_detection"] = {
        "interval": duration(failover.analysis_interval),
        "base_ejection_time": duration(failover.ejection_time),
        "max_ejection_time": duration(failover.max_ejection_time),
        "max_ejection_time_jitter": "0s",
        "max_ejection_percent": 100,
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": failover.consecutive_failures,
        "enforcing_consecutive_local_origin_failure": 100,
    }
    probe = failover.probe_sni
    cluster["health_checks"] = [
        {
            "timeout": duration(failover.probe_timeout),
            "interval": duration(failover.probe_interval),
            "no_traffic_interval": duration(failover.probe_interval),
            "unhealthy_interval": duration(failover.probe_interval),
            "unhealthy_threshold": failover.unhealthy_after,
            "healthy_threshold": failover.healthy_after,
            # A probe connection ends mid-handshake: never reuse it for the next probe.
            "reuse_connection": False,
            "tcp_health_check": (
                {
                    "send": {"text": client_hello(probe).hex()},
                    "receive": [{"text": SERVER_HELLO}],
                }
                if probe
                else {}
            ),
        }
    ]
    return {**cluster, **cluster_fields(limits)}


def egress_process(mesh: MeshPlan, ports: MeshLayout, runtime_dir: Path) -> ProcessConfig:
    name = f"{mesh.name}/egress"
    limits = mesh.limits.internal
    access = log_path(runtime_dir, name, "access")
    chains = [
        {
            "name": route.wire_host,
            "filter_chain_match": {"server_names": [route.wire_host]},
            "filters": [
                tcp_proxy(
                    f"egress_{route.wire_host}",
                    f"egress|{route.wire_host}",
                    max_connect_attempts=3,
                    backoff_options={"base_interval": "0.01s", "max_interval": "0.05s"},
                    access_log=[connection_log(access, mesh.name, "egress")],
                    **tcp_fields(limits),
                )
            ],
        }
        for route in mesh.egress.routes
    ] or [nothing_chain()]
    gateway = listener(
        LISTENER_NAME,
        "127.0.0.1",
        ports.egress_port,
        chains,
        listener_filters=tls_listener_filters(),
        access_log=[connection_log(log_path(runtime_dir, name, "conn"), mesh.name, "egress")],
        **listener_fields(limits, listener_filters=True),
    )
    return ProcessConfig(
        name=name,
        mesh=mesh.name,
        role="egress",
        admin_socket=ports.egress_admin,
        clusters=[egress_cluster(r, mesh.egress.failover, limits) for r in mesh.egress.routes],
        listeners=[gateway],
        spiffe_id=None,
        max_connections=mesh.limits.max_connections_per_proxy,
        listener_caps={LISTENER_NAME: limits.max_connections},
    )
