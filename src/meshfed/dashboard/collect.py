"""What ``/api/state`` answers: the running federation, read live.

The picture comes from the spec the last ``meshfed up`` applied (``runtime.json`` names it and is
rewritten by every ``up``: a new one reloads the graph). Counters come from each ingress gateway's
admin ``/stats`` (``dashboard/stats.py`` says which stats), which exporter serves each import from
the egress gateway's ``/clusters`` (as ``meshfed status``), and the log tail from the gateways'
access logs (as ``meshfed logs --boundary``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from meshfed.dashboard.logtail import BoundaryTail, row
from meshfed.dashboard.stats import (
    STATS_FILTER,
    ArrowCounters,
    IngressCounters,
    arrow_counters,
    ingress_counters,
    parse_stats,
)
from meshfed.graph import Edge, FederationGraph, build_graph
from meshfed.graph.layout import layout
from meshfed.graph.svg import LIVE_LINES, svg_from_layout
from meshfed.local import admin
from meshfed.local.health import SourceStatus, source_health
from meshfed.local.logs import gateway_logs
from meshfed.local.paths import RuntimePaths
from meshfed.local.state import ProcessRecord, load_processes
from meshfed.local.summary import ImportInfo, RuntimeSummary, load_summary
from meshfed.spec.errors import SpecError
from meshfed.spec.load import load_spec
from meshfed.workspace import plan_of

LOG_ROWS = 50
ADMIN_TIMEOUT = 0.5
CACHE_SECONDS = 0.25
"""Several open pages share one reading of the gateways."""


@dataclass(frozen=True)
class Model:
    """What the last ``up`` applied: its summary and the picture of its spec."""

    summary: RuntimeSummary
    graph: FederationGraph | None
    svg: str
    version: str
    edges: tuple[Edge, ...] = ()
    """In the picture's order: ``edges[i]`` is drawn as ``id="edge-<i>"``."""
    error: str | None = None


def load_model(paths: RuntimePaths) -> Model | None:
    summary = load_summary(paths)
    if summary is None:
        return None
    try:
        graph = build_graph(plan_of(load_spec(Path(summary.spec))))
    except (SpecError, OSError) as exc:
        message = f"cannot draw the federation: {summary.spec}: {exc}"
        digest = hashlib.sha256(message.encode()).hexdigest()[:16]
        return Model(summary, None, "", digest, error=message)
    placed = layout(graph, LIVE_LINES)
    svg = svg_from_layout(graph, placed, live=len(LIVE_LINES))
    edges = tuple(p.edge for p in placed.edges)
    return Model(summary, graph, svg, hashlib.sha256(svg.encode()).hexdigest()[:16], edges)


StatsReader = Callable[[int], dict[str, int]]
ClustersReader = Callable[[ImportInfo, int | None], tuple[str | None, tuple[SourceStatus, ...]]]


def read_stats(admin_port: int) -> dict[str, int]:
    status, body = admin.get(
        admin_port, "/stats?filter=" + quote(STATS_FILTER, safe=""), ADMIN_TIMEOUT
    )
    if status != 200:
        raise admin.AdminError(f"admin port {admin_port}: /stats answered {status}")
    return parse_stats(body.decode(errors="replace"))


