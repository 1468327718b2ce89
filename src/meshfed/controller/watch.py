"""Watches on the mesh clusters of one Federation: what meshfed applied (drift), and the
Services that feed discovery and load-balancer addresses.

kopf watches the management cluster; mesh clusters are other API servers, reached through
their remote secrets, so each gets its own watch streams here (one thread per cluster and
kind, list-then-watch, re-listing after a 410, backing off while a cluster is down). The
streams of one cluster share one connection pool (fifteen kinds on ten clusters: a client
each held about 40 MB more, mostly TLS contexts). Every
event goes to ``on_event`` (and, on each list, every object as ``LISTED``, then the list's
refs as ``LIST_ENDED``); deciding what it means is ``drift.py``'s and the worker's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshfed.controller.clusters import Connector
from meshfed.controller.specmemo import release_memory
from meshfed.kube.client import KubeClient, Obj
from meshfed.kube.errors import KubeError
from meshfed.kube.targets import PRUNE_KINDS, ref, selector
from meshfed.plan.model import ClusterPlan

Key = tuple[str, str]
"""(mesh, cluster)."""
Ref = tuple[str, str, str, str]
OnEvent = Callable[[Key, str, Obj], None]
LIST_ENDED = "LIST_ENDED"
"""The event after a complete list: ``{"apiVersion", "kind", "refs", "started", "labels"}``
(every object listed; when its first page was asked for, ``time.monotonic``: the list is of
that moment; the watch's label selector, None for all)."""
SERVICES = ("v1", "Service")
LISTS_AT_ONCE = 4
"""Initial lists running at once (each a page of at most 500 objects at a time): when the
watches of ten clusters start together, the controller does not hold every object of every
cluster at once."""


@dataclass(frozen=True)
class WatchSpec:
    key: Key
    cluster: ClusterPlan
    api_version: str
    kind: str
    labels: str | None


def watch_specs(
    federation: str, clusters: list[tuple[Key, ClusterPlan]], services: set[Key]
) -> list[WatchSpec]:
    """Every kind meshfed applies, by its labels, on each cluster; all Services where
    discovery or a load-balancer address is read."""
    out = []
    for key, cluster in clusters:
        for api_version, kind in PRUNE_KINDS:
            if (api_version, kind) == SERVICES and key in services:
                continue  # the unfiltered Service watch below sees these too
            out.append(WatchSpec(key, cluster, api_version, kind, selector(federation)))
        if key in services:
            out.append(WatchSpec(key, cluster, *SERVICES, None))
    return out


class Watches:
    """The running watches of one Federation."""

    def __init__(self, connector: Connector, on_event: OnEvent, log: Callable[[str], None]) -> None:
        self.connector = connector
        self.on_event = on_event
        self.log = log
        self.stop = threading.Event()
        self.threads: dict[WatchSpec, threading.Thread] = {}
        self._clients: dict[str, KubeClient] = {}
        self._lock = threading.Lock()
        self._listing = threading.BoundedSemaphore(LISTS_AT_ONCE)

    def _client(self, context: str | None) -> KubeClient:
        """The watch connection to a cluster, shared by its streams."""
        with self._lock:
            found = self._clients.get(context or "")
            if found is None:
                found = self.connector.fresh(context)
                self._clients[context or ""] = found
            return found

    def _failed(self, context: str | None, client: KubeClient) -> None:
        """After an error, the next stream to a cluster gets a new connection (its remote
        secret may have changed); streams still on the old one end on their own."""
        with self._lock:
            if self._clients.get(context or "") is client:
                del self._clients[context or ""]

    def ensure(self, specs: list[WatchSpec]) -> None:
        """Run exactly these watches (those no longer wanted stop at their next event)."""
        wanted = set(specs)
        for spec in list(self.threads):
            if spec not in wanted:
                self.threads.pop(spec)
        for spec in specs:
            thread = self.threads.get(spec)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._run, args=(spec,), daemon=True, name=f"watch-{spec.kind}"
                )
                self.threads[spec] = thread
                thread.start()

    def _run(self, spec: WatchSpec) -> None:
        backoff = 1.0
        client: KubeClient | None = None
        version = ""
        while not self.stop.is_set() and self.threads.get(spec) is threading.current_thread():
            try:
                if client is None:
                    client = self._client(spec.cluster.context)
                if client.find(spec.api_version, spec.kind) is None:
                    self.stop.wait(30.0)  # e.g. Istio's CRDs not installed yet
                    continue
                if not version:
                    version = self._list(spec, client)
                for event, obj in client.watch(
                    spec.api_version,
                    spec.kind,
                    labels=spec.labels,
                    resource_version=version,
                    timeout_seconds=240,
                ):
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if (
                        self.stop.is_set()
                        or self.threads.get(spec) is not threading.current_thread()
                    ):
                        return
                    if event != "BOOKMARK":
                        self.on_event(spec.key, event, obj)
                backoff = 1.0
            except KubeError as exc:
                if exc.status == 410:
                    version = ""  # too old: list again
                    continue
                if exc.status in (401, 403):  # the RBAC lacks a verb: say so, not just retry
                    self.log(f"watch {spec.kind} on {spec.key[1]}: {exc.message}")
                if client is not None:
                    self._failed(spec.cluster.context, client)
                client = None
                version = ""
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # a watch must never die silently
                self.log(f"watch {spec.kind} on {spec.key[1]}: {type(exc).__name__}: {exc}")
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _list(self, spec: WatchSpec, client: KubeClient) -> str:
        """Every object of the kind as ``LISTED`` (what changed before the watch began counts
        too), a page at a time, a few lists at once; the version to watch from."""
        version = ""
        refs: list[Ref] = []
        with self._listing:
            started = time.monotonic()
            for items, listed in client.list_pages(spec.api_version, spec.kind, labels=spec.labels):
                for item in items:
                    refs.append(ref(item))
                    self.on_event(spec.key, "LISTED", item)
                version = listed or version
        release_memory()  # the pages, decoded and dropped
        # The whole list: what it lacks was deleted while nothing watched (``LIST_ENDED``).
        self.on_event(
            spec.key,
            LIST_ENDED,
            {
                "apiVersion": spec.api_version,
                "kind": spec.kind,
                "refs": refs,
                "started": started,
                "labels": spec.labels,
            },
        )
        return version

    def close(self) -> None:
        self.stop.set()
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
