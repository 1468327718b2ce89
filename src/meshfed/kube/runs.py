"""One cluster's part of an apply (``ClusterRun``: what the dry-run found, then what was
done), how an apply reports progress, and how clusters are connected to.

``meshfed.kube.apply`` runs the phases over these.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from meshfed.kube.client import Cluster, KubeClient, Obj
from meshfed.kube.errors import KubeError, Refusal
from meshfed.kube.namespaces import (
    STAND_IN_NAMESPACE,
    NamespacePlan,
    created_note,
    for_mesh,
    plan_namespaces,
    stand_in_note,
)
from meshfed.kube.parallel import in_parallel
from meshfed.kube.remote_secret import token_secrets
from meshfed.kube.targets import (
    FEDERATION_LABEL,
    PRUNE_KINDS,
    ClusterTarget,
    owned_by,
    prune_set,
    ref,
    ref_text,
    selector,
)
from meshfed.plan.model import ClusterPlan, MeshPlan

Action = Literal["created", "configured", "unchanged", "deleted"]


class Progress(Protocol):
    def start(self, cluster: str, what: str, total: int) -> None: ...
    def step(self, cluster: str) -> None: ...
    def done(self, cluster: str, text: str) -> None: ...


class Quiet:
    def start(self, cluster: str, what: str, total: int) -> None:
        pass

    def step(self, cluster: str) -> None:
        pass

    def done(self, cluster: str, text: str) -> None:
        pass


Connect = Callable[[ClusterPlan], Cluster]


def kube_connector(kubeconfig: str | None = None) -> Connect:
    """Connections by kubeconfig context, as kubectl resolves them."""

    def connect(cluster: ClusterPlan) -> Cluster:
        return KubeClient.for_context(cluster.context, kubeconfig, name=cluster.name)

    return connect


def strip_server_fields(obj: Obj | None) -> Obj:
    """An object without what the server changes on every write."""
    if obj is None:
        return {}
    meta = {
        k: v
        for k, v in (obj.get("metadata") or {}).items()
        if k not in ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid")
    }
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")} | {"metadata": meta}


@dataclass
class Checked:
    """One object after the dry-run: live state, what applying would make, how to apply."""

    obj: Obj
    live: Obj | None
    result: Obj
    force: bool

    def slim(self) -> Checked:
        """What writing needs of it (the live version, and how to write)."""
        version = ((self.live or {}).get("metadata") or {}).get("resourceVersion")
        live = None if self.live is None else {"metadata": {"resourceVersion": version}}
        return Checked(self.obj, live, {}, self.force)

    @property
    def action(self) -> Action:
        if self.live is None:
            return "created"
        return (
            "unchanged"
            if strip_server_fields(self.live) == strip_server_fields(self.result)
            else "configured"
        )


@dataclass
class ClusterRun:
    """A cluster's part of one apply: the dry-run findings, then what was done."""

    target: ClusterTarget
    client: Cluster | None = None
    checked: list[Checked] = field(default_factory=list)
    prune: list[Obj] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    actions: list[tuple[Action, str]] = field(default_factory=list)
    settled: set[tuple[str, str, str, str]] = field(default_factory=set)
    """Objects the caller knows to be in place: neither dry-run nor written."""
    found: dict[tuple[str, str, str, str], Checked] = field(default_factory=dict)
    """``checked`` by object, while writing."""
    created: list[str] = field(default_factory=list)
    """Namespaces this apply creates because the cluster lacks them (the Istio namespace)."""
    stand_in: list[str] = field(default_factory=list)
    """Namespaces not there yet whose objects the dry-run validated in the stand-in."""
    written: bool = False

    def notes(self) -> list[str]:
        """What the user should know besides the object counts: namespaces created (or to be
        created), and where the dry-run had to use a stand-in."""
        out = [created_note(ns, self.written) for ns in self.created]
        if self.stand_in and not self.written:
            out.append(stand_in_note(self.stand_in))
        return out

    @property
    def label(self) -> str:
        mesh, cluster = self.target.mesh.name, self.target.cluster
        name = mesh if cluster.name == mesh else f"{mesh}/{cluster.name}"
        where = [f"context {cluster.context}"] if cluster.context else []
        if self.target.retired:
            where.append("no longer in the spec")
        return f"{name} ({', '.join(where)})" if where else name

    def refuse(self, what: str, reason: str) -> None:
        self.refusals.append(Refusal(self.label, what, reason))

    def counts(self) -> dict[str, int]:
        out = {"created": 0, "configured": 0, "unchanged": 0, "deleted": 0}
        for action, _ in self.actions:
            out[action] += 1
        return out

    def summary(self) -> str:
        counts = self.counts()
        return ", ".join(f"{n} {a}" for a, n in counts.items())


