"""Put the rendered federation on its clusters: all of it, or (on any refusal) nothing.

1. Connect to every cluster. 2. Server-side dry-run (``dryRun=All``) of every object on every
cluster, and of every deletion pruning would make. Any refusal (unreachable, missing Istio CRDs,
RBAC, validation, a conflict over fields meshfed does not own) stops here: nothing was written
anywhere, and the error names the cluster, the object and the server's reason. 3. Write, cluster
by cluster (remotes before their primary, whose remote secrets need the remotes' tokens):
server-side apply as field manager ``meshfed``, then pruning, then the stored state.

Clusters recorded in the stored state that the spec no longer names (a removed mesh, a removed
remote) are retired in the same run, last: everything of the federation there is deleted, and
on a retired remote the reader tokens its remote secret carried are revoked. A partial apply
(``--mesh``) retires nothing and carries the record forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import groupby

from meshfed.kube.client import Obj, describe
from meshfed.kube.errors import ApplyRefused, KubeError, Refusal
from meshfed.kube.namespaces import (
    NamespacePlan,
)
from meshfed.kube.parallel import in_parallel
from meshfed.kube.remote_secret import (
    Token,
    current_token,
    issue_token,
    kubeconfig_text,
)
from meshfed.kube.runs import (
    Action,
    Checked,
    ClusterRun,
    Connect,
    Progress,
    Quiet,
    connect_run,
    dry_run_actions,
    known_state,
    kube_connector,
    object_namespace,
    plan_prune,
    plan_run_namespaces,
    probe,
    refuse_foreign,
    write_phases,
)
from meshfed.kube.state import (
    AppliedCluster,
    StoredState,
    canonical_json,
    is_state,
    plan_clusters,
    read_stored,
    spec_yaml,
    state_name,
    state_object,
    stored_of,
)
from meshfed.kube.targets import (
    ClusterTarget,
    order_rank,
    owned_by,
    ref,
    ref_text,
    retired_targets,
)
from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.plan.names import GATEWAY_NAMESPACE
from meshfed.render.istio import multicluster
from meshfed.spec.model import Federation

__all__ = [
    "Action",
    "ClusterRun",
    "Connect",
    "Progress",
    "Rollout",
    "dry_run_actions",
    "kube_connector",
]

PENDING_TOKEN = "<issued by meshfed apply>"


def _no_mark(_phase: str) -> None:
    pass


class Rollout:
    """One apply (or dry-run, or diff) of a set of cluster targets."""

    def __init__(
        self,
        fed: Federation,
        plan: FederationPlan,
        roots: Mapping[str, str],
        targets: list[ClusterTarget],
        connect: Connect,
        *,
        prune: bool = True,
        store_state: bool = True,
        retire: bool = False,
        forget: Iterable[str] = (),
        progress: Progress | None = None,
        prunable: Callable[[ClusterTarget, Obj], bool] | None = None,
        settled: Callable[[ClusterTarget, Obj], bool] | None = None,
        present: Callable[[ClusterTarget], list[Obj] | None] | None = None,
        live: Callable[[ClusterTarget, Obj], Obj | None] | None = None,
        canonical: Callable[[Obj], str] = canonical_json,
        workers: int = 1,
        state_known: bool = False,
    ) -> None:
        """``retire``: also empty the recorded clusters the spec no longer names (a full
        apply). ``forget``: kubeconfig contexts of recorded clusters to drop from the record
        without touching them (a cluster that is gone for good).

        For the controller: ``prunable``: prune only the stale objects it accepts on a
        cluster (make-before-break waves prune one side of the federation at a time).
        ``settled``: objects known to be on the cluster exactly as rendered (the controller
        applied them and has watched them since): kept (never pruned) but neither dry-run nor
        written again. ``present``: the federation's objects on a cluster as the caller knows
        them (None: list them), for pruning. ``live``: an object as the caller knows it is on
        the cluster (None: read it), for the dry-run (the stored state too). ``canonical``:
        ``canonical_json`` or a cache of it (for the stored state's digest of the objects).
        ``workers``: requests to one cluster at a time (dry-runs; writes of objects of one kind
        rank, which do not depend on each other), and with more than one, the clusters at once
        where nothing orders them (``progress`` is then called from several threads).
        ``state_known``: the stored state, when its live version is known, is not dry-run
        (``runs.known_state``).

        The stored state is written last, after every cluster's objects (it records them)."""
        self.fed = fed
        self.plan = plan
        self.roots = roots
        self.runs = [ClusterRun(t) for t in targets]
        self.connect = connect
        self.prune = prune
        self.store_state = store_state
        self.retire = retire
        self.forget = frozenset(forget)
        self.progress: Progress = progress or Quiet()
        self.prunable = prunable
        self.settled = settled
        self.present = present
        self.live = live
        self.canonical = canonical
        self.workers = workers
        self.state_known = state_known
        self.slim = False
        self.mark: Callable[[str], None] = _no_mark
        self.answered: frozenset[str] = frozenset()
        """Contexts of clusters the caller has just heard from (not asked for their version
        again when connecting)."""
        """Told when each phase ends (the controller books where its time goes)."""
        """Keep of each dry-run only what writing needs (``run`` without ``dry_run``)."""
        self.spec_text: str | None = None
        """The stored state's spec as written (None: no state written)."""
        self.tokens: dict[tuple[str, str], Token | None] = {}
        self.state_objects: dict[tuple[str, str], Obj | None] = {}
        """The state ConfigMap of each primary (mesh, cluster) as the dry-run read it."""
        self.states: list[StoredState] = []
        """The state each reachable primary holds, as read by the dry-run."""
        self.carried: list[AppliedCluster] = []
        """Recorded clusters the spec dropped and this run does not retire."""

    # -- phase 1: connect and dry-run -----------------------------------------------------

    def _run_of(self, mesh: str, cluster: str) -> ClusterRun | None:
        for run in self.runs:
            if run.target.mesh.name == mesh and run.target.name == cluster:
                return run
        return None

    def _clusters_at_once(self, count: int) -> int:
        """How many clusters to work on at once (one at a time unless ``workers`` allows)."""
        return count if self.workers > 1 else 1

    def _connect(self, runs: list[ClusterRun]) -> None:
        def connect(run: ClusterRun) -> None:
            connect_run(run, self.connect, self.answered)

        in_parallel(connect, runs, self._clusters_at_once(len(runs)))

    def _read_states(self) -> None:
        def read(run: ClusterRun) -> tuple[StoredState | None, Obj | None] | None:
            assert run.client is not None
            name = state_name(self.fed.name)
            meta = {"name": name, "namespace": GATEWAY_NAMESPACE}
            stub: Obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
            known = None if self.live is None else self.live(run.target, stub)
            try:
                if known is not None:
                    return stored_of(known, run.client.name, run.client.label), known
                return read_stored(run.client, self.fed.name)
            except KubeError as exc:
                what = f"ConfigMap {GATEWAY_NAMESPACE}/{state_name(self.fed.name)}"
                run.refuse(what, exc.message)
                return None

        primaries = [r for r in self.runs if r.client is not None and r.target.primary]
        for run, got in zip(
            primaries,
            in_parallel(read, primaries, self._clusters_at_once(len(primaries))),
            strict=True,
        ):
            if got is None:
                continue
            found, read_obj = got
            self.state_objects[(run.target.mesh.name, run.target.name)] = read_obj
            if found is not None:
                self.states.append(found)

    def _retire(self) -> None:
        """Add a run for each recorded cluster the spec dropped (or carry them forward)."""
        recorded: set[AppliedCluster] = set()
        for state in self.states:
            try:
                recorded.update(state.applied_clusters())
            except KubeError as exc:
                raise KubeError(f"reading the last applied state: {exc.message}") from None
        recorded = {c for c in recorded if c.key not in self.forget}
        dropped = retired_targets(recorded, self.plan)
        if not (self.retire and self.prune):
            keys = {t.cluster.context or "" for t in dropped}
            self.carried = sorted(c for c in recorded if c.key in keys)
            return
        runs = [ClusterRun(t) for t in dropped]
        self._connect(runs)
        self.runs += runs

    def _extras(self, run: ClusterRun, pending_ok: bool) -> None:
        """Remote secrets (primary-remote) and the stored state, made from the cluster."""
        target, client = run.target, run.client
        assert client is not None
        extra: list[Obj] = []
        if target.retired:
            target.extra = extra
            return
        assert isinstance(target.mesh, MeshPlan)
        for remote in target.remotes:
            key = (target.mesh.name, remote.name)
            remote_run = self._run_of(*key)
            remote_client = remote_run.client if remote_run else None
            if remote_client is None:
                continue  # refused already (connection)
            if key not in self.tokens:
                try:
                    self.tokens[key] = current_token(remote_client, target.mesh.istio_namespace)
                except KubeError as exc:
                    run.refuse(f"remote secret for {remote.name}", exc.message)
                    continue
            token = self.tokens[key]
            if token is None and not pending_ok:
                raise KubeError(f"no reader token on remote cluster {remote.name}")
            kubeconfig = kubeconfig_text(
                remote.name,
                remote_client.server,
                token.ca_pem if token else b"",
                token.token if token else PENDING_TOKEN,
            )
            extra.append(multicluster.remote_secret(self.plan, target.mesh, remote, kubeconfig))
        if self.store_state and target.primary:
            try:
                at = (target.mesh.name, target.name)
                previous = (
                    self.state_objects[at]
                    if at in self.state_objects
                    else client.get("v1", "ConfigMap", state_name(self.fed.name), GATEWAY_NAMESPACE)
                )
            except KubeError as exc:
                run.refuse(
                    f"ConfigMap {GATEWAY_NAMESPACE}/{state_name(self.fed.name)}", exc.message
                )
                previous = None
            applied = [*target.objects, *extra]
            clusters = [*plan_clusters(self.plan), *self.carried]
            if self.spec_text is None:
                self.spec_text = spec_yaml(self.fed)  # once, not once per primary
            extra.append(
                state_object(
                    self.fed,
                    self.roots,
                    applied,
                    previous,
                    clusters,
                    spec_text=self.spec_text,
                    canonical=self.canonical,
                )
            )
        target.extra = extra

    def _namespaces(self, run: ClusterRun, desired: list[Obj]) -> NamespacePlan:
        return plan_run_namespaces(
            run, desired, self.fed.name, lambda o: self._known(run, o) is not None, self.workers
        )

    def _check(self, run: ClusterRun) -> None:
        client = run.client
        assert client is not None
        run.target.bootstrap = []
        if self.settled is not None:
            settled = self.settled
            run.settled = {ref(o) for o in run.target.desired() if settled(run.target, o)}
        namespaces = self._namespaces(run, run.target.desired())
        desired = run.target.desired()  # with the namespaces to create, first
        self.progress.start(run.label, "dry-run", len(desired))
        foreign: dict[str, list[str]] = {}
        pending = []
        for obj in desired:
            if ref(obj) in run.settled or namespaces.skipped(obj):
                continue  # (an object skipped is refused with its namespace)
            trusted = is_state(obj) and self.state_known and known_state(obj, self._known(run, obj))
            if trusted:
                run.checked.append(trusted)
            else:
                pending.append(obj)
        fed = self.fed.name

        def check(obj: Obj) -> Checked | KubeError | str:
            found = probe(client, obj, namespaces, fed, self._known(run, obj))
            # Slimmed as each answer comes (not after the cluster's last): a cluster's
            # hundreds of dry-run answers are never all held at once.
            return found.slim() if self.slim and isinstance(found, Checked) else found

        probed = in_parallel(check, pending, self.workers)
        for obj, found in zip(pending, probed, strict=True):
            what = ref_text(obj)
            if isinstance(found, str):
                foreign.setdefault(found, []).append(what)
            elif isinstance(found, Checked):
                run.checked.append(found)
            else:
                reason = found.message.removeprefix(f"{describe(obj)}: ")
                if found.status == 409 and found.reason != "AlreadyExists":
                    reason += (
                        " (another field manager owns these fields of an object meshfed did not "
                        "create; meshfed takes over only objects carrying its labels)"
                    )
                run.refuse(what, reason + (f" ({found.causes})" if found.causes else ""))
        for _ in desired:
            self.progress.step(run.label)
        refuse_foreign(run, foreign)
        if self.prune:
            self._plan_prune(run, desired)

    def _plan_prune(self, run: ClusterRun, desired: list[Obj]) -> None:
        known = None if self.present is None else self.present(run.target)
        plan_prune(run, desired, self.fed.name, known, self.prunable)

    def _known(self, run: ClusterRun, obj: Obj) -> Obj | None:
        """The object as it is on the cluster when known without reading it: the stored
        state as this run just read it, or what the caller knows."""
        if is_state(obj) and run.target.primary:
            read = self.state_objects.get((run.target.mesh.name, run.target.name))
            if read is not None and read["metadata"].get("name") == obj["metadata"]["name"]:
                return read
        return None if self.live is None else self.live(run.target, obj)

    def preflight(self) -> list[Refusal]:
        """Phase 1 on every cluster; writes nothing. Returns every refusal."""
        self._connect(self.runs)
        self.mark("connect")
        self._read_states()
        self._retire()
        self.mark("read state")
        for run in self.runs:
            if run.client is not None:
                self._extras(run, pending_ok=True)
        self.mark("state object")
        checking = [run for run in self.runs if run.client is not None]
        in_parallel(self._check, checking, self._clusters_at_once(len(checking)))
        self.mark("dry-run")
        for run in checking:
            if not run.refusals:
                self.progress.done(
                    run.label,
                    f"dry-run ok ({len(run.checked)} objects, {len(run.prune)} to prune)",
                )
            else:
                self.progress.done(run.label, f"refused: {len(run.refusals)}")
        return [r for run in self.runs for r in run.refusals]

    # -- phase 2: write -------------------------------------------------------------------

    def _write(self, run: ClusterRun) -> list[Obj]:
        """Writes the run's objects and pruning; returns the stored state, still to write."""
        client = run.client
        assert client is not None
        target = run.target
        if target.remotes:
            self._extras(run, pending_ok=False)  # with the tokens the remotes now hold
        desired = target.desired()
        self.progress.start(run.label, "apply", len(desired) + len(run.prune))
        checked = {ref(c.obj): c for c in run.checked}
        states = [o for o in target.extra if is_state(o)]
        later = {id(o) for o in states}
        extra = {id(o) for o in target.extra}
        rest = []
        for obj in desired:
            if id(obj) in later:
                continue
            if ref(obj) in run.settled:
                run.actions.append(("unchanged", ref_text(obj)))
                self.progress.step(run.label)
            else:
                rest.append(obj)
        # In apply order; objects of one rank (e.g. all Istio configuration) together.
        for _, group in groupby(rest, key=lambda o: (id(o) in extra, order_rank(o))):
            in_parallel(lambda o: self._put(run, o, checked), list(group), self.workers)
        for obj in run.prune:
            if client.delete(obj):
                run.actions.append(("deleted", ref_text(obj)))
            self.progress.step(run.label)
        if target.cluster.role == "remote" and not target.retired:
            key = (target.mesh.name, target.name)
            token = self.tokens.get(key)
            if token is None:
                token = issue_token(client, target.mesh.istio_namespace)
                run.actions.append(
                    (
                        "created",
                        f"Secret {target.mesh.istio_namespace}/{token.secret} (reader token)",
                    )
                )
            self.tokens[key] = token
        run.found = checked
        return states

    def _put(
        self, run: ClusterRun, obj: Obj, checked: dict[tuple[str, str, str, str], Checked]
    ) -> None:
        client = run.client
        assert client is not None
        if ref(obj) in run.settled:
            run.actions.append(("unchanged", ref_text(obj)))
            self.progress.step(run.label)
            return
        ns = object_namespace(obj)
        name = obj["metadata"]["name"]
        try:
            found = checked.get(ref(obj))
            if found is not None:  # as the dry-run just found it: no second read
                before, force = found.live, found.force
            else:
                before = client.get(obj["apiVersion"], obj["kind"], name, ns)
                force = before is None or owned_by(before, None)
            after = client.apply(obj, force=force)
        except KubeError as exc:
            done = ", ".join(f"{a} {r}" for a, r in run.actions) or "nothing"
            raise KubeError(
                f"cluster {run.label}: {ref_text(obj)}: {exc.message} (after the dry-run "
                f"passed; written on this cluster so far: {done})"
            ) from None
        if before is None:
            action: Action = "created"
        elif before["metadata"].get("resourceVersion") == after["metadata"].get("resourceVersion"):
            action = "unchanged"
        else:
            action = "configured"
        run.actions.append((action, ref_text(obj)))
        self.progress.step(run.label)

    def run(self, dry_run: bool = False) -> list[ClusterRun]:
        self.slim = not dry_run
        refusals = self.preflight()
        if refusals:
            raise ApplyRefused(refusals, self.notes())
        if dry_run:
            for run in self.runs:
                run.actions = [(c.action, ref_text(c.obj)) for c in run.checked]
                run.actions += [("unchanged", f"{k} {n}/{m}") for _, k, n, m in run.settled]
                run.actions += [("deleted", ref_text(o)) for o in run.prune]
            return self.runs
        states: dict[int, list[Obj]] = {}
        for phase in write_phases(self.runs):
            written = in_parallel(self._write, phase, self._clusters_at_once(len(phase)))
            states.update((id(run), found) for run, found in zip(phase, written, strict=True))
        self.mark("write")

        def record(run: ClusterRun) -> None:
            for obj in states[id(run)]:
                self._put(run, obj, run.found)

        in_parallel(record, self.runs, self._clusters_at_once(len(self.runs)))
        self.mark("write state")
        for run in self.runs:
            run.written = True
            self.progress.done(run.label, run.summary())
        return self.runs

    def notes(self) -> list[str]:
        """Every cluster's notes (``ClusterRun.notes``), each naming its cluster."""
        return [f"cluster {run.label}: {note}" for run in self.runs for note in run.notes()]
