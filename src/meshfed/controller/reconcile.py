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
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from meshfed.bundles.config import followed_pems
from meshfed.controller.clusters import Connector
from meshfed.controller.ordering import (
    Hold,
    Wave,
    edge_changes,
    holds,
    union_spec,
    waves,
)
from meshfed.controller.pkistate import SecretState
from meshfed.controller.status import ClusterReport, MeshReport, Outcome, import_status
from meshfed.kube.client import KubeClient, Obj
from meshfed.kube.discover import (
    AddressFound,
    completed_spec,
    discover_addresses,
    discover_ingress_addresses,
    discover_mesh,
)
from meshfed.kube.errors import ApplyRefused, KubeError
from meshfed.kube.state import StoredState, read_state
from meshfed.kube.targets import ClusterTarget, TargetError, ref
from meshfed.kube.workspace import KubeWorkspace, kube_workspace
from meshfed.pki.errors import PKIError
from meshfed.plan.build import mesh_clusters
from meshfed.plan.model import FederationPlan
from meshfed.plan.trust import root_pems
from meshfed.spec.check import check_federation
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.spec.model import Federation
from meshfed.workspace import plan_of

PENDING_ADDRESS = "pending.invalid"
"""Stands in for an ingress address its load balancer has not given yet. Only importers use an
exporter's address, and importers of such a mesh are held, so it never reaches a cluster."""
Key = tuple[str, str]
"""(mesh, cluster)."""


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
    label = f"federation/{name}"
    text = yaml.safe_dump(spec_document(body), sort_keys=False)
    try:
        return parse_spec(text, label, discovery_pending=True)
    except SpecError as exc:
        # Line numbers would point into our own YAML dump: name the field only.
        lines = [re.sub(rf"^{re.escape(label)}:\d+: ", f"{label}: ", line) for line in exc.lines]
        raise SpecError(label, lines) from None


def digest(objects: list[Obj]) -> str:
    canon = sorted(json.dumps(o, sort_keys=True) for o in objects)
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()


@dataclass
class Result:
    outcome: Outcome
    desired: dict[Key, dict[tuple[str, str, str, str], Obj]] = field(default_factory=dict)
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


