"""Which objects go to which cluster, in which order, and what is meshfed's to prune.

A mesh's primary cluster (the one cluster of ``kubernetes``, or the ``primary`` of ``clusters``)
holds everything ``render`` writes for the mesh except the Istio install settings (IstioOperator,
Helm values, Sail ``Istio``: those go to the installer): gateways, policies, routes, ``cacerts``
and the ingress credential, plus in primary-remote the east-west gateway and one remote secret
per remote. A remote cluster holds the mesh's ``cacerts`` (all clusters of a mesh share its
intermediate CA) and Istio's reader account.
A cluster meshfed applied to before and the spec no longer names is retired: it is given nothing,
so pruning removes all the federation put there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from meshfed.kube.client import Obj
from meshfed.kube.remote_secret import reader_objects
from meshfed.kube.state import AppliedCluster
from meshfed.plan.model import ClusterPlan, FederationPlan, MeshPlan
from meshfed.plan.names import MANAGED_BY
from meshfed.render.istio import RenderedMesh

FEDERATION_LABEL = "meshfed.dev/federation"
MANAGED_LABEL = "app.kubernetes.io/managed-by"

PRUNE_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("apps/v1", "Deployment"),
    ("networking.istio.io/v1", "Gateway"),
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "ServiceEntry"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("security.istio.io/v1", "PeerAuthentication"),
    ("telemetry.istio.io/v1", "Telemetry"),
)
"""Every namespaced kind meshfed renders: where pruning looks for what it applied before.
Namespaces are never pruned (deleting one deletes whatever else lives in it)."""

_ORDER = {
    "Namespace": 0,
    "ServiceAccount": 1,
    "ClusterRole": 2,
    "ClusterRoleBinding": 3,
    "Role": 4,
    "RoleBinding": 5,
    "Secret": 6,
    "ConfigMap": 7,
    "Service": 8,
    "Deployment": 9,
}
SKIPPED_KINDS = frozenset({"IstioOperator"})


def ref(obj: Obj) -> tuple[str, str, str, str]:
    """Identity of an object on a cluster: (group, kind, namespace, name). The group is
    interned: the controller keeps tens of thousands of refs (a new group string each was
    1.8 MB at ten clusters of a thousand exports)."""
    group = sys.intern(obj["apiVersion"].rpartition("/")[0])
    meta = obj.get("metadata") or {}
    return (group, obj["kind"], meta.get("namespace") or "", meta["name"])


def ref_text(obj: Obj) -> str:
    group, kind, ns, name = ref(obj)
    return f"{kind}{'.' + group if group else ''} {ns + '/' if ns else ''}{name}"


def order_rank(obj: Obj) -> int:
    """Where a kind comes in ``apply_order`` (objects of one rank do not depend on each
    other)."""
    return _ORDER.get(obj["kind"], 10)


def apply_order(objects: Iterable[Obj]) -> list[Obj]:
    """Namespaces and identities first, then secrets, services, workloads, Istio config."""
    return sorted(objects, key=lambda o: (order_rank(o), ref(o)))


def server_form(obj: Obj) -> Obj:
    """The object as meshfed sends it. A Secret's empty values are left out: the API server
    rewrites a Secret holding an empty value on every server-side apply (seen on Kubernetes
    1.24, under ``data`` and ``stringData`` alike), so it would never re-apply unchanged. The
    one meshfed renders is the ingress credential's ``ca.crt`` of a mesh nobody may call, which
    then has no Gateway server reading it."""
    data = obj.get("data") if obj.get("kind") == "Secret" else None
    if not isinstance(data, dict) or all(v != "" for v in data.values()):
        return obj
    return {**obj, "data": {k: v for k, v in data.items() if v != ""}}


def selector(federation: str) -> str:
    return f"{MANAGED_LABEL}={MANAGED_BY},{FEDERATION_LABEL}={federation}"


def owned_by(obj: Obj | None, federation: str | None) -> bool:
    """The object carries meshfed's labels (of ``federation``, when given)."""
    found = ((obj or {}).get("metadata") or {}).get("labels") or {}
    if found.get(MANAGED_LABEL) != MANAGED_BY:
        return False
    return federation is None or found.get(FEDERATION_LABEL) == federation


