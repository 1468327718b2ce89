"""Make-before-break across clusters, as pure decisions over the last applied and the new spec.

A federation change is applied in up to three waves, each a server-side-dry-run-first rollout:

1. **open** (when an importer-exporter edge opens or changes): on every cluster, the exporter
   side (ingress gateway, credentials, routes to exported workloads, authorization) of the
   *union* of the old and the new spec, without pruning. Everything an importer will route to
   is served and authorised, and nothing an importer still routes to has closed.
2. **route** (when an edge closes or changes): the importer side (egress gateway, imports) of
   the new spec, pruning only importer-side objects. Importers now route only where wave 1
   opened, and have stopped routing where wave 3 will close.
3. **final**: everything of the new spec, pruning all the federation no longer renders, and
   the stored state.

An *edge* is (importer mesh, exporter mesh): what the importer routes to the exporter and what
the exporter lets the importer do. A mesh that cannot be written (unreachable, or an exporter
whose load-balancer address is not known yet) holds back what depends on it: an importer whose
imports from it change, and an exporter that would close what a held importer still routes to.
Those keep what they have; the rest of the federation goes on (an exporter may still open
more to a held importer: nothing routes there until the importer is written).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from meshfed.plan.model import FederationPlan
from meshfed.plan.names import EGRESS_GATEWAY, INGRESS_GATEWAY
from meshfed.spec.check import check_federation
from meshfed.spec.model import Consumer, Export, Federation, Import

Obj = dict[str, Any]
Side = Literal["exporter", "importer", "base"]
Edge = tuple[str, str]
"""(importer mesh, exporter mesh)."""
EXPORT_LABEL = "meshfed.dev/export"


def side(obj: Obj) -> Side:
    """Which side of a federation edge an object rendered by ``render/istio`` serves."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    kind = obj.get("kind")
    if EXPORT_LABEL in (meta.get("labels") or {}):
        return "exporter"
    if name.startswith(INGRESS_GATEWAY) or kind in ("AuthorizationPolicy", "PeerAuthentication"):
        return "exporter"
    if kind == "Secret":
        return "exporter"  # cacerts, ingress credential
    if name.startswith(EGRESS_GATEWAY) or kind in ("ServiceEntry", "DestinationRule"):
        return "importer"
    if kind == "VirtualService" and (name.startswith("import-") or name.startswith("egress-")):
        return "importer"
    return "base"


def edge_signatures(plan: FederationPlan | None) -> dict[Edge, Hashable]:
    """Per edge, everything on both sides that makes it work."""
    if plan is None:
        return {}
    out: dict[Edge, list[Hashable]] = {}
    for mesh in plan.meshes:
        for route in mesh.imports:
            for source in route.sources:
                key = (mesh.name, source.mesh)
                out.setdefault(key, []).append(
                    (
                        "route",
                        route.local_host,
                        route.port,
                        route.protocol,
                        route.wire_host,
                        source.priority,
                        source.address,
                        source.port,
                        source.export,
                    )
                )
        for server in mesh.ingress.servers:
            for rule in server.allow:
                key = (rule.consumer_mesh, mesh.name)
                out.setdefault(key, []).append(("serve", server.sni, server.export, rule))
    return {edge: tuple(sorted(parts, key=repr)) for edge, parts in out.items()}


def _serving(signature: Hashable | None) -> tuple[Hashable, ...]:
    """The exporter's part of an edge's signature."""
    parts = signature if isinstance(signature, tuple) else ()
    return tuple(p for p in parts if isinstance(p, tuple) and p and p[0] == "serve")


@dataclass(frozen=True)
class EdgeChanges:
    opening: frozenset[Edge]
    """Edges new or changed: the exporter side must be live before the importer routes."""
    closing: frozenset[Edge]
    """Edges gone or changed: the importer must stop routing before the exporter closes."""
    serving: frozenset[Edge] = frozenset()
    """Opening edges whose exporter side changes (the others change only their routes, e.g.
    an exporter's new address: nothing to open first)."""

    @property
    def changed(self) -> frozenset[Edge]:
        return self.opening | self.closing


