"""Which source serves each import now, as the mesh's egress gateway sees its exporters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshfed.local import admin
from meshfed.local.summary import ImportInfo, SourceInfo


@dataclass(frozen=True)
class SourceStatus:
    mesh: str
    export: str
    address: str
    priority: int
    healthy: bool | None
    """None: unknown (egress gateway not answering)."""


def _host_health(host: dict[str, Any]) -> bool:
    health = host.get("health_status", {})
    if health.get("eds_health_status", "HEALTHY") != "HEALTHY":
        return False
    return not any(v is True for k, v in health.items() if k.startswith("failed"))


def _address(host: dict[str, Any]) -> str:
    sock = host.get("address", {}).get("socket_address", {})
    return f"{sock.get('address')}:{sock.get('port_value')}"


def source_health(
    imp: ImportInfo, egress_admin: int | None
) -> tuple[str | None, tuple[SourceStatus, ...]]:
    """Health of each source as the egress gateway sees it, and the one serving now."""
    found: list[dict[str, Any]] = []
    if egress_admin is not None and imp.egress_cluster:
        try:
            found = admin.clusters(egress_admin, timeout=1.0)
        except (admin.AdminError, ValueError):
            found = []
    return health_from_clusters(imp, found)


def health_from_clusters(
    imp: ImportInfo, clusters: list[dict[str, Any]]
) -> tuple[str | None, tuple[SourceStatus, ...]]:
    """``source_health`` from the egress gateway's ``/clusters`` already read (one read serves
    every import of the mesh)."""
    hosts: dict[str, bool] = {}
    for cluster in clusters:
        if imp.egress_cluster and cluster.get("name") == imp.egress_cluster:
            for host in cluster.get("host_statuses", []):
                hosts[_address(host)] = _host_health(host)

    def one(s: SourceInfo) -> SourceStatus:
        key = f"{s.address}:{s.port}"
        return SourceStatus(s.mesh, s.export, key, s.priority, hosts.get(key))

    sources = tuple(one(s) for s in sorted(imp.sources, key=lambda s: s.priority))
    current = next((s.mesh for s in sources if s.healthy), None)
    return current, sources