def connect_run(run: ClusterRun, connect: Connect, answered: Collection[str] = ()) -> None:
    """Connect a run to its cluster (``run.client``), asking for its version unless its
    context is one of ``answered`` (heard from just now); or refuse the run, saying why."""
    try:
        client = connect(run.target.cluster)
        if (run.target.cluster.context or "") not in answered:
            client.version()
    except KubeError as exc:
        reason = exc.message
        context = run.target.cluster.context or "''"
        if run.target.retired:
            reason += (
                f"; meshfed applied mesh {run.target.mesh.name} here before, and the spec "
                "no longer names this cluster, so apply removes what the federation put "
                "there: make the cluster reachable, or, if it is gone for good, apply "
                f"with --forget {context}"
            )
        run.refuse("(connection)", reason)
        return
    run.client = client


def write_phases(runs: list[ClusterRun]) -> list[list[ClusterRun]]:
    """The clusters in the order they are written, as groups that may be written at once:
    the spec's clusters but primaries serving remotes (a remote issues the reader token its
    primary's remote secret carries), then those primaries, then the clusters the spec no
    longer names (retired last: what routed to them is gone first). Empty groups are left out."""
    plain = [r for r in runs if not r.target.retired and not r.target.remotes]
    serving = [r for r in runs if not r.target.retired and r.target.remotes]
    retired = [r for r in runs if r.target.retired]
    return [group for group in (plain, serving, retired) if group]


def object_namespace(obj: Obj) -> str | None:
    ns = (obj.get("metadata") or {}).get("namespace")
    return str(ns) if ns else None


def foreign_federation(live: Obj | None, federation: str) -> str | None:
    """The other meshfed federation that applied ``live``, if one did. Such objects are not
    taken over: a cluster's mesh has one CA, one pair of federation gateways, one set of
    boundary policies."""
    labels = ((live or {}).get("metadata") or {}).get("labels") or {}
    other = labels.get(FEDERATION_LABEL)
    return str(other) if owned_by(live, None) and other and other != federation else None


def dry_run_actions(runs: Iterable[ClusterRun]) -> dict[str, list[tuple[Action, str]]]:
    return {run.label: run.actions for run in runs}


def plan_run_namespaces(
    run: ClusterRun,
    desired: list[Obj],
    federation: str,
    known: Callable[[Obj], bool],
    workers: int,
) -> NamespacePlan:
    """Which namespaces a cluster's objects need that it lacks: the Istio namespace is
    created, application namespaces refuse the apply (``kube/namespaces.py``). Recorded on the
    run. ``known``: objects known to be on the cluster."""
    client = run.client
    assert client is not None
    # Where every object is settled or known to be there, so is the namespace (one left out
    # of ``exists`` counts as existing).
    asked = sorted(
        {
            n
            for o in desired
            if (n := object_namespace(o)) is not None and ref(o) not in run.settled and not known(o)
        }
    )

    def there(ns: str) -> bool:
        try:
            return client.namespace_exists(ns)
        except KubeError:
            return True  # not readable: the objects' own dry-run tells what is wrong

    exists = dict(zip(asked, in_parallel(there, asked, workers), strict=True))
    mesh = run.target.mesh
    if isinstance(mesh, MeshPlan):
        plan = for_mesh(desired, exists, mesh, federation)
    else:
        plan = plan_namespaces(desired, exists, mesh.istio_namespace, federation)
    for missing in plan.missing:
        names = ", ".join(missing.objects)
        run.refuse(f"Namespace {missing.name} (for {names})", missing.reason())
    run.target.bootstrap = list(plan.create)
    run.created = [o["metadata"]["name"] for o in plan.create]
    run.stand_in = sorted(plan.pending)
    return plan


