"""The spec completed from the clusters: what a mesh leaves to discovery (workloads from
Services, ingress and east-west addresses from load balancers) read from its clusters, or kept
from the last read while the watches report no change (``discomemo.py``); for a mesh whose
cluster does not answer, taken from the last applied spec."""

from __future__ import annotations

from typing import Any

from meshfed.controller.discomemo import DiscoveryMemo, Found
from meshfed.kube.apply import Connect
from meshfed.kube.discover import (
    AddressFound,
    completed_spec,
    discover_addresses,
    discover_ingress_addresses,
    discover_mesh,
)
from meshfed.kube.errors import KubeError
from meshfed.kube.parallel import in_parallel
from meshfed.spec.model import Federation, Mesh

Obj = dict[str, Any]
PENDING_ADDRESS = "pending.invalid"
"""Stands in for an ingress address its load balancer has not given yet. Only importers use an
exporter's address, and importers of such a mesh are held, so it never reaches a cluster."""


def _discover(
    fed: Federation, mesh: Mesh, full: bool, connector: Connect, memo: DiscoveryMemo, workers: int
) -> Found:
    """What one mesh's clusters hold (kept while its watches report no change)."""
    if not full:
        kept = memo.get(fed.name, mesh)
        if kept is not None:
            return kept
    mark = memo.mark(fed.name, mesh.name)
    workloads, keep = None, True
    if mesh.workloads_omitted:
        found = discover_mesh(mesh, connector, workers)
        workloads, keep = found.workloads, found.source == "Service"
    addresses = discover_addresses(fed, connector, [mesh.name])
    ingress, pending = discover_ingress_addresses(fed, connector, [mesh.name])
    result = Found(workloads, [*addresses, *ingress], bool(pending), keep)
    memo.keep(fed.name, mesh, mark, result)
    return result


def complete_spec(
    fed: Federation,
    blocked: dict[str, str],
    old: Federation | None,
    full: bool,
    connector: Connect,
    memo: DiscoveryMemo,
    workers: int,
) -> tuple[Federation, list[str], list[AddressFound]]:
    """The spec with what the clusters hold filled in; and the meshes whose ingress load
    balancer has no address yet."""
    reachable = [m for m in fed.spec.meshes if m.name not in blocked]
    founds = in_parallel(
        lambda m: _discover(fed, m, full, connector, memo, workers), reachable, workers
    )
    found_in = {m.name: f for m, f in zip(reachable, founds, strict=True)}
    workloads: dict[str, list[Obj]] = {}
    for mesh in fed.spec.meshes:
        if not mesh.workloads_omitted:
            continue
        if mesh.name in blocked:
            if old is None or mesh.name not in {m.name for m in old.spec.meshes}:
                raise KubeError(
                    f"mesh {mesh.name} leaves its workloads to discovery and its cluster is "
                    "unreachable (never applied: nothing to fall back on)"
                )
            workloads[mesh.name] = [
                w.model_dump(mode="json", by_alias=True) for w in old.mesh(mesh.name).workloads
            ]
        else:
            workloads[mesh.name] = found_in[mesh.name].workloads or []
    addresses = [a for f in founds for a in f.addresses]
    pending = [m.name for m in reachable if found_in[m.name].pending]
    placeholder = {name: PENDING_ADDRESS for name in pending}
    for mesh in fed.spec.meshes:
        if mesh.name in blocked and mesh.address_omitted:
            previous = (
                old.mesh(mesh.name).ingress.address
                if old is not None and mesh.name in {m.name for m in old.spec.meshes}
                else None
            )
            placeholder[mesh.name] = previous or PENDING_ADDRESS
            if previous is None:
                pending.append(mesh.name)
    complete = completed_spec(fed, workloads, addresses, placeholder)
    return complete, pending, addresses


__all__ = ["PENDING_ADDRESS", "complete_spec"]
