"""Which source serves each import now, as the mesh's egress gateway sees its exporters."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from meshfed.local import admin
from meshfed.local.probe import Hop
from meshfed.local.summary import ImportInfo, RuntimeSummary, SourceInfo


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
    imp: ImportInfo, egress_admin: str | None
) -> tuple[str | None, tuple[SourceStatus, ...]]:
    """Health of each source as the egress gateway sees it (``egress_admin``: its admin socket;
    None: not running), and the one serving now."""
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


def await_first_choice(
    summary: RuntimeSummary, running: set[str], hops: set[Hop] | None, timeout: float = 5.0
) -> None:
    """Wait until each import is served by its first source whose ingress runs here.

    All Envoys start at once, so an egress can health-check an ingress before it listens; a
    call made then goes to the failover target and its connection stays pinned there for the
    sidecar's connection lifetime. Probes and the user's first calls come after this.
    ``running``: the names of the processes running; ``hops``: the processes the caller started
    or changed (None: all); an import whose egress and sources' ingresses are all unchanged is
    left alone. One ``/clusters`` read per egress gateway and round serves every import of its
    mesh.
    """
    egress_admin = {p.mesh: p.admin_socket for p in summary.processes if p.role == "egress"}
    ingress_names = {p.mesh: p.name for p in summary.processes if p.role == "ingress"}
    waiting: dict[str, list[tuple[ImportInfo, str]]] = {}
    for imp in summary.imports:
        path = {(s.mesh, "ingress", None) for s in imp.sources} | {(imp.mesh, "egress", None)}
        if hops is not None and not path & hops:
            continue
        serving = [s for s in imp.sources if ingress_names.get(s.mesh) in running]
        sock = egress_admin.get(imp.mesh)
        if sock is None or not serving or imp.egress_cluster is None:
            continue
        first = min(serving, key=lambda s: s.priority).mesh
        waiting.setdefault(sock, []).append((imp, first))
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for sock, imports in list(waiting.items()):
            try:
                clusters = admin.clusters(sock, timeout=1.0)
            except (admin.AdminError, ValueError):
                clusters = []
            left = [(i, f) for i, f in imports if health_from_clusters(i, clusters)[0] != f]
            if left:
                waiting[sock] = left
            else:
                del waiting[sock]
        if waiting:
            time.sleep(0.02)
