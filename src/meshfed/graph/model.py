"""What the picture shows, taken from the plan: meshes, and who may call and calls what.

An arrow points the way calls go: from the importing (consumer) mesh to the exporting mesh.
Import arrows carry the failover position of their source; a grant arrow is a consumer an export
allows that imports nothing from it. Each arrow keeps the export's rules for its caller one by
one (principals, methods, paths), as the plan decided them. Order: the plan's (meshes by name,
imports by local name, exports by host), so reordering a spec does not move the picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meshfed.plan.model import AllowRule, FederationPlan, IngressServer, MeshPlan
from meshfed.spiffe import relative_to

EdgeKind = Literal["import", "grant"]


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, ... 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class MeshNode:
    name: str
    trust_domain: str
    network: str | None
    ingress: str
    exports: tuple[str, ...]


@dataclass(frozen=True)
class Grant:
    """One rule of an export for a caller: who, and (HTTP) which methods and paths."""

    principals: tuple[str, ...]
    """Relative to the caller's trust domain (``ns/<ns>/sa/<sa>``, a prefix ``...*``, ``*``)."""
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    def describe(self) -> str:
        return (
            f"{', '.join(self.principals)}; methods: {', '.join(self.methods) or 'any'}; "
            f"paths: {', '.join(self.paths) or 'any'}"
        )


@dataclass(frozen=True)
class Edge:
    kind: EdgeKind
    caller: str
    """The consumer (importing) mesh: the arrow's tail."""
    exporter: str
    """The exporting mesh: the arrow's head."""
    export: str
    """``<mesh>/<export>``."""
    host: str
    """The export's public host (SNI)."""
    rules: tuple[Grant, ...]
    """What the export allows this caller, one entry per rule of the plan."""
    local_host: str | None = None
    """Import only: the local name consumers call."""
    order: int | None = None
    """Import only: 0-based failover position of this source."""
    sources: int = 1
    """Import only: how many sources the import fails over between."""

    @property
    def principals(self) -> tuple[str, ...]:
        """Every principal the rules name, once each, in order."""
        return tuple(dict.fromkeys(p for rule in self.rules for p in rule.principals))

    @property
    def order_label(self) -> str | None:
        return ordinal(self.order + 1) if self.order is not None else None

    def lines(self, width: int = 38) -> list[str]:
        """The arrow's label: position and export, then the allowed principals."""
        name = self.export.partition("/")[2]
        head = name if self.sources < 2 else f"{self.order_label} · {name}"
        if self.kind == "grant":
            head = f"allowed: {name}"
        return [head, _fit(", ".join(self.principals), width)]

    def title(self) -> str:
        """Everything about the arrow, for a tooltip."""
        parts = [f"{self.caller} → {self.export} ({self.host})"]
        if self.local_host is not None:
            parts.append(f"import {self.local_host}: {self.order_label} of {self.sources}")
        else:
            parts.append("allowed, not imported")
        if len(self.rules) == 1:
            (rule,) = self.rules
            parts.append("principals: " + ", ".join(rule.principals))
            if rule.methods:
                parts.append("methods: " + ", ".join(rule.methods))
            if rule.paths:
                parts.append("paths: " + ", ".join(rule.paths))
        else:
            parts += [f"rule {i}: {rule.describe()}" for i, rule in enumerate(self.rules, 1)]
        return "\n".join(parts)


def _fit(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    items = text.split(", ")
    kept: list[str] = []
    for item in items:
        rest = len(items) - len(kept) - 1
        candidate = ", ".join([*kept, item]) + (f" +{rest}" if rest else "")
        if len(candidate) > width:
            break
        kept.append(item)
    if not kept:
        return text[: width - 1] + "…"
    return ", ".join(kept) + f" +{len(items) - len(kept)}"


@dataclass(frozen=True)
class FederationGraph:
    name: str
    trust_mode: str
    meshes: tuple[MeshNode, ...]
    edges: tuple[Edge, ...]


def _grant(rule: AllowRule) -> Grant:
    return Grant(
        principals=tuple(relative_to(str(p), rule.trust_domain) for p in rule.principals),
        methods=rule.methods,
        paths=tuple(str(p) for p in rule.paths),
    )


def _export_server(plan: FederationPlan, mesh: str, export: str) -> IngressServer:
    """The server of an export under its own host (not a failover alias)."""
    return next(
        s for s in plan.mesh(mesh).ingress.servers if s.export == export and s.alias_of is None
    )


def _node(mesh: MeshPlan) -> MeshNode:
    return MeshNode(
        name=mesh.name,
        trust_domain=mesh.trust_domain,
        network=mesh.network,
        ingress=f"{mesh.ingress.address}:{mesh.ingress.port}",
        exports=tuple(
            s.export.partition("/")[2] for s in mesh.ingress.servers if s.alias_of is None
        ),
    )


def build_graph(plan: FederationPlan) -> FederationGraph:
    edges: list[Edge] = []
    used: set[tuple[str, str]] = set()
    for mesh in plan.meshes:
        for imp in mesh.imports:
            for source in imp.sources:
                server = _export_server(plan, source.mesh, source.export)
                used.add((mesh.name, source.export))
                edges.append(
                    Edge(
                        kind="import",
                        caller=mesh.name,
                        exporter=source.mesh,
                        export=source.export,
                        host=server.sni,
                        rules=tuple(
                            _grant(r) for r in server.allow if r.consumer_mesh == mesh.name
                        ),
                        local_host=imp.local_host,
                        order=source.priority,
                        sources=len(imp.sources),
                    )
                )
    for mesh in plan.meshes:
        for server in mesh.ingress.servers:
            if server.alias_of is not None:
                continue
            for caller in dict.fromkeys(r.consumer_mesh for r in server.allow):
                if (caller, server.export) in used:
                    continue
                edges.append(
                    Edge(
                        kind="grant",
                        caller=caller,
                        exporter=mesh.name,
                        export=server.export,
                        host=server.sni,
                        rules=tuple(_grant(r) for r in server.allow if r.consumer_mesh == caller),
                    )
                )
    meshes = tuple(_node(m) for m in plan.meshes)
    return FederationGraph(plan.name, plan.trust_mode, meshes, tuple(edges))
