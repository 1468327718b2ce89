"""One reconcile of one Federation: the CLI's plan/render/apply, in make-before-break waves.

1. The object's spec is parsed and checked as ``meshfed validate`` does (nothing is written
   for an invalid one; the problems go to the status).
2. Every cluster is asked for its version: an unreachable one is reported and its mesh held.
3. What the spec leaves to the clusters is read from them (workloads from Services, discovery
   and ingress addresses from load balancers); for a held mesh, from the last applied spec.
4. In the PKI state checked out of its Secret: the plan, and the waves of ``ordering.py``,
   each a ``Rollout`` (server-side dry-run on every cluster first, then server-side apply,
   field manager ``meshfed``, pruning by labels) over the clusters of meshes not held.
5. What was done, and what a person needs to know, becomes an ``Outcome`` (``status.py``).

Between full checks a reconcile is incremental (``applied.py``, ``specmemo.py``): meshes whose
render inputs did not change are not rendered again, objects whose text is what this
controller last wrote are neither dry-run nor written, and the specs are parsed once per
version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshfed.bundles.config import followed_pems
from meshfed.controller.applied import AppliedCache, AppliedView, Canon, ClusterKey
from meshfed.controller.certificates import certificates
from meshfed.controller.clusters import Connector
from meshfed.controller.complete import complete_spec
from meshfed.controller.discomemo import DiscoveryMemo
from meshfed.controller.ordering import (
    Hold,
    Wave,
    edge_changes,
    holds,
    union_spec,
    waves,
)
from meshfed.controller.pkistate import SecretState
from meshfed.controller.specmemo import SpecMemo, release_memory
from meshfed.controller.status import ClusterReport, MeshReport, Outcome, import_status
from meshfed.controller.timing import Phases
from meshfed.kube.client import KubeClient, Obj
from meshfed.kube.discover import (
    AddressFound,
)
from meshfed.kube.errors import ApplyRefused, KubeError
from meshfed.kube.parallel import in_parallel
from meshfed.kube.state import StoredState, read_state
from meshfed.kube.targets import ClusterTarget, TargetError, cluster_targets
from meshfed.kube.workspace import KubeWorkspace, kube_workspace
from meshfed.pki.errors import PKIError
from meshfed.plan.build import mesh_clusters
from meshfed.plan.model import ClusterPlan, FederationPlan
from meshfed.plan.trust import root_pems
from meshfed.spec.check import check_federation
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_document
from meshfed.spec.model import Federation
from meshfed.workspace import plan_of

Key = tuple[str, str]
"""(mesh, cluster)."""
REQUESTS_IN_FLIGHT = 8
"""Requests to one cluster at a time (dry-runs; writes of objects that do not depend on each
other): a change of a hundred routes waits for round trips, not for the CPU."""


def spec_document(body: Obj) -> Obj:
    """The Federation object as a spec document (what ``kubectl apply -f`` sent)."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": (body.get("metadata") or {}).get("name")},
        "spec": body.get("spec"),
    }


def parse_federation(body: Obj) -> Federation:
    """The spec of a Federation object, checked like a file (SpecError names each field)."""
    name = str((body.get("metadata") or {}).get("name"))
    return parse_document(spec_document(body), f"federation/{name}", discovery_pending=True)


@dataclass
class Result:
    outcome: Outcome
    desired: dict[Key, AppliedView] = field(default_factory=dict)
    """Per cluster, every object meshfed keeps there (for drift repair between reconciles)."""
    plan: FederationPlan | None = None
    federation: Federation | None = None
    restored: list[tuple[str, str, str]] = field(default_factory=list)
    """(cluster label, action, object) found changed by hand and put right."""
    applied: list[tuple[str, str, str]] = field(default_factory=list)
    """(cluster label, action, object) written because the spec or the clusters changed."""
    next_renewal: datetime | None = None
    lb_addresses: dict[str, str | None] = field(default_factory=dict)
    """Meshes whose ingress address comes from their load balancer: the address used (None:
    none yet). A different one on the Service calls for a reconcile."""
    phases: Phases = field(default_factory=Phases)
    """Where the reconcile's time went (``timing.py``)."""


