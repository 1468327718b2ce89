"""Which service accounts run each workload's Pods, watched: a rollout to a new ServiceAccount
reaches the federation without waiting for the next resync.

Discovery (``kube/discover.py``) reads a workload's service account from the Pods its Service
selects, at each reconcile; the Services are watched (``watch.py``), their Pods were not. Here
the Pods behind the mesh's workload Services are watched too, and only those: one watch per
cluster and selector key, with a set-based label selector (``app in (ledger,tokenizer)``) built
from the Services' selectors (a superset; each Pod is then matched exactly). What is kept of a
Pod is its service account and labels, never the object. A Pod event kicks a reconcile only
when the set of service accounts behind some workload Service changes (a new ServiceAccount's
first Pod, the old one's last Pod gone); a Pod's status changing, or one more replica, does not.
A Pod deleted while its watch was down (no DELETED event comes) is dropped by the list that
starts the watch again (``PodAccounts.listed``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshfed.controller.watch import Key, OnEvent, Watches, WatchSpec
from meshfed.kube.client import Obj
from meshfed.kube.discover import pick_account
from meshfed.plan.build import mesh_clusters
from meshfed.plan.model import ClusterPlan
from meshfed.spec.model import Federation

Selector = tuple[tuple[str, str], ...]
Labels = tuple[tuple[str, str], ...]
Ident = tuple[str, str]
"""(namespace, name)."""


# --- pure ----------------------------------------------------------------------------------


def discovered_meshes(body: Obj) -> frozenset[str]:
    """The meshes of a Federation object that leave their workloads to discovery (as
    ``Mesh.workloads_omitted``, read from the object as it is, before discovery fills them)."""
    meshes = ((body.get("spec") or {}) if isinstance(body, dict) else {}).get("meshes") or []
    return frozenset(
        str(m.get("name"))
        for m in meshes
        if isinstance(m, dict)
        and "workloads" not in m
        and (m.get("clusters") is not None or m.get("kubernetes") is not None)
    )


def selector_of(service: Obj) -> Selector:
    selector = (service.get("spec") or {}).get("selector") or {}
    return tuple(sorted((str(k), str(v)) for k, v in selector.items()))


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    """A Service's selector selects these labels (an empty one selects no Pod)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector)


def watch_selectors(selectors: Iterable[Selector]) -> tuple[str, ...]:
    """Set-based label selectors that together select at least every Pod one of ``selectors``
    selects: per selector its first key, grouped by key (``key in (v1,v2)``)."""
    by_key: dict[str, set[str]] = {}
    for selector in selectors:
        if selector:
            key, value = selector[0]
            by_key.setdefault(key, set()).add(value)
    return tuple(f"{k} in ({','.join(sorted(vs))})" for k, vs in sorted(by_key.items()))


def accounts(
    pods: Mapping[Ident, tuple[str, Labels]], namespace: str, selector: Selector
) -> frozenset[str]:
    """The service accounts of the Pods ``selector`` selects in ``namespace``."""
    return frozenset(
        account
        for (ns, _), (account, labels) in pods.items()
        if ns == namespace and matches(selector, dict(labels))
    )


def selects(watch_selector: str | None, labels: Mapping[str, str]) -> bool:
    """A Pod watch's label selector (``watch_selectors``: ``key in (v1,v2)``, one term) selects
    these labels."""
    if watch_selector is None:
        return True
    key, _, values = watch_selector.partition(" in (")
    return labels.get(key) in values.removesuffix(")").split(",")


def pod_entry(pod: Obj) -> tuple[Ident, str, Labels]:
    meta = pod.get("metadata") or {}
    account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    labels = tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items()))
    return (str(meta.get("namespace")), str(meta.get("name"))), str(account), labels


# --- the watched state ---------------------------------------------------------------------


