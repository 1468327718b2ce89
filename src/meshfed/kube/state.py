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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

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


_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
"""libyaml's emitter when PyYAML has it (the same text, several times faster: the spec of a
thousand exports is about 0.5 MB)."""


_SECTIONS: dict[str, str] = {}
"""Recent YAML text of spec sections, by the digest of their JSON (see ``spec_yaml``)."""


def _section(key: str, value: Any) -> str:
    """``spec.<key>`` as it appears in the YAML of the whole document (block style: the
    document's text is the concatenation of its sections')."""
    canon = json.dumps([key, value], sort_keys=True, separators=(",", ":"))
    sha = hashlib.sha256(canon.encode()).hexdigest()
    text = _SECTIONS.get(sha)
    if text is None:
        dumped = str(yaml.dump({"spec": {key: value}}, Dumper=_Dumper, sort_keys=False))
        text = dumped.removeprefix("spec:\n")
        if len(_SECTIONS) > 64:
            _SECTIONS.clear()
        _SECTIONS[sha] = text
    return text


_BY_VALUE: dict[int, tuple[object, str]] = {}
"""Recent YAML text of spec sections by the section's value itself (its identity, the value
kept alive here): a spec completed from the clusters shares its exports and imports with the
Federation object's, and dumping those is the cost (``spec_yaml``)."""


def _section_of(body: Any, name: str) -> str:
    value = getattr(body, name)
    found = _BY_VALUE.get(id(value))
    if found is not None and found[0] is value:
        return found[1]
    dumped = body.model_dump(mode="json", by_alias=True, exclude_none=True, include={name})
    text = "".join(_section(k, v) for k, v in dumped.items())
    if len(_BY_VALUE) > 16:
        _BY_VALUE.clear()
    _BY_VALUE[id(value)] = (value, text)
    return text


def spec_yaml(fed: Federation) -> str:
    """The spec as YAML. Made section by section, each kept while it does not change: a
    discovered port or address changes ``meshes`` only, and the exports and imports of a
    thousand exports take most of the time to dump and emit (the spec models are frozen)."""
    head = fed.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"spec"})
    if list(type(fed).model_fields)[-1] != "spec":
        doc = fed.model_dump(mode="json", by_alias=True, exclude_none=True)
        return str(yaml.dump(doc, Dumper=_Dumper, sort_keys=False))
    text = str(yaml.dump(head, Dumper=_Dumper, sort_keys=False)) if head else ""
    body = fed.spec
    return text + "spec:\n" + "".join(_section_of(body, n) for n in type(body).model_fields)


def canonical_json(o: Obj) -> str:
    """One object's canonical text (what the objects' digest is made of)."""
    return json.dumps(o, sort_keys=True, separators=(",", ":"))


def objects_digest(objects: Iterable[Obj], canonical: Callable[[Obj], str] = canonical_json) -> str:
    canon = sorted(canonical(o) for o in objects)
    return "sha256:" + hashlib.sha256("\n".join(canon).encode()).hexdigest()


def is_state(o: Obj) -> bool:
    """The state ConfigMap of some federation."""
    meta = o.get("metadata") or {}
    return (
        o.get("kind") == "ConfigMap"
        and meta.get("namespace") == GATEWAY_NAMESPACE
        and str(meta.get("name") or "").startswith(state_name(""))
    )


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
    spec_text: str | None = None,
    canonical: Callable[[Obj], str] = canonical_json,
) -> Obj:
    """The state ConfigMap; its ``appliedAt`` changes only when its content does, so an
    unchanged federation re-applies without a single write. ``clusters``: every cluster meshfed
    has written this federation to and not cleaned up since (the spec's, and any it dropped
    that a partial apply has not pruned yet). ``spec_text``: ``spec_yaml(fed)`` when the caller
    has it already; ``canonical``: ``canonical_json``, or a cache of it."""
    data = {
        "spec.yaml": spec_yaml(fed) if spec_text is None else spec_text,
        "roots.json": json.dumps(dict(sorted(roots.items())), indent=1),
        "objects.digest": objects_digest(applied, canonical),
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
    return read_stored(client, federation)[0]


def read_stored(client: Cluster, federation: str) -> tuple[StoredState | None, Obj | None]:
    """``read_state``, and the ConfigMap as read."""
    if client.find("v1", "ConfigMap") is None:
        return None, None
    found = client.get("v1", "ConfigMap", state_name(federation), GATEWAY_NAMESPACE)
    if found is None:
        return None, None
    return stored_of(found, client.name, client.label), found


def stored_of(found: Obj, cluster: str, label: str) -> StoredState:
    """The state a ConfigMap holds (read from ``cluster``, ``label`` in messages)."""
    data = found.get("data") or {}
    try:
        roots = json.loads(data.get("roots.json", "{}"))
    except ValueError:
        raise KubeError(f"state ConfigMap on {label} has unreadable roots.json") from None
    return StoredState(
        cluster,
        data.get("spec.yaml", ""),
        roots,
        data.get("appliedAt", ""),
        _read_clusters(data.get("clusters.json"), label),
    )


def last_plan(states: Iterable[StoredState]) -> tuple[FederationPlan | None, StoredState | None]:
    """The plan of the most recently applied state (None: never applied)."""
    ordered = sorted(states, key=lambda s: s.applied_at)
    if not ordered:
        return None, None
    newest = ordered[-1]
    return newest.plan(), newest
