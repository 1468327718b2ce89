"""What ``/api/state`` answers: the running federation, read live.

The picture comes from the spec the last ``meshfed up`` applied (``runtime.json`` names it and is
rewritten by every ``up``: a new one reloads the graph). Counters and the log tail come from the
gateways' access logs, read once each line (``logtail.py``, ``counts.py``: the same totals as
``meshfed logs --boundary``, across gateway restarts, meshfed's own probes apart); which exporter
serves each import from the egress gateway's ``/clusters`` (as ``meshfed status``).
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

from meshfed.dashboard.counts import ArrowCounters, IngressCounts, arrow_counters
from meshfed.dashboard.logtail import BoundaryTail, row
from meshfed.graph import Edge, FederationGraph, build_graph
from meshfed.graph.layout import layout
from meshfed.graph.svg import LIVE_LINES, svg_from_layout
from meshfed.local.health import SourceStatus, source_health
from meshfed.local.logs import LogEntry, gateway_logs, hop_logs
from meshfed.local.paths import RuntimePaths
from meshfed.local.prober import ledger_path
from meshfed.local.state import ProcessRecord, load_processes
from meshfed.local.summary import ImportInfo, RuntimeSummary, load_summary
from meshfed.spec.errors import SpecError
from meshfed.spec.load import load_spec
from meshfed.workspace import plan_of

LOG_ROWS = 50
TOTALS = ("allowed", "denied", "rejected", "tls_failures", "unknown_sni", "probes")
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


ClustersReader = Callable[[ImportInfo, str | None], tuple[str | None, tuple[SourceStatus, ...]]]
"""(import, its egress gateway's admin socket or None) -> ``source_health``."""


class Collector:
    """Builds the state document; safe to call from several request threads."""

    def __init__(
        self, paths: RuntimePaths, clusters_reader: ClustersReader = source_health
    ) -> None:
        self.paths = paths
        self.read_health = clusters_reader
        self.tail = BoundaryTail(keep=LOG_ROWS, ledger=ledger_path(paths))
        self.counts: dict[str, IngressCounts] = {}
        """By mesh: its ingress's counters, since the first line of its logs."""
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
        self._read_logs(summary)
        up = {
            p.mesh: (r := records.get(p.name)) is not None and r.alive
            for p in summary.processes
            if p.role == "ingress"
        }
        health = self._health(summary, records)
        arrows = [_arrow(i, e, summary, self.counts, up, health) for i, e in enumerate(model.edges)]
        meshes = []
        for m in summary.meshes:
            counts = self.counts.get(m.name, IngressCounts())
            callers, own = counts.callers(), counts.own()
            meshes.append(
                {
                    "name": m.name,
                    "trust_domain": m.trust_domain,
                    "ingress": f"{m.ingress_address}:{m.ingress_port}",
                    "ingress_up": up.get(m.name, False),
                    "error": None if up.get(m.name) else "ingress gateway not running",
                    "exports": len(m.exports),
                    "tls_failures": counts.tls_failures,
                    "handshakes": counts.handshakes,
                    "unknown_sni": counts.unknown_sni,
                    "allowed": callers.allowed,
                    "denied": callers.denied,
                    "rejected": callers.rejected,
                    "probes": own.total - own.tls_failures + counts.probe_tls_failures,
                    "since": counts.since,
                }
            )
        return {
            "time": stamp,
            "federation": summary.federation,
            "trust_mode": summary.trust_mode,
            "spec": summary.spec,
            "graph_version": model.version,
            "error": model.error,
            "totals": {key: sum(m[key] or 0 for m in meshes) for key in TOTALS},
            "since": min((str(m["since"]) for m in meshes if m["since"]), default=None),
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

    def _read_logs(self, summary: RuntimeSummary) -> None:
        """Read what is new in the gateways' logs: the tail, and each ingress's counters."""
        exports = {m.name: m.exports for m in summary.meshes}
        ingresses = {p.name: p.mesh for p in summary.processes if p.role == "ingress"}

        def count(entry: LogEntry) -> None:
            mesh = ingresses.get(entry.process)
            if mesh is not None:
                self.counts.setdefault(mesh, IngressCounts()).count(entry, exports[mesh])

        root = self.paths.root
        self.tail.update(
            gateway_logs(root, summary, None, True), summary, count, hop_logs(root, summary)
        )

    def _health(
        self, summary: RuntimeSummary, records: dict[str, ProcessRecord]
    ) -> dict[ImportInfo, tuple[str | None, tuple[SourceStatus, ...]]]:
        out = {}
        for imp in summary.imports:
            egress = next(
                (p for p in summary.processes if p.mesh == imp.mesh and p.role == "egress"), None
            )
            record = records.get(egress.name) if egress else None
            sock = egress.admin_socket if egress and record and record.alive else None
            out[imp] = self.read_health(imp, sock)
        return out


def _arrow(
    index: int,
    edge: Edge,
    summary: RuntimeSummary,
    counts: dict[str, IngressCounts],
    up: dict[str, bool],
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
    served = next((m.exports for m in summary.meshes if m.name == edge.exporter), {})
    live: ArrowCounters = arrow_counters(counts.get(edge.exporter, IngressCounts()), snis, served)
    ingress_up = up.get(edge.exporter, False)
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
        "snis": list(live.snis) or list(dict.fromkeys(snis)),
        "ingress_up": ingress_up,
        "error": None if ingress_up else "ingress gateway not running",
        "state": state,
        "allowed": live.allowed,
        "denied": live.denied,
        "rejected": live.rejected,
        "tls_failures": live.tls_failures,
        "tls_exact": True,
        "probes": live.probes,
    }