@dataclass
class PodAccounts:
    """One Federation's view of its workloads' Pods: selectors (from the Service watch), the
    service account and labels of each selected Pod (from the Pod watches)."""

    on_event: OnEvent
    log: Callable[[str], None] = lambda _l: None
    selectors: dict[Key, dict[Ident, Selector]] = field(default_factory=dict)
    pods: dict[Key, dict[Ident, tuple[str, Labels]]] = field(default_factory=dict)
    watches: Watches | None = None
    specs: tuple[WatchSpec, ...] = ()
    discovered: frozenset[str] = frozenset()
    """Meshes whose workloads the spec leaves to discovery (the others' service accounts are
    the spec's: their Pods do not matter)."""
    recorded: dict[Key, dict[Ident, float]] = field(default_factory=dict)
    """When each kept Pod was last seen (``time.monotonic``): a list that began later and
    lacks it means it is gone."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def service(
        self, key: Key, event: str, obj: Obj, fed: Federation | None, services: Watches | None
    ) -> None:
        """A workload Service was seen: keep its selector, and watch its Pods."""
        if fed is None or services is None:
            return
        meta = obj.get("metadata") or {}
        ident = (str(meta.get("namespace")), str(meta.get("name")))
        with self.lock:
            known = self.selectors.setdefault(key, {})
            workloads = _workloads(fed, key[0]) if key[0] in self.discovered else set()
            selector = selector_of(obj)
            if event == "DELETED" or ident not in workloads or not selector:
                changed = known.pop(ident, None) is not None
            else:
                changed = known.get(ident) != selector
                known[ident] = selector
            if changed:
                self._ensure(fed, services)

    def refresh(
        self,
        fed: Federation | None,
        seen: Mapping[tuple[Key, str, str], tuple[object, ...]],
        services: Watches | None,
    ) -> None:
        """After a reconcile (the workloads may have changed): the selectors again, from what
        the Service watch has seen (``FederationWorker.services``: selector second)."""
        if fed is None or services is None:
            return
        with self.lock:
            selectors: dict[Key, dict[Ident, Selector]] = {}
            workloads: dict[str, set[Ident]] = {}
            for (key, ns, name), signature in seen.items():
                mesh = workloads.setdefault(
                    key[0], _workloads(fed, key[0]) if key[0] in self.discovered else set()
                )
                selector = signature[1] if len(signature) > 1 else ()
                if (ns, name) in mesh and isinstance(selector, tuple) and selector:
                    selectors.setdefault(key, {})[(ns, name)] = selector
            if selectors != self.selectors:
                self.selectors = selectors
                self._ensure(fed, services)

    def _ensure(self, fed: Federation, services: Watches) -> None:
        specs = []
        for key, known in sorted(self.selectors.items()):
            cluster = _cluster(fed, key)
            if cluster is None:
                continue
            for labels in watch_selectors(known.values()):
                specs.append(WatchSpec(key, cluster, "v1", "Pod", labels))
        if tuple(specs) == self.specs:
            return
        if self.watches is None:
            self.watches = Watches(services.connector, self.on_event, self.log)
            self.watches.stop = services.stop  # they end with the Federation's watches
        self.specs = tuple(specs)
        self.watches.ensure(specs)

    def pod(self, key: Key, event: str, obj: Obj, fed: Federation | None) -> str | None:
        """A Pod event (or a Pod listed when its watch starts): why a reconcile is needed (the
        service account discovery would take for a workload is not the one the last reconcile
        used), or None."""
        ident, account, labels = pod_entry(obj)
        now = dict(labels)
        with self.lock:
            known = self.pods.setdefault(key, {})
            old = known.get(ident)
            was = dict(old[1]) if old else {}
            selectors = {
                name: sel
                for (ns, name), sel in self.selectors.get(key, {}).items()
                if ns == ident[0] and (matches(sel, now) or matches(sel, was))
            }
            if event == "DELETED" or not any(matches(s, now) for s in selectors.values()):
                known.pop(ident, None)
                self.recorded.get(key, {}).pop(ident, None)
            else:
                known[ident] = (account, labels)
                self.recorded.setdefault(key, {})[ident] = time.monotonic()
            taken = {
                n: pick_account(accounts(known, ident[0], s)) or n for n, s in selectors.items()
            }
        used = _accounts_used(fed, key[0]) if fed is not None else {}
        changed = [
            f"{ident[0]}/{name}: {used[(ident[0], name)]} -> {taken[name]}"
            for name in sorted(taken)
            if (ident[0], name) in used and used[(ident[0], name)] != taken[name]
        ]
        if not changed:
            return None
        return f"service account on {key[1]}: " + "; ".join(changed)

    def listed(self, key: Key, ended: Obj, fed: Federation | None) -> str | None:
        """A Pod watch's list ended (``LIST_ENDED``): the Pods it selects that were seen
        before it began and are not in it were deleted while nothing watched (a 410, the
        cluster unreachable) — they count no more; why a reconcile is needed, or None."""
        listed = {(r[2], r[3]) for r in ended.get("refs") or ()}
        started, selector = float(ended.get("started") or 0.0), ended.get("labels")
        with self.lock:
            gone = [
                (ident, account, labels)
                for ident, (account, labels) in self.pods.get(key, {}).items()
                if ident not in listed
                and self.recorded.get(key, {}).get(ident, 0.0) < started
                and selects(selector, dict(labels))
            ]
        reasons = []
        for (ns, name), account, labels in gone:
            stub = {
                "metadata": {"namespace": ns, "name": name, "labels": dict(labels)},
                "spec": {"serviceAccountName": account},
            }
            why = self.pod(key, "DELETED", stub, fed)
            if why and why not in reasons:
                reasons.append(why)
        return "; ".join(reasons) or None


def _accounts_used(fed: Federation, mesh: str) -> dict[Ident, str]:
    for m in fed.spec.meshes:
        if m.name == mesh:
            return {(w.namespace, w.name): w.service_account for w in m.workloads or ()}
    return {}


def _workloads(fed: Federation, mesh: str) -> set[Ident]:
    for m in fed.spec.meshes:
        if m.name == mesh:
            return {(w.namespace, w.name) for w in m.workloads or ()}
    return set()


def _cluster(fed: Federation, key: Key) -> ClusterPlan | None:
    for mesh in fed.spec.meshes:
        if mesh.name == key[0]:
            for cluster in mesh_clusters(mesh):
                if cluster.name == key[1]:
                    return cluster
    return None


__all__ = [
    "PodAccounts",
    "accounts",
    "discovered_meshes",
    "matches",
    "selector_of",
    "selects",
    "watch_selectors",
]
