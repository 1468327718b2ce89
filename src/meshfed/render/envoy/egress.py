"""The local federation egress of a mesh: TLS passes through by SNI, to the exporting meshes'
ingresses in the planned failover order; any other SNI finds no chain.
"""

from __future__ import annotations

from pathlib import Path

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
from meshfed.render.envoy.process import ProcessConfig, Resource


def egress_cluster(route: EgressRoute) -> Resource:
    cluster = static_cluster(
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


def egress_process(mesh: MeshPlan, ports: MeshLayout, runtime_dir: Path) -> ProcessConfig:
    name = f"{mesh.name}/egress"
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
                    idle_timeout="300s",
                    access_log=[connection_log(access, mesh.name, "egress")],
                )
            ],
        }
        for route in mesh.egress.routes
    ] or [nothing_chain()]
    gateway = listener(
        "federation-egress",
        "127.0.0.1",
        ports.egress_port,
        chains,
        listener_filters=tls_listener_filters(),
        access_log=[connection_log(log_path(runtime_dir, name, "conn"), mesh.name, "egress")],
    )
    return ProcessConfig(
        name=name,
        mesh=mesh.name,
        role="egress",
        admin_port=ports.egress_admin_port,
        clusters=[egress_cluster(r) for r in mesh.egress.routes],
        listeners=[gateway],
        spiffe_id=None,
    )