class Collector:
    """Builds the state document; safe to call from several request threads."""

    def __init__(
        self,
        paths: RuntimePaths,
        stats_reader: StatsReader = read_stats,
        clusters_reader: ClustersReader = source_health,
    ) -> None:
        self.paths = paths
        self.read_stats = stats_reader
        self.read_health = clusters_reader
        self.tail = BoundaryTail(keep=LOG_ROWS)
        self.model: Model | None = None
        self._signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def refresh(self) -> Model | None:
        """Reload the model if ``runtime.json`` changed (a new ``up``)."""
        try:
            st = os.stat(self.paths.runtime)
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            signature = None
        if signature != self._signature or self.model is None:
            self._signature = signature
            self.model = load_model(self.paths)
            self._cached = None
        return self.model

    def state(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            model = self.refresh()
            if self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
            doc = self._collect(model)
            self._cached = (time.monotonic(), doc)
            return doc

    def _collect(self, model: Model | None) -> dict[str, Any]:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        if model is None:
            return {
                "time": stamp,
                "federation": None,
                "graph_version": None,
                "error": f"no local federation in {self.paths.state_dir}: run meshfed up",
            }
        summary = model.summary
        records = load_processes(self.paths)
        ingress = self._ingresses(summary, records)
        health = self._health(summary, records)
        arrows = [_arrow(i, edge, summary, ingress, health) for i, edge in enumerate(model.edges)]
        self.tail.update(gateway_logs(self.paths.root, summary, None, True), summary)
        meshes = []
        for m in summary.meshes:
            counters, error = ingress.get(m.name, (None, "not running"))
            meshes.append(
                {
                    "name": m.name,
                    "trust_domain": m.trust_domain,
                    "ingress": f"{m.ingress_address}:{m.ingress_port}",
                    "ingress_up": counters is not None,
                    "error": error,
                    "exports": len(m.exports),
                    "tls_failures": counters.tls_failures if counters else None,
                    "handshakes": counters.handshakes if counters else None,
                    "unknown_sni": counters.unknown_sni if counters else None,
                    "allowed": sum(c.allowed for c in counters.chains.values())
                    if counters
                    else None,
                    "denied": sum(c.denied for c in counters.chains.values()) if counters else None,
                }
            )
        return {
            "time": stamp,
            "federation": summary.federation,
            "trust_mode": summary.trust_mode,
            "spec": summary.spec,
            "graph_version": model.version,
            "error": model.error,
            "totals": {
                key: sum(m[key] or 0 for m in meshes)
                for key in ("allowed", "denied", "tls_failures", "unknown_sni")
            },
            "meshes": meshes,
            "arrows": arrows,
            "imports": [
                {
                    "mesh": imp.mesh,
                    "local": imp.key,
                    "protocol": imp.protocol,
                    "wire_host": imp.wire_host,
                    "current": current,
                    "sources": [
                        {"mesh": s.mesh, "export": s.export, "healthy": s.healthy} for s in sources
                    ],
                }
                for imp, (current, sources) in health.items()
            ],
            "log": [row(e, summary) for e in self.tail.latest(LOG_ROWS)],
        }

    def _ingresses(
        self, summary: RuntimeSummary, records: dict[str, ProcessRecord]
    ) -> dict[str, tuple[IngressCounters | None, str | None]]:
        out: dict[str, tuple[IngressCounters | None, str | None]] = {}
        for p in summary.processes:
            if p.role != "ingress":
                continue
            record = records.get(p.name)
            if record is None or not record.alive:
                out[p.mesh] = (None, "ingress gateway not running")
                continue
            mesh = summary.mesh(p.mesh)
            try:
                stats = self.read_stats(p.admin_port)
            except admin.AdminError as exc:
                out[p.mesh] = (None, str(exc))
                continue
            listener = f"{mesh.ingress_address}:{mesh.ingress_port}"
            out[p.mesh] = (ingress_counters(stats, listener, mesh.exports), None)
        return out

    def _health(
        self, summary: RuntimeSummary, records: dict[str, ProcessRecord]
    ) -> dict[ImportInfo, tuple[str | None, tuple[SourceStatus, ...]]]:
        out = {}
        for imp in summary.imports:
            egress = next(
                (p for p in summary.processes if p.mesh == imp.mesh and p.role == "egress"), None
            )
            record = records.get(egress.name) if egress else None
            port = egress.admin_port if egress and record and record.alive else None
            out[imp] = self.read_health(imp, port)
        return out


def _arrow(
    index: int,
    edge: Edge,
    summary: RuntimeSummary,
    ingress: dict[str, tuple[IngressCounters | None, str | None]],
    health: dict[ImportInfo, tuple[str | None, tuple[SourceStatus, ...]]],
) -> dict[str, Any]:
    snis = [edge.host]
    state = "not imported"
    imp = next(
        (i for i in health if i.mesh == edge.caller and i.local_host == edge.local_host), None
    )
    if edge.kind == "import" and imp is not None:
        snis.insert(0, imp.wire_host)
        current, sources = health[imp]
        source = next((s for s in sources if s.export == edge.export), None)
        if source is None or source.healthy is None:
            state = "unknown"
        elif current == edge.exporter:
            state = "serving"
        else:
            state = "standby" if source.healthy else "down"
    counters, error = ingress.get(edge.exporter, (None, "no ingress gateway"))
    live: ArrowCounters | None = arrow_counters(counters, snis) if counters else None
    return {
        "id": f"edge-{index}",
        "kind": edge.kind,
        "caller": edge.caller,
        "exporter": edge.exporter,
        "export": edge.export,
        "host": edge.host,
        "local_host": edge.local_host,
        "order": edge.order + 1 if edge.order is not None else None,
        "sources": edge.sources,
        "principals": list(edge.principals),
        "snis": list(live.snis) if live else list(dict.fromkeys(snis)),
        "ingress_up": counters is not None,
        "error": error,
        "state": state,
        "allowed": live.allowed if live else None,
        "denied": live.denied if live else None,
        "tls_failures": live.tls_failures if live else None,
        "tls_exact": live.tls_exact if live else True,
    }