def prune_set(live: Iterable[Obj], desired: Iterable[Obj], federation: str) -> list[Obj]:
    """What meshfed applied to this cluster before (by its labels) and no longer renders,
    in deletion order (the reverse of apply order)."""
    wanted = {ref(o) for o in desired}
    stale = [
        o
        for o in live
        if owned_by(o, federation) and ref(o) not in wanted and o["kind"] != "Namespace"
    ]
    return list(reversed(apply_order(stale)))


@dataclass(frozen=True)
class RetiredMesh:
    """A mesh meshfed applied to a cluster before, where the spec now puts nothing."""

    name: str
    istio_namespace: str


@dataclass
class ClusterTarget:
    """One cluster and what meshfed puts there."""

    mesh: MeshPlan | RetiredMesh
    cluster: ClusterPlan
    objects: list[Obj]
    remotes: tuple[ClusterPlan, ...] = ()
    """On a primary: the remotes whose remote secret it holds."""
    extra: list[Obj] = field(default_factory=list)
    """Objects made at apply time (remote secrets, the stored state), applied after ``objects``."""
    bootstrap: list[Obj] = field(default_factory=list)
    """Namespaces the cluster lacks and this apply creates first (the Istio namespace on a bare
    cluster, see ``kube/namespaces.py``); decided by the dry-run."""
    _ordered: tuple[list[Obj], list[Obj], list[Obj]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def primary(self) -> bool:
        return self.cluster.role == "primary"

    @property
    def retired(self) -> bool:
        return isinstance(self.mesh, RetiredMesh)

    def desired(self) -> list[Obj]:
        """Bootstrap namespaces and objects in apply order, then the extras."""
        made = self._ordered
        size = len(self.objects) + len(self.bootstrap)
        if (
            made is None
            or made[0] is not self.objects
            or made[1] is not self.bootstrap
            or len(made[2]) != size
        ):
            # Kept while neither list changes (a rollout asks many times; at a thousand
            # exports a cluster holds about a thousand objects).
            made = (self.objects, self.bootstrap, apply_order([*self.bootstrap, *self.objects]))
            self._ordered = made
        return made[2] + self.extra


class TargetError(Exception):
    """The spec does not say where a mesh runs."""


def cluster_targets(
    plan: FederationPlan,
    rendered: dict[str, RenderedMesh],
    meshes: Iterable[str] | None = None,
) -> list[ClusterTarget]:
    """Every cluster of the chosen meshes (all by default), remotes before their primary."""
    chosen = set(meshes) if meshes is not None else {m.name for m in plan.meshes}
    unknown = chosen - {m.name for m in plan.meshes}
    if unknown:
        raise TargetError(f"no mesh named {', '.join(sorted(unknown))} in the spec")
    targets: list[ClusterTarget] = []
    for mesh in plan.meshes:
        if mesh.name not in chosen:
            continue
        if not mesh.clusters:
            raise TargetError(
                f"mesh {mesh.name!r} names no cluster: set meshes[].kubernetes.context or "
                "meshes[].clusters"
            )
        out = rendered[mesh.name]
        config = [server_form(o) for docs in out.files.values() for o in docs]
        secrets = [
            server_form(o)
            for docs in out.secret_files.values()
            for o in docs
            if o["kind"] not in SKIPPED_KINDS
        ]
        cacerts = [o for o in secrets if o["metadata"]["name"] == "cacerts"]
        for cluster in mesh.remotes:
            reader = reader_objects(mesh.istio_namespace)
            targets.append(ClusterTarget(mesh, cluster, [*cacerts, *reader]))
        primary = mesh.primary
        assert primary is not None
        targets.append(ClusterTarget(mesh, primary, [*config, *secrets], remotes=mesh.remotes))
    return targets


def retired_targets(
    recorded: Iterable[AppliedCluster], plan: FederationPlan
) -> list[ClusterTarget]:
    """The recorded clusters the plan no longer uses (told apart by kubeconfig context), each
    to be emptied of the federation's objects."""
    in_use = {c.context or "" for m in plan.meshes for c in m.clusters}
    seen: set[str] = set()
    out = []
    for rec in sorted(recorded):
        if rec.key in in_use or rec.key in seen:
            continue
        seen.add(rec.key)
        role: Literal["primary", "remote"] = "remote" if rec.role == "remote" else "primary"
        cluster = ClusterPlan(rec.cluster, rec.context, role)
        out.append(ClusterTarget(RetiredMesh(rec.mesh, rec.istio_namespace), cluster, []))
    return out
