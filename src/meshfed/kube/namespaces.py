"""The namespaces an apply needs, decided the way Istio installs a cluster.

Istio's plug-in CA guide creates the Istio namespace and the ``cacerts`` secret *before* istiod
is installed (``kubectl create namespace istio-system`` first). On a bare cluster meshfed does
the same: when a mesh's Istio namespace is missing, it is created first, plain (what
``kubectl create namespace`` makes, plus Istio's network label when the mesh names one).

Application namespaces (those of the workloads, where meshfed puts only their STRICT
PeerAuthentication) are never created: they belong to the applications, and one that does not
exist stops the apply with a plain reason instead of the API server's "not found".

A server-side dry-run cannot place an object in a namespace that does not exist yet, so objects
in a namespace this apply creates (the Istio namespace, ``meshfed-system``) are validated in a
stand-in namespace, and the authorizer is asked about the real one.

Everything here is a pure function of the objects, the namespaces the cluster has and the plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshfed.kube.client import Obj, describe
from meshfed.plan.model import MeshPlan

STAND_IN_NAMESPACE = "default"
NETWORK_LABEL = "topology.istio.io/network"
BOOTSTRAP_ANNOTATION = "meshfed.dev/created-for"


def namespace_of(obj: Obj) -> str | None:
    ns = (obj.get("metadata") or {}).get("namespace")
    return str(ns) if ns else None


def istio_namespace_object(name: str, federation: str, network: str | None) -> Obj:
    """The Istio namespace as meshfed creates it on a bare cluster. Not labelled as meshfed's:
    Istio installs into it and owns it; it is never pruned."""
    meta: Obj = {
        "name": name,
        "annotations": {
            BOOTSTRAP_ANNOTATION: f"Istio's plug-in CA (cacerts) before istiod; federation "
            f"{federation}"
        },
    }
    if network:
        meta["labels"] = {NETWORK_LABEL: network}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


@dataclass(frozen=True)
class MissingNamespace:
    """An application namespace the objects need and the cluster does not have."""

    name: str
    objects: tuple[str, ...]
    """The objects that would go there (``Kind ns/name``)."""
    workloads: tuple[str, ...]
    """The mesh's workloads in it (``ns/name``), as the spec names them."""

    def reason(self) -> str:
        if self.workloads:
            owner = f"the workload{'s' if len(self.workloads) > 1 else ''} " + ", ".join(
                self.workloads
            )
        else:
            owner = ", ".join(self.objects)
        return (
            f"namespace {self.name} does not exist on this cluster; it belongs to the "
            f"applications ({owner}), and meshfed does not create application namespaces: "
            "deploy the application (or create the namespace), then apply again. To put the "
            "mesh's CA in place before istiod, as Istio's install order has it, run "
            "`meshfed pki install`: it needs only Istio's namespace, which meshfed creates"
        )


@dataclass(frozen=True)
class NamespacePlan:
    create: tuple[Obj, ...]
    """Namespace objects to create first (the missing Istio namespace)."""
    pending: frozenset[str]
    """Namespaces that do not exist yet and this apply creates: objects there are validated in
    the stand-in namespace."""
    missing: tuple[MissingNamespace, ...]
    """Application namespaces that do not exist: the apply refuses."""

    def skipped(self, obj: Obj) -> bool:
        """An object in a missing application namespace (its refusal is the namespace's)."""
        return namespace_of(obj) in {m.name for m in self.missing}


def plan_namespaces(
    objects: Iterable[Obj],
    exists: Mapping[str, bool],
    istio_namespace: str,
    federation: str,
    network: str | None = None,
    workloads: Iterable[tuple[str, str]] = (),
) -> NamespacePlan:
    """What to create, what to validate in a stand-in and what to refuse.

    ``exists``: every namespace the objects use -> whether the cluster has it (a namespace left
    out counts as existing). ``workloads``: the mesh's workloads as (namespace, name).
    """
    objects = list(objects)
    rendered = {
        o["metadata"]["name"] for o in objects if o.get("kind") == "Namespace" and o.get("metadata")
    }
    used: dict[str, list[str]] = {}
    for o in objects:
        ns = namespace_of(o)
        if ns is not None:
            used.setdefault(ns, []).append(describe(o))
    absent = {ns for ns in used if not exists.get(ns, True)}
    create: list[Obj] = []
    if istio_namespace in absent and istio_namespace not in rendered:
        create.append(istio_namespace_object(istio_namespace, federation, network))
    pending = frozenset(absent & (rendered | {istio_namespace}))
    by_namespace: dict[str, list[str]] = {}
    for ns, name in workloads:
        by_namespace.setdefault(ns, []).append(f"{ns}/{name}")
    missing = tuple(
        MissingNamespace(ns, tuple(used[ns]), tuple(sorted(set(by_namespace.get(ns, [])))))
        for ns in sorted(absent - pending)
    )
    return NamespacePlan(tuple(create), pending, missing)


def for_mesh(
    objects: Iterable[Obj], exists: Mapping[str, bool], mesh: MeshPlan, federation: str
) -> NamespacePlan:
    """``plan_namespaces`` with the mesh's Istio namespace, network and workloads."""
    return plan_namespaces(
        objects,
        exists,
        mesh.istio_namespace,
        federation,
        mesh.network,
        [(w.namespace, w.name) for w in mesh.workloads],
    )


def created_note(name: str, done: bool) -> str:
    verb = "created" if done else "would create"
    return (
        f"{verb} Namespace {name}: Istio's namespace was missing (Istio's plug-in CA order: "
        "the namespace and cacerts first, istiod after)"
    )


def stand_in_note(namespaces: Iterable[str]) -> str:
    names = ", ".join(sorted(namespaces))
    return (
        f"objects in {names} (not there yet) were validated in namespace {STAND_IN_NAMESPACE}: "
        "a server-side dry-run cannot place an object in a namespace that does not exist; "
        f"the authorizer was asked about {names} itself"
    )