def edge_changes(
    old: FederationPlan | None, new: FederationPlan, union: FederationPlan | None = None
) -> EdgeChanges:
    """``union``: the plan of ``union_spec(old, new)``. An edge closes when it goes, or when
    the new plan serves or routes less on it than the union (what was there before and
    stays until the last wave); without the union, every changed edge counts as closing."""
    before, after = edge_signatures(old), edge_signatures(new)
    opening = {e for e, sig in after.items() if before.get(e) != sig}
    if union is None or old is None:
        closing = {e for e, sig in before.items() if after.get(e) != sig}
    else:
        widest = edge_signatures(union)
        closing = {e for e in before if e not in after}
        closing |= {e for e, sig in after.items() if e in before and widest.get(e) != sig}
    serving = {e for e in opening if _serving(before.get(e)) != _serving(after.get(e))}
    return EdgeChanges(frozenset(opening), frozenset(closing), frozenset(serving))


WaveName = Literal["open", "route", "final"]


@dataclass(frozen=True)
class Wave:
    name: WaveName
    spec: Literal["union", "new"]
    sides: frozenset[Side]
    """Which objects of the rendered spec this wave applies."""
    prune: frozenset[Side]
    """Which sides' stale objects it deletes."""
    store_state: bool = False

    def applies(self, obj: Obj) -> bool:
        return side(obj) in self.sides

    def prunes(self, obj: Obj) -> bool:
        return side(obj) in self.prune


ALL_SIDES: frozenset[Side] = frozenset({"exporter", "importer", "base"})
OPEN = Wave("open", "union", frozenset({"exporter", "base"}), frozenset())
ROUTE = Wave("route", "new", frozenset({"importer"}), frozenset({"importer"}))
FINAL = Wave("final", "new", ALL_SIDES, ALL_SIDES, store_state=True)


def waves(changes: EdgeChanges) -> list[Wave]:
    """The waves a change needs, in order (an unchanged federation: the final one only)."""
    out = []
    if changes.serving:
        out.append(OPEN)
    if changes.closing:
        out.append(ROUTE)
    out.append(FINAL)
    return out


@dataclass
class Hold:
    """What of a mesh is not written this time, and why."""

    sides: set[Side | Literal["all"]]
    reason: str

    @property
    def whole(self) -> bool:
        return "all" in self.sides

    def keeps(self, obj: Obj) -> bool:
        """The object stays as it is on the cluster (neither written nor pruned)."""
        return self.whole or side(obj) in self.sides


def holds(
    changes: EdgeChanges,
    new: FederationPlan,
    blocked: Mapping[str, str],
    pending_address: Iterable[str] = (),
) -> dict[str, Hold]:
    """What to hold back this time, per mesh: all of a ``blocked`` mesh (mesh: reason, e.g. a
    cluster unreachable); the importer side of a mesh that imports from an exporter whose
    address is not known yet, or whose imports from a held exporter change; the exporter side
    of a mesh that would close what a held importer still routes to (to a fixpoint). A mesh
    whose importer side is held still opens its exporter side, so a ring of meshes waiting for
    one address does not wait for itself."""
    held: dict[str, Hold] = {m: Hold({"all"}, reason) for m, reason in blocked.items()}

    def hold(mesh: str, which: Side, reason: str) -> bool:
        found = held.get(mesh)
        if found is not None and (found.whole or which in found.sides):
            return False
        if found is None:
            held[mesh] = Hold({which}, reason)
        else:
            found.sides.add(which)
            found.reason = f"{found.reason}; {reason}"
        return True

    pending = set(pending_address)
    for mesh in new.meshes:
        for route in mesh.imports:
            for source in route.sources:
                if source.mesh in pending:
                    hold(
                        mesh.name,
                        "importer",
                        f"imports from mesh {source.mesh}, whose federation ingress has no "
                        "load-balancer address yet",
                    )
    grew = True
    while grew:
        grew = False
        for importer, exporter in sorted(changes.changed):
            ex, im = held.get(exporter), held.get(importer)
            if ex is not None and (ex.whole or "exporter" in ex.sides):
                # The importer must not route to what the exporter does not serve yet.
                why = f"its imports from mesh {exporter} change, and {exporter} waits"
                grew |= hold(importer, "importer", why)
            if (
                im is not None
                and (im.whole or "importer" in im.sides)
                and (importer, exporter) in changes.closing
            ):
                # The exporter must not close what the held importer still routes to.
                why = f"what it serves mesh {importer} changes, and {importer} waits"
                grew |= hold(exporter, "exporter", why)
    return held