def plan_prune(
    run: ClusterRun,
    desired: list[Obj],
    federation: str,
    known: list[Obj] | None,
    prunable: Callable[[ClusterTarget, Obj], bool] | None,
) -> None:
    """What pruning deletes on a cluster (``run.prune``), each deletion dry-run. ``known``:
    the federation's objects there as the caller knows them (None: list them); ``prunable``:
    which stale objects may go (None: all)."""
    client = run.client
    assert client is not None
    live: list[Obj] = []
    if known is not None:
        live = known  # what the caller knows to be there: no listing
    else:
        for api_version, kind in PRUNE_KINDS:
            try:
                if client.find(api_version, kind) is None:
                    continue
                live += client.list(api_version, kind, labels=selector(federation))
            except KubeError as exc:
                run.refuse(f"(prune: list {kind})", exc.message)
    run.prune = prune_set(live, desired, federation)
    if prunable is not None:
        run.prune = [o for o in run.prune if prunable(run.target, o)]
    if run.target.retired and run.target.cluster.role == "remote":
        # The reader tokens the primary's remote secret carried: revoked with it.
        try:
            run.prune += token_secrets(client, run.target.mesh.istio_namespace)
        except KubeError as exc:
            run.refuse("(prune: list reader tokens)", exc.message)
    for obj in run.prune:
        try:
            client.delete(obj, dry_run=True)
        except KubeError as exc:
            run.refuse(f"prune {ref_text(obj)}", exc.message)


def refuse_foreign(run: ClusterRun, foreign: dict[str, list[str]]) -> None:
    """Refuse a cluster holding objects of other meshfed federations (``foreign``: the other
    federation -> those objects)."""
    for other, names in foreign.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        run.refuse(
            f"{len(names)} object(s) of meshfed federation {other!r} ({shown})",
            f"a mesh can be in one federation only: describe all of its peers in one spec "
            f"(or remove the cluster from {other!r} first)",
        )


STATE_CHECKED_BELOW = 768 * 1024
"""Bytes of a stored state's data under which a known state is written without a dry-run
(``known_state``): well within a ConfigMap's 1 MiB."""


def known_state(obj: Obj, live: Obj | None) -> Checked | None:
    """The stored state as checked without asking the API server, or None (dry-run it).

    For the controller between full checks: it wrote the previous state itself and ``live``
    is that state as just read, so the new one (the same object, new data) can be refused only
    for its size, which is checked here; it is written last, after every other object, and a
    refusal then makes the next reconcile a full check. A dry-run of ten 0.5 MB states was most
    of a Service change's dry-run at ten clusters."""
    if live is None or not owned_by(live, None):
        return None
    size = sum(len(str(v).encode()) for v in (obj.get("data") or {}).values())
    if size >= STATE_CHECKED_BELOW:
        return None
    return Checked(obj, live, {}, True).slim()


def probe(
    client: Cluster,
    obj: Obj,
    namespaces: NamespacePlan,
    federation: str,
    known: Obj | None = None,
) -> Checked | KubeError | str:
    """One object's dry-run: what it found, the refusal, or the other federation the object
    belongs to. ``known``: the object as it is on the cluster, when the caller knows (it was
    just read, or the controller wrote it and has watched it since): not read again."""
    try:
        ns = object_namespace(obj)
        stand_in = ns is not None and ns in namespaces.pending
        res = client.resource(obj["apiVersion"], obj["kind"])
        live = (
            None
            if stand_in
            else known
            if known is not None
            else client.get(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], ns)
        )
        other = foreign_federation(live, federation)
        if other is not None:
            return other
        force = live is None or owned_by(live, None)
        if stand_in:
            # The namespace is created by this apply: validate in a stand-in namespace, and
            # ask the authorizer about the real one.
            if not client.can("patch", res, ns, obj["metadata"]["name"]):
                raise KubeError(f"forbidden (RBAC): cannot patch {res.plural} in namespace {ns}")
            result = client.apply(obj, dry_run=True, force=True, namespace=STAND_IN_NAMESPACE)
            result = {**result, "metadata": {**result.get("metadata", {}), "namespace": ns}}
            for key in ("uid", "resourceVersion", "creationTimestamp"):
                result["metadata"].pop(key, None)
        else:
            result = client.apply(obj, dry_run=True, force=force)
        return Checked(obj, live, result, force)
    except KubeError as exc:
        return exc
