"""What discovery read from each mesh's clusters, kept until a watch says it may have changed.

A reconcile completes the spec from the clusters: the workloads of a mesh that leaves them to
discovery (a Service list and a Pod list per Service), the ingress address of a mesh that
leaves it to its load balancer, a primary's east-west address. Most reconciles are for one
mesh's change (a Service, a load-balancer address, drift); reading every other mesh again
costs round trips to clusters that are busy with the change itself.

The worker watches every Service of every mesh cluster and the Pods behind discovered
workloads; each event ``touch``-es its mesh (the end of a watch's list too). What a mesh's
discovery found is reused while no event came for the mesh since it was read (a counter per
mesh, taken before the read: an event during the read makes it stale at once), its spec is
the same, and the reconcile is not a full check; and only once the Service watch of every
cluster of the mesh has listed (``listed``; before that, nothing would tell a change: the
watches start after the first reconcile). Workloads found through ServiceExports (the
Multi-Cluster Services API) are never kept: ServiceExports are not watched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from meshfed.kube.discover import AddressFound
from meshfed.plan.build import mesh_clusters
from meshfed.spec.model import Mesh

Obj = dict[str, Any]
Key = tuple[str, str]
"""(federation, mesh)."""


@dataclass(frozen=True)
class Found:
    """One mesh's discovery."""

    workloads: list[Obj] | None
    """None: the spec names its workloads."""
    addresses: list[AddressFound]
    """East-west and ingress load-balancer addresses found."""
    pending: bool
    """The ingress load balancer has no address yet."""
    keep: bool = True
    """False: read again next time (found through an API that is not watched)."""


@dataclass
class DiscoveryMemo:
    _seen: dict[Key, int] = field(default_factory=dict)
    _kept: dict[Key, tuple[int, Mesh, Found]] = field(default_factory=dict)
    _listed: dict[Key, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def touch(self, federation: str, mesh: str) -> None:
        """Something on the mesh's clusters changed (any thread)."""
        with self._lock:
            self._seen[(federation, mesh)] = self._seen.get((federation, mesh), 0) + 1

    def listed(self, federation: str, mesh: str, cluster: str) -> None:
        """The Service watch of one of the mesh's clusters has listed (and watches on)."""
        with self._lock:
            self._listed.setdefault((federation, mesh), set()).add(cluster)
            self._seen[(federation, mesh)] = self._seen.get((federation, mesh), 0) + 1

    def mark(self, federation: str, mesh: str) -> int:
        """Taken before reading the mesh's clusters (for ``keep``)."""
        with self._lock:
            return self._seen.get((federation, mesh), 0)

    def get(self, federation: str, mesh: Mesh) -> Found | None:
        """What the last read of this mesh found, if nothing may have changed since."""
        key = (federation, mesh.name)
        with self._lock:
            kept = self._kept.get(key)
            seen = self._seen.get(key, 0)
            watched = {c.name for c in mesh_clusters(mesh)} <= self._listed.get(key, set())
        if kept is None or not watched or kept[0] != seen or kept[1] != mesh:
            return None
        return kept[2]

    def keep(self, federation: str, mesh: Mesh, mark: int, found: Found) -> None:
        key = (federation, mesh.name)
        with self._lock:
            if found.keep:
                self._kept[key] = (mark, mesh, found)
            else:
                self._kept.pop(key, None)

    def forget(self, federation: str) -> None:
        with self._lock:
            for key in [k for k in self._kept if k[0] == federation]:
                del self._kept[key]


__all__ = ["DiscoveryMemo", "Found"]
