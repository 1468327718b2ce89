"""Watches on the mesh clusters of one Federation: what meshfed applied (drift), and the
Services that feed discovery and load-balancer addresses.

kopf watches the management cluster; mesh clusters are other API servers, reached through
their remote secrets, so each gets its own watch streams here (one thread per cluster and
kind, list-then-watch, re-listing after a 410, backing off while a cluster is down). Every
event goes to ``on_event`` (and, on each list, every object as ``LISTED``); deciding what it
means is ``drift.py``'s and the worker's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from meshfed.controller.clusters import Connector
from meshfed.kube.client import KubeClient, Obj
from meshfed.kube.errors import KubeError
from meshfed.kube.targets import PRUNE_KINDS, selector
from meshfed.plan.model import ClusterPlan

Key = tuple[str, str]
"""(mesh, cluster)."""
OnEvent = Callable[[Key, str, Obj], None]
SERVICES = ("v1", "Service")


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

    def close(self) -> None:
        self.stop.set()

    def _run(self, spec: WatchSpec) -> None:
        backoff = 1.0
        client: KubeClient | None = None
        version = ""
        while not self.stop.is_set() and self.threads.get(spec) is threading.current_thread():
            try:
                if client is None:
                    client = self.connector.fresh(spec.cluster.context)
                if client.find(spec.api_version, spec.kind) is None:
                    self.stop.wait(30.0)  # e.g. Istio's CRDs not installed yet
                    continue
                if not version:
                    items, version = client.list_with_version(
                        spec.api_version, spec.kind, labels=spec.labels
                    )
                    for item in items:  # what changed before the watch began counts too
                        self.on_event(spec.key, "LISTED", item)
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
                    client.close()
                client = None
                version = ""
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # a watch must never die silently
                self.log(f"watch {spec.kind} on {spec.key[1]}: {type(exc).__name__}: {exc}")
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        if client is not None:
            client.close()
