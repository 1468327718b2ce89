"""The loop of one Federation (run by a kopf daemon, in its own thread): wait for a reason to
act, act, tell.

Reasons: the object changed (kopf), a watched object on a mesh cluster changed (drift, a
Service, a load-balancer address), a certificate is due, the periodic resync. Drift of single
objects is repaired at once with the same server-side apply (or deleted, for an extra object)
and an Event; everything else runs a whole reconcile (``reconcile.py``). Events that arrive
within ``DEBOUNCE`` of each other make one reconcile.

Where more triggers plug in: anything that changes what the plan trusts or routes calls
``kick(reason)`` from any thread (a SPIFFE trust bundle fetched from a peer's bundle endpoint
that changed, for instance), and the reconcile reads it through the PKI state and the spec like
any other input; nothing here needs to know where it came from.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from meshfed.controller.certificates import expiring
from meshfed.controller.discovery import PodAccounts, discovered_meshes
from meshfed.controller.drift import Ref, Repair, may_drift, missing_after_list, repair_for
from meshfed.controller.reconcile import Reconciler, Result
from meshfed.controller.rotation import ANNOTATION, parse_request, rotation_step
from meshfed.controller.specmemo import release_memory
from meshfed.controller.status import federation_status
from meshfed.controller.timing import Phases
from meshfed.controller.watch import LIST_ENDED, Key, Watches, watch_specs
from meshfed.kube.client import Obj
from meshfed.kube.discover import SYSTEM_NAMESPACES, load_balancer_address
from meshfed.kube.errors import KubeError
from meshfed.kube.parallel import in_parallel
from meshfed.kube.targets import ref, ref_text
from meshfed.plan.build import mesh_clusters
from meshfed.plan.names import GATEWAY_NAMESPACE, INGRESS_GATEWAY
from meshfed.render.istio.multicluster import EASTWEST_GATEWAY

DEBOUNCE = 0.1
FULL_CHECKS = frozenset({"started", "periodic resync", "repair failed"})
"""Reconciles that dry-run every object (the others take what this controller applied and
has watched since as settled)."""
RESYNC = 300.0
REPAIRS_AT_ONCE = 8
"""Drift repairs (a read and a write each) in flight at once, over the clusters they touch."""
QUIET_TRIM = 5.0
"""Seconds without an event after which an idle worker trims the C heap (``_quiet``)."""
EXPIRY_WARNING = timedelta(days=30)
Emit = Callable[[str, str, str], None]
"""(type Normal|Warning, reason, message): an Event on the Federation."""
Patch = Callable[[Obj], None]
"""Writes the Federation's status."""


def service_signature(obj: Obj) -> tuple[Any, ...]:
    """What discovery and load-balancer addresses read from a Service."""
    spec = obj.get("spec") or {}
    ports = tuple(
        (p.get("port"), p.get("name"), p.get("appProtocol")) for p in spec.get("ports") or []
    )
    selector = tuple(sorted((spec.get("selector") or {}).items()))
    ingress = tuple(
        (i.get("ip"), i.get("hostname"))
        for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    )
    return ports, selector, ingress


