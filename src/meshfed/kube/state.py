"""What meshfed last applied, kept on each primary cluster: ConfigMap ``meshfed-<federation>``
in ``meshfed-system`` with the spec as applied (discovered workloads included), the roots the
plan trusted (public certificates only), a digest of the objects applied there, and every
cluster meshfed has written to and not yet cleaned up.

``diff`` rebuilds the last applied plan from it, so the security diff compares what the
clusters run with what the new spec would make them run; ``apply`` finds there the clusters of
meshes (or of a mesh's remotes) that the spec no longer names, to prune them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import yaml

from meshfed.kube.client import Cluster, Obj
from meshfed.kube.errors import KubeError
from meshfed.plan.model import FederationPlan
from meshfed.plan.names import GATEWAY_NAMESPACE
from meshfed.render.istio.objects import obj
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.spec.model import Federation
from meshfed.workspace import plan_of


def state_name(federation: str) -> str:
    return f"meshfed-{federation}"


def spec_yaml(fed: Federation) -> str:
    doc = fed.model_dump(mode="json", by_alias=True, exclude_none=True)
    return yaml.safe_dump(doc, sort_keys=False)


def objects_digest(objects: Iterable[Obj]) -> str:
    canon = sorted(json.dumps(o, sort_keys=True, separators=(",", ":")) for o in objects)
    return "sha256:" + hashlib.sha256("\n".join(canon).encode()).hexdigest()


@dataclass(frozen=True, order=True)
class AppliedCluster:
    """A cluster meshfed wrote a mesh's objects to."""

    mesh: str
    cluster: str
    context: str | None
    """kubeconfig context; None: the current one."""
    role: str
    istio_namespace: str

    @property
    def key(self) -> str:
        """The cluster as the user's kubeconfig names it (what tells two clusters apart)."""
        return self.context or ""


def plan_clusters(plan: FederationPlan) -> list[AppliedCluster]:
    return sorted(
        AppliedCluster(m.name, c.name, c.context, c.role, m.istio_namespace)
        for m in plan.meshes
        for c in m.clusters
    )


def _clusters_json(clusters: Sequence[AppliedCluster]) -> str:
    return json.dumps([asdict(c) for c in sorted(set(clusters))], indent=1)


def state_object(
    fed: Federation,
    roots: Mapping[str, str],
    applied: Iterable[Obj],
    previous: Obj | None,
    clusters: Sequence[AppliedCluster] = (),
) -> Obj:
    """The state ConfigMap; its ``appliedAt`` changes only when its content does, so an
    unchanged federation re-applies without a single write. ``clusters``: every cluster meshfed
    has written this federation to and not cleaned up since (the spec's, and any it dropped
    that a partial apply has not pruned yet)."""
    data = {
        "spec.yaml": spec_yaml(fed),
        "roots.json": json.dumps(dict(sorted(roots.items())), indent=1),
        "objects.digest": objects_digest(applied),
        "clusters.json": _clusters_json(clusters),
    }
    old = (previous or {}).get("data") or {}
    same = all(old.get(k) == v for k, v in data.items())
    data["appliedAt"] = (
        old["appliedAt"]
        if same and "appliedAt" in old
        else datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return obj("v1", "ConfigMap", state_name(fed.name), fed.name, GATEWAY_NAMESPACE, data=data)


@dataclass(frozen=True)
class StoredState:
    cluster: str
    spec_text: str
    roots: dict[str, str]
    applied_at: str
    clusters: tuple[AppliedCluster, ...] | None = None
    """As recorded; None in a state written before meshfed recorded them (then: the spec's)."""

    def plan(self) -> FederationPlan:
        """The plan as applied; KubeError when the stored spec does not parse."""
        try:
            fed = parse_spec(self.spec_text, f"{state_name('')}(stored on {self.cluster})")
        except SpecError as exc:
            raise KubeError(
                f"the state stored on {self.cluster} is not a valid spec: {exc}"
            ) from None
        return plan_of(fed, self.roots)

    def applied_clusters(self) -> tuple[AppliedCluster, ...]:
        if self.clusters is not None:
            return self.clusters
        return tuple(plan_clusters(self.plan()))


def _read_clusters(text: str | None, where: str) -> tuple[AppliedCluster, ...] | None:
    if text is None:
        return None
    try:
        return tuple(AppliedCluster(**c) for c in json.loads(text))
    except (ValueError, TypeError):
        raise KubeError(f"state ConfigMap on {where} has unreadable clusters.json") from None


def read_state(client: Cluster, federation: str) -> StoredState | None:
    """The state on one cluster; None when meshfed never applied the federation there."""
    if client.find("v1", "ConfigMap") is None:
        return None
    found = client.get("v1", "ConfigMap", state_name(federation), GATEWAY_NAMESPACE)
    if found is None:
        return None
    data = found.get("data") or {}
    try:
        roots = json.loads(data.get("roots.json", "{}"))
    except ValueError:
        raise KubeError(f"state ConfigMap on {client.label} has unreadable roots.json") from None
    return StoredState(
        client.name,
        data.get("spec.yaml", ""),
        roots,
        data.get("appliedAt", ""),
        _read_clusters(data.get("clusters.json"), client.label),
    )


def last_plan(states: Iterable[StoredState]) -> tuple[FederationPlan | None, StoredState | None]:
    """The plan of the most recently applied state (None: never applied)."""
    ordered = sorted(states, key=lambda s: s.applied_at)
    if not ordered:
        return None, None
    newest = ordered[-1]
    return newest.plan(), newest