@dataclass
class Reconciler:
    """Reconciles Federations; keeps what it applied last, to tell drift from change."""

    management: KubeClient
    namespace: str
    work_dir: Path
    connector: Connector
    log: Callable[[str], None] = lambda _line: None
    last_digest: dict[tuple[str, str, str], str] = field(default_factory=dict)
    applied: dict[tuple[str, str, str], dict[tuple[str, str, str, str], tuple[str, Obj]]] = field(
        default_factory=dict
    )
    """Per (federation, mesh, cluster): each object as this controller last put it there
    (digest). Between full checks, such an object is settled: the watches report any change
    to it, and drift repair puts it back."""

    # -- steps ------------------------------------------------------------------------------

    def _reach(self, fed: Federation, reports: dict[str, MeshReport]) -> dict[str, str]:
        blocked: dict[str, str] = {}
        for mesh in fed.spec.meshes:
            for cluster, report in zip(
                mesh_clusters(mesh), reports[mesh.name].clusters, strict=True
            ):
                try:
                    self.connector(cluster).version()
                except KubeError as exc:
                    self.connector.forget(cluster.context)
                    report.reachable = False
                    report.unreachable_reason = exc.message
                    blocked.setdefault(mesh.name, f"cluster {cluster.name} is unreachable")
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
        self, fed: Federation, blocked: dict[str, str], old: Federation | None
    ) -> tuple[Federation, list[str], list[AddressFound]]:
        """The spec with what the clusters hold filled in; and the meshes whose ingress load
        balancer has no address yet."""
        reachable = [m.name for m in fed.spec.meshes if m.name not in blocked]
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
                workloads[mesh.name] = discover_mesh(mesh, self.connector).workloads
        addresses = discover_addresses(fed, self.connector, reachable)
        ingress, pending = discover_ingress_addresses(fed, self.connector, reachable)
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
        complete = completed_spec(fed, workloads, [*addresses, *ingress], placeholder)
        return complete, pending, [*addresses, *ingress]

    def _settled(self, name: str, full: bool) -> Callable[[ClusterTarget, Obj], bool] | None:
        if full:
            return None

        def settled(target: ClusterTarget, obj: Obj) -> bool:
            known = self.applied.get((name, target.mesh.name, target.name), {})
            found = known.get(ref(obj))
            return found is not None and found[0] == digest([obj])

        return settled

    def _present(self, name: str, full: bool) -> Callable[[ClusterTarget], list[Obj] | None] | None:
        """Between full checks, what the controller put on a cluster is what is there (an
        extra object made by someone else is drift, which the watches report)."""
        if full:
            return None

        def present(target: ClusterTarget) -> list[Obj] | None:
            known = self.applied.get((name, target.mesh.name, target.name))
            return None if known is None else [stub for _, stub in known.values()]

        return present

    def _remember(self, name: str, runs: list[Any]) -> None:
        for run in runs:
            key = (name, run.target.mesh.name, run.target.name)
            known = self.applied.setdefault(key, {})
            for obj in run.target.desired():
                meta = obj.get("metadata") or {}
                stub = {
                    "apiVersion": obj["apiVersion"],
                    "kind": obj["kind"],
                    "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if k in meta},
                }
                known[ref(obj)] = (digest([obj]), stub)
            for obj in run.prune:
                known.pop(ref(obj), None)

    def _rollout(
        self,
        kws: KubeWorkspace,
        wave: Wave,
        held: dict[str, Hold],
        retire: bool,
        settled: Callable[[ClusterTarget, Obj], bool] | None = None,
        present: Callable[[ClusterTarget], list[Obj] | None] | None = None,
    ) -> tuple[list[ClusterTarget], Any]:
        def kept(target: ClusterTarget, obj: Obj) -> bool:
            hold = held.get(target.mesh.name)
            return hold is not None and hold.keeps(obj)

        targets = [
            t for t in kws.targets() if not (t.mesh.name in held and held[t.mesh.name].whole)
        ]
        for target in targets:
            target.objects = [o for o in target.objects if wave.applies(o) and not kept(target, o)]

        def prunable(target: ClusterTarget, obj: Obj) -> bool:
            return wave.prunes(obj) and not kept(target, obj)

        rollout = kws.rollout(
            targets,
            prune=bool(wave.prune),
            store_state=wave.store_state,
            retire=retire,
            prunable=prunable,
            settled=settled,
            present=present,
        )
        return targets, rollout.run()

    # -- the reconcile ----------------------------------------------------------------------

    def reconcile(self, body: Obj, now: datetime | None = None, full: bool = True) -> Result:
        """``full``: dry-run and apply every object; otherwise those this controller put in
        place and has watched since are taken as they are (see ``applied``)."""
        now = now or datetime.now(UTC)
        name = str(body["metadata"]["name"])
        outcome = Outcome(int(body["metadata"].get("generation") or 0))
        result = Result(outcome)
        try:
            fed = parse_federation(body)
        except SpecError as exc:
            outcome.spec_problems = exc.lines
            return result
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
        return result

    def forget(self, name: str) -> None:
        for key in [k for k in self.applied if k[0] == name]:
            del self.applied[key]

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
        blocked = self._reach(fed, reports)
        stored = self._stored(fed, blocked)
        old_fed = _stored_spec(stored)
        complete, pending, addresses = self._complete(fed, blocked, old_fed)
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
        state = SecretState(self.management, self.namespace, name, self.work_dir)
        with state.session() as state_dir:
            origin = Path(f"federation/{name}")
            kws = kube_workspace(complete, origin, state_dir, self.connector)
            old_plan = stored.plan() if stored is not None else None
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
            for wave in waves(changes):
                earlier += runs
                wave_kws = kws
                if wave.spec == "union" and union_fed is not complete:
                    wave_kws = kube_workspace(union_fed, origin, state_dir, self.connector)
                retire = wave.store_state and not held
                settled = self._settled(name, full)
                present = self._present(name, full)
                targets, runs = self._rollout(wave_kws, wave, held, retire, settled, present)
                self._remember(name, runs)
                self.log(f"{name}: wave {wave.name}: {len(targets)} cluster(s)")
            self._account(name, kws, runs, reports, result, earlier)
            result.plan = kws.ws.plan
            result.federation = complete
            self._certificates(kws, reports, result, now)
        unavailable = {m: r.frozen for m, r in reports.items() if r.frozen}
        outcome.imports = import_status(kws.ws.plan, unavailable)

    def _account(
        self,
        name: str,
        kws: KubeWorkspace,
        runs: list[Any],
        reports: dict[str, MeshReport],
        result: Result,
        earlier: list[Any] | None = None,
    ) -> None:
        """Per cluster: what the waves did (the final wave's objects are what is kept), drift
        told apart from change."""
        for run in earlier or []:  # opening and routing waves: changes, never drift
            for action, obj_name in run.actions:
                if action != "unchanged":
                    result.applied.append((run.label, action, obj_name))
        for run in runs:
            target = run.target
            key = (target.mesh.name, target.name)
            desired = target.desired()
            result.desired[key] = {ref(o): o for o in desired}
            mine = digest([o for o in desired if o.get("kind") != "ConfigMap"])
            before = self.last_digest.get((name, *key))
            self.last_digest[(name, *key)] = mine
            changed = [(a, n) for a, n in run.actions if a != "unchanged"]
            report = _report(reports, target.mesh.name, target.name)
            if report is not None:
                report.applied = True
                report.apply_reason = "Applied"
                report.apply_message = f"{target.name}: {run.summary()}"
            for action, obj_name in changed:
                if obj_name.startswith("ConfigMap meshfed-system/meshfed-"):
                    continue  # the stored state follows every change
                entry = (run.label, action, obj_name)
                if before == mine:
                    result.restored.append(entry)
                    if report is not None:
                        report.restored.append(f"{obj_name} {action}")
                else:
                    result.applied.append(entry)

    def _certificates(
        self, kws: KubeWorkspace, reports: dict[str, MeshReport], result: Result, now: datetime
    ) -> None:
        """Each mesh's intermediate and ingress certificate, with when they are renewed."""
        from meshfed.pki.leaves import kept_leaf
        from meshfed.plan.names import INGRESS_GATEWAY

        soonest: datetime | None = None
        for mesh, ca in kws.ws.pki.meshes.items():
            report = reports.get(mesh)
            if report is None:
                continue
            entries = []
            leaf = kept_leaf(kws.ws.state_dir, mesh, INGRESS_GATEWAY)
            for label, cert in (("intermediate", ca.ca_cert), ("ingress", leaf)):
                if cert is None:
                    continue
                start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
                renew = start + (end - start) * 2 / 3
                entries.append({"name": label, "notAfter": _stamp(end), "renewAt": _stamp(renew)})
                if label == "ingress":
                    soonest = renew if soonest is None else min(soonest, renew)
            report.certificates = entries
        result.next_renewal = soonest


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _report(reports: dict[str, MeshReport], mesh: str, cluster: str) -> ClusterReport | None:
    found = reports.get(mesh)
    if found is None:
        return None
    return next((c for c in found.clusters if c.name == cluster), None)


def _stored_spec(stored: StoredState | None) -> Federation | None:
    if stored is None:
        return None
    try:
        return parse_spec(stored.spec_text, f"stored on {stored.cluster}")
    except SpecError:
        return None


def expiring(result: Result, now: datetime, within: timedelta) -> list[str]:
    """Intermediates that expire within ``within`` (reported as warnings: an intermediate is
    replaced by a rotation, which a person starts)."""
    out = []
    for report in result.outcome.meshes:
        for cert in report.certificates:
            if cert["name"] != "intermediate":
                continue
            end = datetime.strptime(cert["notAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if end - now < within:
                out.append(f"mesh {report.name}: intermediate CA expires {cert['notAfter']}")
    return out