@dataclass
class FederationWorker:
    name: str
    reconciler: Reconciler
    emit: Emit
    patch_status: Patch
    log: Callable[[str], None] = lambda _l: None
    resync: float = RESYNC
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    last: Result | None = None
    services: dict[tuple[Key, str, str], tuple[Any, ...]] = field(default_factory=dict)
    pruned: set[Ref] = field(default_factory=set)
    watches: Watches | None = None
    annotate: Callable[[dict[str, str | None]], None] | None = None
    """Sets (or, with None, removes) annotations of the Federation."""
    pods: PodAccounts = field(init=False)
    _busy_at: float = field(default=0.0, init=False, repr=False)
    """When the worker last took an event (0: trimmed since)."""
    status: Obj | None = None
    """The status of the last reconcile (what the next one's conditions continue from; the
    Federation's own may not show it yet)."""

    def __post_init__(self) -> None:
        self.pods = PodAccounts(self.on_event, self.log)

    # -- triggers (any thread) ----------------------------------------------------------------

    def kick(self, reason: str) -> None:
        self.events.put(("resync", reason))

    def on_event(self, key: Key, event: str, obj: Obj) -> None:
        if obj.get("kind") in ("Service", "Pod"):  # what discovery reads may have changed
            self.reconciler.discovery.touch(self.name, key[0])
            if event == LIST_ENDED and obj.get("kind") == "Service":
                self.reconciler.discovery.listed(self.name, key[0], key[1])
        if event == LIST_ENDED and obj.get("kind") == "Pod":  # Pods deleted while unwatched
            why = self.pods.listed(key, obj, self.last.federation if self.last else None)
            if why:
                self.kick(why)
            return
        if event == LIST_ENDED:  # compared with what was applied when the worker gets to it
            self.events.put(("listed", (key, obj)))
            if obj.get("kind") == "Service" and self.last is not None:
                # A Service changed while this watch did not run (before its first list, or
                # in a gap a 410 ended) shows only in the list, and a listed Service is no
                # change (``_service_matters``): discovery reads the mesh again, now.
                self.kick(f"Service watch on {key[1]} listed")
            return
        if obj.get("kind") == "Pod":  # discovery.py: a workload's service accounts
            why = self.pods.pod(key, event, obj, self.last.federation if self.last else None)
            if why:
                self.kick(why)
            return
        if obj.get("kind") == "Service":
            fed = self.last.federation if self.last else None
            self.pods.service(key, event, obj, fed, self.watches)
        if obj.get("kind") == "Service" and self._service_matters(key, event, obj):
            meta = obj.get("metadata") or {}
            self.kick(f"Service {meta.get('namespace')}/{meta.get('name')} on {key[1]}")
        if _labelled(obj, self.name) and may_drift(event, obj):
            self.events.put(("drift", (key, "MODIFIED" if event == "LISTED" else event, obj)))

    def _service_matters(self, key: Key, event: str, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        ident = (key, ns, name)
        signature = None if event == "DELETED" else service_signature(obj)
        before = self.services.get(ident)
        if signature is None:
            self.services.pop(ident, None)
        else:
            self.services[ident] = signature
        if ns == GATEWAY_NAMESPACE and name == INGRESS_GATEWAY:
            # Compared with the address the last reconcile used (a change may come before
            # this watch's first list).
            used = self.last.lb_addresses if self.last else {}
            return key[0] in used and used[key[0]] != load_balancer_address(obj)
        if event == "LISTED" or before == signature:
            return False
        return name == EASTWEST_GATEWAY or ns not in SYSTEM_NAMESPACES

    # -- the loop (the daemon's thread) ---------------------------------------------------------

    def run(self, body: Callable[[], Obj], stopped: Callable[[], bool]) -> None:
        self.kick("started")
        try:
            while not stopped():
                timeout = self._until_due()
                try:
                    first = self.events.get(timeout=max(min(timeout, 1.0), 0.01))
                except queue.Empty:
                    if timeout <= 1.0 and self.events.empty():
                        self.kick("periodic resync" if self.last else "retry")
                    self._quiet()
                    continue
                self._busy_at = time.monotonic()
                phases = Phases()
                batch = [first]
                deadline = time.monotonic() + DEBOUNCE
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        batch.append(self.events.get(timeout=left))
                    except queue.Empty:
                        break
                if stopped():
                    break
                resync = [reason for kind, reason in batch if kind == "resync"]
                phases.mark("debounce")
                if resync or self.last is None:
                    self._reconcile(body(), resync[0] if resync else "drift", phases)
                # After a reconcile too: an incremental one writes only what changed, so a
                # deletion by hand that came in the same batch is still to be repaired.
                repairs: list[tuple[Key, Repair]] = []
                for kind, item in batch:
                    if kind == "drift" and (repair := self._repair(*item)) is not None:
                        repairs.append(repair)
                    elif kind == "listed":
                        repairs += self._restore_unlisted(*item)
                self._repair_all(repairs)
        finally:
            if self.watches is not None:
                self.watches.close()

    def _quiet(self) -> None:
        """Once work has settled (``QUIET_TRIM`` without an event), give the C heap's free
        pages back once more: after a reconcile's own release come its status write, the
        Federation's new version kopf decodes and the watches' events of what it wrote,
        which leave pages free too (measured at ten clusters: 11 MB of an idle controller)."""
        if self._busy_at and time.monotonic() - self._busy_at >= QUIET_TRIM:
            self._busy_at = 0.0
            release_memory()

    def _until_due(self) -> float:
        due = self.resync
        if self.last is not None and self.last.next_renewal is not None:
            renew = (self.last.next_renewal - datetime.now(UTC)).total_seconds()
            due = min(due, max(renew, 1.0))
        if self.last is not None and (
            self.last.outcome.refusals or self.last.outcome.error or self.last.outcome.waiting
        ):
            due = min(due, 15.0)  # retry what failed or waits, sooner than a resync
        since = time.monotonic() - getattr(self, "_last_at", time.monotonic())
        return max(due - since, 0.0)

    # -- acting -----------------------------------------------------------------------------

    def _reconcile(self, body: Obj, reason: str, phases: Phases | None = None) -> None:
        phases = phases or Phases()
        full = reason in FULL_CHECKS or not reason or reason.startswith("retry")
        result = self.reconciler.reconcile(body, full=full, phases=phases)
        self._last_at = time.monotonic()
        self.last = result
        outcome = result.outcome
        self.pruned = {_ref_of(name) for _, action, name in result.applied if action == "deleted"}
        for label, action, name in result.restored:
            self.emit("Warning", "DriftRestored", f"{name} on {label}: {action} (changed by hand)")
        changed = [f"{a} {n} on {label}" for label, a, n in result.applied]
        if changed:
            self.emit(
                "Normal",
                "Applied",
                f"{len(changed)} change(s) ({reason}): " + "; ".join(changed[:5]),
            )
        for report in outcome.meshes:
            for cluster in report.clusters:
                if not cluster.reachable:
                    self.emit(
                        "Warning",
                        "ClusterUnreachable",
                        f"mesh {report.name} cluster {cluster.name}: {cluster.unreachable_reason}",
                    )
        if outcome.spec_problems:
            self.emit("Warning", "InvalidSpec", "; ".join(outcome.spec_problems)[:1000])
        if outcome.refusals or outcome.error:
            self.emit(
                "Warning", "ReconcileFailed", (outcome.error or "; ".join(outcome.refusals))[:1000]
            )
        for text in expiring(result.outcome.meshes, datetime.now(UTC), EXPIRY_WARNING):
            self.emit("Warning", "CertificateExpiring", text)
        phases.mark("events")
        self._rotate(body, result)
        phases.mark("rotation")
        previous = self.status or ((body.get("status") or {}) if isinstance(body, dict) else {})
        self.status = federation_status(outcome, previous, datetime.now(UTC))
        try:
            self.patch_status(self.status)
        except KubeError as exc:
            self.log(f"{self.name}: status not written: {exc}")
        phases.mark("status")
        self.pods.discovered = discovered_meshes(body)
        self._watch(result)
        phases.mark("watches")
        self.log(
            f"{self.name}: reconciled ({reason}) in {phases.total:.2f}s: "
            f"{len(result.applied)} applied, {len(result.restored)} restored "
            f"({phases.summary()})"
        )

    def _rotate(self, body: Obj, result: Result) -> None:
        """One step of a rotation the annotation asks for, after a reconcile that applied
        the previous step; the next reconcile applies this one."""
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        try:
            request = parse_request(annotations.get(ANNOTATION))
        except ValueError as exc:
            result.outcome.spec_problems.append(str(exc))
            return
        if request is None or result.federation is None or self.annotate is None:
            return
        if result.outcome.refusals or result.outcome.error or result.outcome.spec_problems:
            return  # the last step is not on every cluster yet
        reconciler = self.reconciler
        try:
            step = rotation_step(
                reconciler.management,
                reconciler.namespace,
                reconciler.work_dir,
                result.federation,
                request,
            )
        except Exception as exc:  # RotationError, PKIError, KubeError: reported, retried
            self.emit("Warning", "RotationFailed", str(exc)[:1000])
            result.outcome.waiting.append(f"rotation: {exc}")
            return
        result.outcome.rotation = step.record or {"finished": True}
        if step.held:
            result.outcome.waiting.append(f"rotation: {step.held}")
            return
        if step.waiting:
            result.outcome.waiting.append(
                "rotation waits for signed certificate(s): "
                + ", ".join(step.waiting)
                + " (meshfed controller pki-request / pki-import)"
            )
            return
        if step.step:
            self.emit("Normal", "RotationStep", f"{step.step}: {step.detail}"[:1000])
        if step.finished:
            self.annotate({ANNOTATION: None})
            self.emit("Normal", "RotationDone", f"{request.kind} rotation finished")
        self.kick("rotation step")

    def _watch(self, result: Result) -> None:
        fed = result.federation
        if fed is None:
            return
        if self.watches is None:
            self.watches = Watches(self.reconciler.connector, self.on_event, self.log)
        clusters = []
        services: set[Key] = set()
        for mesh in fed.spec.meshes:
            for cluster in mesh_clusters(mesh):
                key = (mesh.name, cluster.name)
                clusters.append((key, cluster))
                services.add(key)  # discovery, ingress and east-west load balancers
        self.watches.ensure(watch_specs(self.name, clusters, services))
        self.pods.refresh(fed, self.services, self.watches)

    def _repair(self, key: Key, event: str, obj: Obj) -> tuple[Key, Repair] | None:
        """What a watch event of a managed object calls for (``drift.repair_for``), if any."""
        last = self.last
        if last is None or key not in last.desired:
            return None
        repair = repair_for(event, obj, last.desired[key], self.name, self.pruned)
        return None if repair is None else (key, repair)

    def _restore_unlisted(self, key: Key, listed: Obj) -> list[tuple[Key, Repair]]:
        """A watch's complete list lacks objects meshfed applied there: deleted while no
        watch ran (``drift.missing_after_list``); each is repaired as a deletion."""
        last = self.last
        if last is None or key not in last.desired:
            return []
        refs: set[Ref] = {(g, k, ns, name) for g, k, ns, name in listed["refs"]}
        desired = last.desired[key]
        started = listed.get("started")
        # A reconcile that wrote while the watch listed: the list may predate its objects.
        after = desired.written_since(started) if isinstance(started, float) else set()
        missing = missing_after_list(desired, listed["apiVersion"], listed["kind"], refs, after)
        return [r for r in (self._repair(key, "DELETED", obj) for obj in missing) if r]

    def _repair_all(self, repairs: list[tuple[Key, Repair]]) -> None:
        """Carry out the repairs of one batch, ``REPAIRS_AT_ONCE`` requests at a time (a
        hand deletion of hundreds of objects is put back in about the time of a reconcile
        that writes them, not one read and one write after another); the last word on each
        object wins. Events and the log are written from this thread (kopf's context)."""
        latest = {(key, repair.ref): (key, repair) for key, repair in repairs}
        todo = list(latest.values())

        def act(item: tuple[Key, Repair]) -> str | KubeError | None:
            try:
                return self._do(*item)
            except KubeError as exc:
                return exc

        failed = False
        for (key, repair), done in zip(todo, in_parallel(act, todo, REPAIRS_AT_ONCE), strict=True):
            what = ref_text(repair.obj)
            if isinstance(done, KubeError):
                self.log(f"{self.name}: repair of {what} failed: {done}; reconciling")
                failed = True
            elif done == "pruned":
                self.emit("Warning", "DriftPruned", f"{what} on {key[1]}: {repair.why}; deleted")
            elif done == "restored":
                self.emit("Warning", "DriftRestored", f"{what} on {key[1]}: {repair.why}; restored")
                self.log(f"{self.name}: restored {what} on {key[1]} ({repair.why})")
        if failed:
            self.kick("repair failed")

    def _do(self, key: Key, repair: Repair) -> str | None:
        """One repair on its cluster (any thread): "pruned", "restored", or None when the
        cluster already held what it should."""
        fed = self.last.federation if self.last else None
        assert fed is not None
        mesh = next(m for m in fed.spec.meshes if m.name == key[0])
        cluster = next(c for c in mesh_clusters(mesh) if c.name == key[1])
        client = self.reconciler.connector(cluster)
        if repair.action == "prune":
            if client.delete(repair.obj):
                self.pruned.add(repair.ref)
                return "pruned"
            return None
        before = client.get(
            repair.obj["apiVersion"],
            repair.obj["kind"],
            repair.obj["metadata"]["name"],
            repair.obj["metadata"].get("namespace"),
        )
        after = client.apply(repair.obj, force=True)
        version = (before or {}).get("metadata", {}).get("resourceVersion")
        if before is None or version != after["metadata"].get("resourceVersion"):
            return "restored"
        return None


def _labelled(obj: Obj, federation: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get("meshfed.dev/federation") == federation


def _ref_of(text: str) -> Ref:
    """The ref of a rendered object from ``ref_text`` (``Kind.group ns/name``)."""
    kind_group, _, where = text.partition(" ")
    kind, _, group = kind_group.partition(".")
    ns, _, name = where.rpartition("/")
    return (group, kind, ns, name)


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


__all__ = ["FederationWorker", "ref"]
