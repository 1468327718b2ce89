"""The status a person reads (``kubectl get federations``, ``meshfed status --kube``), built
from what one reconcile found and did (pure).

Conditions follow Kubernetes' conventions: type, status, reason (CamelCase), message,
observedGeneration, and lastTransitionTime that moves only when the status does.
Federation: Ready, Progressing, Degraded. Per mesh: Applied, Reachable, Drifted, each with the
reason and the objects concerned. Per import: which exporter serves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from meshfed.plan.model import FederationPlan

Obj = dict[str, Any]
MAX_LISTED = 5


def _time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool | None, reason: str, message: str, generation: int) -> Obj:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def merge_conditions(old: Iterable[Obj], new: Iterable[Obj], now: datetime) -> list[Obj]:
    """``new`` with each lastTransitionTime kept from ``old`` when the status did not change."""
    before = {c.get("type"): c for c in old}
    out = []
    for cond in new:
        prev = before.get(cond["type"])
        same = prev is not None and prev.get("status") == cond["status"]
        stamp = prev.get("lastTransitionTime") if same and prev else None
        out.append({**cond, "lastTransitionTime": stamp or _time(now)})
    return out


def listed(items: list[str]) -> str:
    """A few items, and how many more."""
    shown = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


@dataclass
class ClusterReport:
    mesh: str
    name: str
    context: str | None
    role: str
    reachable: bool = True
    unreachable_reason: str = ""
    applied: bool | None = None
    """None: not written this time (frozen, or the spec is invalid)."""
    apply_reason: str = ""
    apply_message: str = ""
    restored: list[str] = field(default_factory=list)
    """Objects found changed or deleted by hand and put back (or extra ones pruned)."""


@dataclass
class MeshReport:
    name: str
    clusters: list[ClusterReport]
    frozen: str | None = None
    """Nothing of the mesh was written: why."""
    partly_held: str | None = None
    """One side (exporter or importer) was not written: which, and why."""
    ingress_address: str | None = None
    certificates: list[Obj] = field(default_factory=list)


@dataclass
class Outcome:
    """What a reconcile found and did."""

    generation: int
    meshes: list[MeshReport] = field(default_factory=list)
    spec_problems: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    """Why the federation is not complete yet, though nothing is wrong (an address to come,
    a certificate to be signed offline, a rotation under way)."""
    notes: list[str] = field(default_factory=list)
    error: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    imports: list[Obj] = field(default_factory=list)
    rotation: Obj | None = None


def import_status(plan: FederationPlan, unavailable: Mapping[str, str]) -> list[Obj]:
    """Per import, its sources in failover order and the first one whose mesh is available
    (what the egress gateway's outlier detection falls back to when a mesh is down)."""
    out = []
    for mesh in plan.meshes:
        for route in mesh.imports:
            sources = [s.export for s in sorted(route.sources, key=lambda s: s.priority)]
            serving = next(
                (
                    s
                    for s in sorted(route.sources, key=lambda s: s.priority)
                    if s.mesh not in unavailable
                ),
                None,
            )
            entry: Obj = {"mesh": mesh.name, "host": route.local_host, "sources": sources}
            if serving is not None:
                entry["servedBy"] = serving.export
                skipped = [s.mesh for s in route.sources if s.priority < serving.priority]
                entry["reason"] = (
                    "first in failover order"
                    if not skipped
                    else f"failover: {listed(skipped)} unavailable"
                )
            else:
                entry["reason"] = "no source mesh available: " + listed(
                    [f"{s.mesh} ({unavailable[s.mesh]})" for s in route.sources]
                )
            out.append(entry)
    return out


def _cluster_conditions(c: ClusterReport, generation: int) -> list[Obj]:
    reach = (
        condition("Reachable", True, "Connected", "", generation)
        if c.reachable
        else condition("Reachable", False, "Unreachable", c.unreachable_reason, generation)
    )
    applied = condition(
        "Applied", c.applied, c.apply_reason or "NotApplied", c.apply_message, generation
    )
    drift = (
        condition(
            "Drifted",
            True,
            "Restored",
            f"{len(c.restored)} object(s) changed by hand, put right: {listed(c.restored)}",
            generation,
        )
        if c.restored
        else condition("Drifted", False, "InSync", "", generation)
    )
    return [applied, reach, drift]


def _mesh_conditions(m: MeshReport, generation: int) -> list[Obj]:
    down = [c for c in m.clusters if not c.reachable]
    reach = (
        condition(
            "Reachable",
            False,
            "ClusterUnreachable",
            "; ".join(f"{c.name}: {c.unreachable_reason}" for c in down),
            generation,
        )
        if down
        else condition("Reachable", True, "Connected", "every cluster answers", generation)
    )
    failed = [c for c in m.clusters if c.applied is False]
    if m.frozen:
        applied = condition("Applied", False, "Held", m.frozen, generation)
    elif failed:
        applied = condition(
            "Applied", False, failed[0].apply_reason, failed[0].apply_message, generation
        )
    elif all(c.applied for c in m.clusters) and m.partly_held:
        applied = condition("Applied", True, "PartlyHeld", m.partly_held, generation)
    elif all(c.applied for c in m.clusters):
        applied = condition(
            "Applied", True, "Applied", "; ".join(c.apply_message for c in m.clusters), generation
        )
    else:
        applied = condition("Applied", None, "NotApplied", "", generation)
    restored = [f"{c.name}: {r}" for c in m.clusters for r in c.restored]
    drift = (
        condition("Drifted", True, "Restored", listed(restored), generation)
        if restored
        else condition("Drifted", False, "InSync", "", generation)
    )
    return [applied, reach, drift]


def federation_status(outcome: Outcome, previous: Obj | None, now: datetime) -> Obj:
    """The whole ``status`` of a Federation."""
    gen = outcome.generation
    prev = previous or {}
    down = [f"{c.mesh}/{c.name}" for m in outcome.meshes for c in m.clusters if not c.reachable]
    held = [
        f"{m.name} ({m.frozen or m.partly_held})"
        for m in outcome.meshes
        if m.frozen or m.partly_held
    ]
    if outcome.spec_problems:
        ready = condition("Ready", False, "InvalidSpec", listed(outcome.spec_problems), gen)
        degraded = condition("Degraded", True, "InvalidSpec", "; ".join(outcome.spec_problems), gen)
    elif outcome.error or outcome.refusals:
        message = outcome.error or listed(outcome.refusals)
        reason = "Refused" if outcome.refusals else "ReconcileFailed"
        ready = condition("Ready", False, reason, message, gen)
        degraded = condition("Degraded", True, reason, message, gen)
    elif down:
        ready = condition("Ready", False, "ClusterUnreachable", listed(down), gen)
        degraded = condition(
            "Degraded",
            True,
            "ClusterUnreachable",
            f"unreachable: {listed(down)}; held back: {listed(held) or 'nothing else'}",
            gen,
        )
    else:
        ready_now = not held and not outcome.waiting
        ready = condition(
            "Ready",
            ready_now,
            "Reconciled" if ready_now else "Waiting",
            "every mesh applied" if ready_now else listed(outcome.waiting + held),
            gen,
        )
        degraded = condition("Degraded", False, "Healthy", "", gen)
    progressing = (
        condition("Progressing", True, "Waiting", listed(outcome.waiting + held), gen)
        if outcome.waiting or held
        else condition("Progressing", False, "Settled", "", gen)
    )
    old_meshes = {m.get("name"): m for m in prev.get("meshes") or []}
    meshes = []
    for m in outcome.meshes:
        old = old_meshes.get(m.name) or {}
        old_clusters = {c.get("name"): c for c in old.get("clusters") or []}
        entry: Obj = {
            "name": m.name,
            "conditions": merge_conditions(
                old.get("conditions") or [], _mesh_conditions(m, gen), now
            ),
            "clusters": [
                {
                    "name": c.name,
                    **({"context": c.context} if c.context else {}),
                    "role": c.role,
                    "conditions": merge_conditions(
                        (old_clusters.get(c.name) or {}).get("conditions") or [],
                        _cluster_conditions(c, gen),
                        now,
                    ),
                }
                for c in m.clusters
            ],
        }
        if m.ingress_address:
            entry["ingressAddress"] = m.ingress_address
        if m.certificates:
            entry["certificates"] = m.certificates
        meshes.append(entry)
    status: Obj = {
        "observedGeneration": gen,
        "conditions": merge_conditions(
            prev.get("conditions") or [], [ready, progressing, degraded], now
        ),
        "summary": outcome.counts or prev.get("summary") or {},
        "meshes": meshes or prev.get("meshes") or [],
        "imports": outcome.imports or prev.get("imports") or [],
        "lastReconcile": _time(now),
    }
    if outcome.rotation is not None:
        status["rotation"] = outcome.rotation
    return status