def frozen_meshes(
    changes: EdgeChanges,
    new: FederationPlan,
    blocked: Mapping[str, str],
    pending_address: Iterable[str] = (),
) -> dict[str, str]:
    """Each mesh with anything held back, and why (see ``holds``)."""
    return {m: h.reason for m, h in holds(changes, new, blocked, pending_address).items()}


def _merge_consumer(old: Consumer, new: Consumer) -> Consumer:
    def union(a: list[str] | None, b: list[str] | None) -> list[str] | None:
        """The new entries in their order, then the old ones the new spec dropped (so the
        union of a widening equals the new spec exactly)."""
        if a is None or b is None:
            return None  # one of them allows any
        return [*b, *(x for x in a if x not in b)]

    return new.model_copy(
        update={
            "principals": union(old.principals, new.principals),
            "methods": union(old.methods, new.methods),
            "paths": union(old.paths, new.paths),
        }
    )


def _merge_export(old: Export, new: Export) -> Export:
    consumers = {c.mesh: c for c in new.consumers}
    for consumer in old.consumers:
        mine = consumers.get(consumer.mesh)
        consumers[consumer.mesh] = consumer if mine is None else _merge_consumer(consumer, mine)
    return new.model_copy(update={"consumers": [consumers[m] for m in sorted(consumers)]})


def union_spec(old: Federation | None, new: Federation) -> tuple[Federation, str | None]:
    """The new spec, widened by what the old one served and routed: exports of both (the
    consumers, principals, methods and paths of both), imports of both. Returns the new spec
    and the reason when that union is not a consistent federation (then wave 1 opens only what
    the new spec serves)."""
    if old is None:
        return new, None
    if old.spec.exports == new.spec.exports and old.spec.imports == new.spec.imports:
        # Only meshes changed (discovered workloads, a load-balancer address): the union is
        # the new spec; building and checking it again costs seconds at a thousand exports.
        return new, None
    meshes = {m.name: m for m in new.spec.meshes}
    exports: dict[tuple[str, str], Export] = {(e.mesh, e.name): e for e in new.spec.exports}
    for export in old.spec.exports:
        key = (export.mesh, export.name)
        mesh = meshes.get(export.mesh)
        if mesh is None:
            continue  # the mesh left the federation: it is retired, not served
        if key in exports:
            if exports[key].workload == export.workload and exports[key].host == export.host:
                exports[key] = _merge_export(export, exports[key])
            continue
        if mesh.workloads and export.workload not in {w.ref for w in mesh.workloads}:
            continue
        kept = [c for c in export.consumers if c.mesh in meshes and c.mesh != export.mesh]
        if kept:
            exports[key] = export.model_copy(update={"consumers": kept})
    imports: dict[tuple[str, str], Import] = {(i.mesh, i.host): i for i in new.spec.imports}
    for imp in old.spec.imports:
        key = (imp.mesh, imp.host)
        refs = {f"{m}/{n}" for m, n in exports}
        if key not in imports and imp.mesh in meshes and all(r in refs for r in imp.from_):
            imports[key] = imp
    doc = new.model_dump(mode="json", by_alias=True, exclude_unset=True)
    doc["spec"]["exports"] = [
        exports[k].model_dump(mode="json", by_alias=True, exclude_unset=True)
        for k in sorted(exports)
    ]
    doc["spec"]["imports"] = [
        imports[k].model_dump(mode="json", by_alias=True, exclude_unset=True)
        for k in sorted(imports)
    ]
    union = Federation.model_validate(doc)
    problems = check_federation(union)
    if problems:
        first = problems[0]
        return new, f"old and new spec cannot be served together ({first.message})"
    return union, None
