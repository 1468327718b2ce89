"""What the picture shows, taken from a valid spec: meshes, and who may call and calls what.

An arrow points the way calls go: from the importing (consumer) mesh to the exporting mesh.
Import arrows carry the failover position of their source; a grant arrow is a consumer an export
allows that imports nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meshfed.spec.model import Export, Federation
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
    principals: tuple[str, ...]
    """As the spec writes them, relative to the caller's trust domain where it was spelt out."""
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    local_host: str | None = None
    """Import only: the local name consumers call."""
    order: int | None = None
    """Import only: 0-based failover position of this source."""
    sources: int = 1
    """Import only: how many sources the import fails over between."""

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
        parts.append("principals: " + ", ".join(self.principals))
        if self.methods:
            parts.append("methods: " + ", ".join(self.methods))
        if self.paths:
            parts.append("paths: " + ", ".join(self.paths))
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


def _rule(
    fed: Federation, export: Export, mesh: str
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    domain = fed.mesh(mesh).trust_domain
    principals: list[str] = []
    methods: list[str] = []
    paths: list[str] = []
    for consumer in export.consumers:
        if consumer.mesh != mesh:
            continue
        short = [relative_to(p, domain) for p in consumer.principals]
        principals += [p for p in short if p not in principals]
        methods += [m for m in consumer.methods or () if m not in methods]
        paths += [p for p in consumer.paths or () if p not in paths]
    return tuple(principals), tuple(methods), tuple(paths)


def build_graph(fed: Federation) -> FederationGraph:
    meshes = tuple(
        MeshNode(
            name=m.name,
            trust_domain=m.trust_domain,
            network=m.network,
            ingress=f"{m.ingress.address}:{m.ingress.port}",
            exports=tuple(e.name for e in fed.spec.exports if e.mesh == m.name),
        )
        for m in fed.spec.meshes
    )
    edges: list[Edge] = []
    used: set[tuple[str, str]] = set()
    for imp in fed.spec.imports:
        for k, ref in enumerate(imp.from_):
            export = fed.export(ref)
            principals, methods, paths = _rule(fed, export, imp.mesh)
            used.add((imp.mesh, ref))
            edges.append(
                Edge(
                    kind="import",
                    caller=imp.mesh,
                    exporter=export.mesh,
                    export=ref,
                    host=fed.export_host(export),
                    principals=principals,
                    methods=methods,
                    paths=paths,
                    local_host=imp.host,
                    order=k,
                    sources=len(imp.from_),
                )
            )
    for export in fed.spec.exports:
        ref = f"{export.mesh}/{export.name}"
        for mesh in dict.fromkeys(c.mesh for c in export.consumers):
            if (mesh, ref) in used:
                continue
            principals, methods, paths = _rule(fed, export, mesh)
            edges.append(
                Edge(
                    kind="grant",
                    caller=mesh,
                    exporter=export.mesh,
                    export=ref,
                    host=fed.export_host(export),
                    principals=principals,
                    methods=methods,
                    paths=paths,
                )
            )
    return FederationGraph(fed.name, fed.spec.trust.mode, meshes, tuple(edges))
