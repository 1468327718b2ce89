"""What meshfed last applied, kept on each primary cluster: ConfigMap ``meshfed-<federation>``
in ``meshfed-system`` with the spec as applied (discovered workloads included), the roots the
plan trusted (public certificates only) and a digest of the objects applied there.

``diff`` rebuilds the last applied plan from it, so the security diff compares what the
clusters run with what the new spec would make them run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import yaml

from meshfed.kube.client import Cluster, Obj
from meshfed.kube.errors import KubeError
from meshfed.plan.build import build_plan
from meshfed.plan.model import FederationPlan
from meshfed.plan.names import GATEWAY_NAMESPACE
from meshfed.render.istio.objects import obj
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.spec.model import Federation


def state_name(federation: str) -> str:
    return f"meshfed-{federation}"


def spec_yaml(fed: Federation) -> str:
    doc = fed.model_dump(mode="json", by_alias=True, exclude_none=True)
    return yaml.safe_dump(doc, sort_keys=False)


def objects_digest(objects: Iterable[Obj]) -> str:
    canon = sorted(json.dumps(o, sort_keys=True, separators=(",", ":")) for o in objects)
    return "sha256:" + hashlib.sha256("\n".join(canon).encode()).hexdigest()


def state_object(
    fed: Federation,
    roots: Mapping[str, str],
    applied: Iterable[Obj],
    previous: Obj | None,
) -> Obj:
    """The state ConfigMap; its ``appliedAt`` changes only when its content does, so an
    unchanged federation re-applies without a single write."""
    data = {
        "spec.yaml": spec_yaml(fed),
        "roots.json": json.dumps(dict(sorted(roots.items())), indent=1),
        "objects.digest": objects_digest(applied),
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

    def plan(self) -> FederationPlan:
        fed = parse_spec(self.spec_text, f"{state_name('')}(stored on {self.cluster})")
        return build_plan(fed, self.roots)


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
    return StoredState(client.name, data.get("spec.yaml", ""), roots, data.get("appliedAt", ""))


def last_plan(states: Iterable[StoredState]) -> tuple[FederationPlan | None, StoredState | None]:
    """The plan of the most recently applied state (None: never applied)."""
    ordered = sorted(states, key=lambda s: s.applied_at)
    if not ordered:
        return None, None
    newest = ordered[-1]
    try:
        return newest.plan(), newest
    except SpecError as exc:
        raise KubeError(
            f"the state stored on {newest.cluster} is not a valid spec: {exc}"
        ) from None