@dataclass
class Reconciler:
    """Reconciles Federations; keeps what it applied last, to tell drift from change."""

    management: KubeClient
    namespace: str
    work_dir: Path
    connector: Connector
    log: Callable[[str], None] = lambda _line: None
    applied: AppliedCache = field(default_factory=AppliedCache)
    """Per (federation, mesh, cluster): each object as this controller last put it there.
    Between full checks, such an object is settled: the watches report any change to it, and
    drift repair puts it back (``applied.py``)."""
    specs: SpecMemo = field(default_factory=SpecMemo)
    """The object's spec, the stored spec and its plan, once per version (``specmemo.py``)."""
    discovery: DiscoveryMemo = field(default_factory=DiscoveryMemo)
    """What each mesh's clusters held, until a watch reports a change (``discomemo.py``)."""

    # -- steps ------------------------------------------------------------------------------

    def _reach(self, fed: Federation, reports: dict[str, MeshReport]) -> dict[str, str]:
        """Every cluster asked at once (each a round trip); the meshes with one that did
        not answer, and why."""
        pairs = [
            (mesh.name, cluster, report)
            for mesh in fed.spec.meshes
            for cluster, report in zip(
                mesh_clusters(mesh), reports[mesh.name].clusters, strict=True
            )
        ]

        def ask(pair: tuple[str, ClusterPlan, ClusterReport]) -> str | None:
            try:
                self.connector(pair[1]).version()
            except KubeError as exc:
                return exc.message
            return None

        blocked: dict[str, str] = {}
        for (mesh, cluster, report), failed in zip(
            pairs, in_parallel(ask, pairs, REQUESTS_IN_FLIGHT), strict=True
        ):
            if failed is not None:
                self.connector.forget(cluster.context)
                report.reachable = False
                report.unreachable_reason = failed
                blocked.setdefault(mesh, f"cluster {cluster.name} is unreachable")
        return blocked

    def _stored(self, fed: Federation, blocked: dict[str, str]) -> StoredState | None:
        states = []
        for mesh in fed.spec.meshes:
            clusters = mesh_clusters(mesh)
            if mesh.name in blocked or not clusters:
                continue
            try:
                found = read_state(self.connector(clusters[0]), fed.name)
            except KubeError:
                continue
            if found is not None:
                states.append(found)
        return max(states, key=lambda s: s.applied_at) if states else None

    def _complete(
        self, fed: Federation, blocked: dict[str, str], old: Federation | None, full: bool
    ) -> tuple[Federation, list[str], list[AddressFound]]:
        return complete_spec(
            fed, blocked, old, full, self.connector, self.discovery, REQUESTS_IN_FLIGHT
        )

    def _targets(
        self, name: str, kws: KubeWorkspace, canon: Canon, reuse: bool
    ) -> tuple[list[ClusterTarget], dict[str, Any]]:
        """Every cluster's target; with ``reuse``, the meshes whose render inputs are those
        of their last applied rendering are not rendered again (their objects are read back).
        Returns the targets and each mesh's render inputs."""
        plan = kws.ws.plan
        credentials = kws.ws.credentials()
        inputs: dict[str, Any] = {}
        targets: list[ClusterTarget] = []
        for mesh in plan.meshes:
            inputs[mesh.name] = (plan.name, mesh, credentials[mesh.name])
            keys = [(name, mesh.name, c.name) for c in mesh.clusters]
            if reuse and self.applied.reusable(name, mesh.name, inputs[mesh.name], keys):
                kept = []
                for cluster in [*mesh.remotes, mesh.primary]:
                    assert cluster is not None
                    objects = self.applied.objects_of((name, mesh.name, cluster.name), canon)
                    if objects is None:
                        break
                    remotes = mesh.remotes if cluster is mesh.primary else ()
                    kept.append(ClusterTarget(mesh, cluster, objects, remotes=remotes))
                else:
                    targets += kept
                    continue
            rendered = {mesh.name: kws.ws.istio_with(mesh.name, credentials)}
            targets += cluster_targets(plan, rendered, [mesh.name])
        return targets, inputs

    def _rollout(
        self,
        name: str,
        kws: KubeWorkspace,
        targets: list[ClusterTarget],
        wave: Wave,
        held: dict[str, Hold],
        retire: bool,
        canon: Canon,
        full: bool,
    ) -> tuple[list[ClusterTarget], Any]:
        def kept(target: ClusterTarget, obj: Obj) -> bool:
            hold = held.get(target.mesh.name)
            return hold is not None and hold.keeps(obj)

        targets = [t for t in targets if not (t.mesh.name in held and held[t.mesh.name].whole)]
        for target in targets:
            target.objects = [o for o in target.objects if wave.applies(o) and not kept(target, o)]

        def prunable(target: ClusterTarget, obj: Obj) -> bool:
            return wave.prunes(obj) and not kept(target, obj)

        def key(target: ClusterTarget) -> ClusterKey:
            return (name, target.mesh.name, target.name)

        def settled(target: ClusterTarget, obj: Obj) -> bool:
            return self.applied.settled(key(target), obj, canon)

        def present(target: ClusterTarget) -> list[Obj] | None:
            return self.applied.present(key(target))

        def live(target: ClusterTarget, obj: Obj) -> Obj | None:
            return self.applied.live(key(target), obj)

        rollout = kws.rollout(
            targets,
            prune=bool(wave.prune),
            store_state=wave.store_state,
            retire=retire,
            prunable=prunable,
            settled=None if full else settled,
            present=None if full else present,
            live=None if full else live,
            canonical=canon,
            workers=REQUESTS_IN_FLIGHT,
            state_known=not full,
        )
        return targets, rollout

    # -- the reconcile ----------------------------------------------------------------------

    def reconcile(
        self,
        body: Obj,
        now: datetime | None = None,
        full: bool = True,
        phases: Phases | None = None,
    ) -> Result:
        """``full``: dry-run and apply every object; otherwise those this controller put in
        place and has watched since are taken as they are (see ``applied``). ``phases``: where
        the time goes is booked there (the caller's, to book its own steps too)."""
        now = now or datetime.now(UTC)
        name = str(body["metadata"]["name"])
        outcome = Outcome(int(body["metadata"].get("generation") or 0))
        result = Result(outcome, phases=phases or Phases())
        try:
            fed = self.specs.parse(name, spec_document(body), lambda: parse_federation(body))
        except SpecError as exc:
            outcome.spec_problems = exc.lines
            return result
        finally:
            result.phases.mark("parse")
        reports = {
            m.name: MeshReport(
                m.name,
                [ClusterReport(m.name, c.name, c.context, c.role) for c in mesh_clusters(m)],
            )
            for m in fed.spec.meshes
        }
        outcome.meshes = [reports[m.name] for m in fed.spec.meshes]
        outcome.counts = {
            "meshes": len(fed.spec.meshes),
            "exports": len(fed.spec.exports),
            "imports": len(fed.spec.imports),
        }
        try:
            self._run(fed, name, reports, result, now, full)
        except SpecError as exc:
            outcome.spec_problems = exc.lines
        except ApplyRefused as exc:
            outcome.refusals = [str(r) for r in exc.refusals]
        except (KubeError, PKIError, TargetError, ValueError) as exc:
            outcome.error = str(exc)
        if outcome.refusals or outcome.error:
            self.forget(name)  # what is in place is not known for sure: check all next time
        release_memory()
        result.phases.mark("release memory")
        return result

    def forget(self, name: str) -> None:
        self.applied.forget(name)
        self.specs.forget(name)
        self.discovery.forget(name)

    def _run(
        self,
        fed: Federation,
        name: str,
        reports: dict[str, MeshReport],
        result: Result,
        now: datetime,
        full: bool = True,
    ) -> None:
        outcome = result.outcome
        mark = result.phases.mark
        blocked = self._reach(fed, reports)
        mark("reach")
        remembered = self.specs.remembered(name) if not full else None
        stored = None if remembered is not None else self._stored(fed, blocked)
        old_fed, stored_sha = (
            (remembered[0], "") if remembered is not None else self.specs.old(name, stored)
        )
        mark("stored state")
        complete, pending, addresses = self._complete(fed, blocked, old_fed, full)
        mark("discover")
        for found in addresses:
            if found.ingress:
                reports[found.mesh].ingress_address = found.address
        result.lb_addresses = {
            m.name: reports[m.name].ingress_address
            for m in fed.spec.meshes
            if m.address_omitted and m.name not in blocked
        }
        for mesh in pending:
            outcome.waiting.append(
                f"mesh {mesh}: the federation-ingress load balancer has no address yet"
            )
        problems = check_federation(complete)
        if problems:
            raise SpecError(
                f"federation/{name}",
                [p.render(f"federation/{name} (discovered)", None) for p in problems],
            )
        mark("check")
        state = SecretState(self.management, self.namespace, name, self.work_dir)
        with state.session() as state_dir:
            mark("pki checkout")
            origin = Path(f"federation/{name}")
            kws = kube_workspace(complete, origin, state_dir, self.connector)
            mark("plan")
            old_plan = (
                remembered[1]
                if remembered is not None
                else self.specs.old_plan(name, stored, stored_sha)
            )
            union_fed, why = union_spec(old_fed, complete)
            if why:
                outcome.notes.append(why)
            union_plan = (
                plan_of(union_fed, root_pems(kws.ws.pki), followed_pems(union_fed, state_dir))
                if union_fed is not complete
                else kws.ws.plan
            )
            changes = edge_changes(old_plan, kws.ws.plan, None if why else union_plan)
            held = holds(changes, kws.ws.plan, blocked, pending)
            mark("union and edges")
            for mesh, hold in held.items():
                if mesh in reports:
                    if hold.whole:
                        reports[mesh].frozen = hold.reason
                    else:
                        reports[
                            mesh
                        ].partly_held = (
                            f"{' and '.join(sorted(map(str, hold.sides)))} side held: {hold.reason}"
                        )
            runs: list[Any] = []
            earlier: list[Any] = []
            changed: set[Key] = set()
            canon = Canon()
            planned = waves(changes)
            inputs: dict[str, Any] = {}
            spec_text: str | None = None
            answered = frozenset(  # every cluster of a mesh not blocked answered ``_reach``
                c.context or "" for m in fed.spec.meshes if m.name not in blocked
                for c in mesh_clusters(m)
            )  # fmt: skip
            for wave in planned:
                earlier += runs
                wave_kws = kws
                if wave.spec == "union" and union_fed is not complete:
                    wave_kws = kube_workspace(union_fed, origin, state_dir, self.connector)
                # Meshes are rendered again only when the reconcile is one wave (a change of
                # what the clusters report, not of the spec's edges) and not a full check.
                reuse = not full and len(planned) == 1
                all_targets, inputs = self._targets(name, wave_kws, canon, reuse)
                mark(f"{wave.name}: render")
                retire = wave.store_state and not held
                targets, rollout = self._rollout(
                    name, wave_kws, all_targets, wave, held, retire, canon, full
                )
                rollout.mark = lambda what, w=wave.name: mark(f"{w}: {what}")
                rollout.answered = answered
                runs = rollout.run()
                spec_text = rollout.spec_text or spec_text
                for run in runs:
                    at = (name, run.target.mesh.name, run.target.name)
                    if self.applied.remember(at, run.target.desired(), run.prune, canon):
                        changed.add(at[1:])
                mark(f"{wave.name}: remember")
                self.log(f"{name}: wave {wave.name}: {len(targets)} cluster(s)")
            for target in all_targets:  # the final wave's: the new spec, whole
                mesh = target.mesh.name
                if mesh in held or mesh not in inputs:
                    self.applied.unmark(name, mesh)
                else:
                    at = (name, mesh, target.name)
                    self.applied.mark_rendered(at, target.objects, mesh, inputs[mesh])
            if spec_text is not None:
                # What the next reconcile reads back from the clusters' stored state.
                self.specs.stored_now(name, spec_text, complete, kws.ws.plan)
            self._account(name, kws, runs, reports, result, earlier, changed)
            result.plan = kws.ws.plan
            result.federation = complete
            result.next_renewal = certificates(kws, reports, now)
            mark("account")
        mark("pki commit")
        unavailable = {m: r.frozen for m, r in reports.items() if r.frozen}
        outcome.imports = import_status(kws.ws.plan, unavailable)
        mark("import status")

    def _account(
        self,
        name: str,
        kws: KubeWorkspace,
        runs: list[Any],
        reports: dict[str, MeshReport],
        result: Result,
        earlier: list[Any] | None = None,
        changed: set[Key] | None = None,
    ) -> None:
        """Per cluster: what the waves did (the final wave's objects are what is kept), drift
        told apart from change (``changed``: the clusters whose desired objects changed)."""
        for run in earlier or []:  # opening and routing waves: changes, never drift
            for action, obj_name in run.actions:
                if action != "unchanged":
                    result.applied.append((run.label, action, obj_name))
        for run in runs:
            target = run.target
            key = (target.mesh.name, target.name)
            result.desired[key] = self.applied.view((name, *key))
            wrote = [(a, n) for a, n in run.actions if a != "unchanged"]
            report = _report(reports, target.mesh.name, target.name)
            if report is not None:
                report.applied = True
                report.apply_reason = "Applied"
                report.apply_message = f"{target.name}: {run.summary()}"
            for action, obj_name in wrote:
                if obj_name.startswith("ConfigMap meshfed-system/meshfed-"):
                    continue  # the stored state follows every change
                entry = (run.label, action, obj_name)
                if changed is not None and key not in changed:
                    result.restored.append(entry)
                    if report is not None:
                        report.restored.append(f"{obj_name} {action}")
                else:
                    result.applied.append(entry)


def _report(reports: dict[str, MeshReport], mesh: str, cluster: str) -> ClusterReport | None:
    found = reports.get(mesh)
    if found is None:
        return None
    return next((c for c in found.clusters if c.name == cluster), None)
