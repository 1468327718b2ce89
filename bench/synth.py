"""Synthetic federation specs of a given size, for benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _workload(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": "svc", "serviceAccount": name, "port": 8080}


def synthetic_spec(
    meshes: int,
    exports: int,
    principals: int = 1,
    workloads_per_mesh: int | None = None,
    ingress_port: Callable[[int], int] = lambda i: 20000 + i,
) -> dict[str, Any]:
    """``meshes`` meshes; ``exports`` exports spread over them, each imported by the next mesh.

    Every export is consumed by the following mesh (ring), which imports it under a local name;
    every third export has a failover source in the mesh after. Each export has a workload of
    its own, or with ``workloads_per_mesh`` the exports share that many workloads per mesh (so a
    large federation fits in a few real processes). ``ingress_port(i)`` places mesh i's ingress.
    """
    names = [f"m{i:02d}" for i in range(meshes)]
    mesh_docs: list[dict[str, Any]] = [
        {
            "name": n,
            "trustDomain": f"{n}.bench.example",
            "ingress": {"address": "127.0.0.1", "port": ingress_port(i)},
            "workloads": [
                {"name": "client", "namespace": "app", "serviceAccount": "client", "port": 8080}
            ]
            + [_workload(f"w{k}") for k in range(workloads_per_mesh or 0)],
        }
        for i, n in enumerate(names)
    ]
    export_docs: list[dict[str, Any]] = []
    import_docs: list[dict[str, Any]] = []
    for e in range(exports):
        owner = e % meshes
        consumer = (owner + 1) % meshes
        backup = (owner + 2) % meshes
        svc = f"svc{e:04d}"
        has_backup = e % 3 == 0 and len({owner, consumer, backup}) == 3
        consumers = [
            {
                "mesh": names[consumer],
                "principals": ["ns/app/sa/client"]
                + [f"ns/team{p}/sa/caller{p}" for p in range(1, principals)],
                "methods": ["GET", "POST"],
                "paths": ["/api/*"],
            }
        ]
        shared = f"w{(e // meshes) % workloads_per_mesh}" if workloads_per_mesh else None
        for mesh_index in [owner, backup] if has_backup else [owner]:
            if shared is None:
                mesh_docs[mesh_index]["workloads"].append(_workload(svc))
            export_docs.append(
                {
                    "name": svc,
                    "mesh": names[mesh_index],
                    "workload": f"svc/{shared or svc}",
                    "host": f"{svc}.{names[owner]}.bench.global",
                    "consumers": consumers,
                }
            )
        sources = [f"{names[owner]}/{svc}"]
        if has_backup:
            sources.append(f"{names[backup]}/{svc}")
        import_docs.append(
            {
                "mesh": names[consumer],
                "host": f"{svc}.app.svc.cluster.local",
                "port": 80,
                "from": sources,
            }
        )
    return {
        "apiVersion": "meshfed.dev/v1alpha1",
        "kind": "Federation",
        "metadata": {"name": "bench"},
        "spec": {"meshes": mesh_docs, "exports": export_docs, "imports": import_docs},
    }
