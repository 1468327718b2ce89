"""What ``apply`` would change: the security diff, in plain words, then per cluster the object
diff (the server's dry-run result against the live object, both cut to the fields meshfed owns,
secret values replaced by digests)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import yaml

from meshfed.kube.apply import Action, ClusterRun, Rollout
from meshfed.kube.client import Obj
from meshfed.kube.fields import owned_fields, owned_view
from meshfed.kube.state import StoredState, last_plan
from meshfed.kube.targets import ref_text
from meshfed.plan.diff import SecurityChange, security_diff


def _yaml(obj: Obj) -> list[str]:
    if not obj:
        return []
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False).splitlines(keepends=True)


def unified(name: str, before: Obj, after: Obj) -> str:
    """A unified YAML diff of two views of one object ('' when equal)."""
    lines = difflib.unified_diff(
        _yaml(before), _yaml(after), fromfile=f"live/{name}", tofile=f"apply/{name}"
    )
    return "".join(lines)


@dataclass
class ObjectChange:
    action: Action
    name: str
    diff: str


@dataclass
class ClusterDiff:
    label: str
    changes: list[ObjectChange] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"created": 0, "configured": 0, "unchanged": 0, "deleted": 0}
        for change in self.changes:
            out[change.action] += 1
        return out


def cluster_diff(run: ClusterRun) -> ClusterDiff:
    out = ClusterDiff(run.label)
    for checked in run.checked:
        name = ref_text(checked.obj)
        before = owned_view(checked.live)
        after = owned_view(checked.result, owned_fields(checked.result))
        action = checked.action
        text = unified(name, before, after) if action != "unchanged" else ""
        if action == "configured" and not text:
            action = "unchanged"  # only fields meshfed does not own differ
        out.changes.append(ObjectChange(action, name, text))
    for obj in run.prune:
        name = ref_text(obj)
        out.changes.append(ObjectChange("deleted", name, unified(name, owned_view(obj), {})))
    return out


@dataclass
class FederationDiff:
    security: list[SecurityChange]
    baseline: StoredState | None
    clusters: list[ClusterDiff]


def diff(rollout: Rollout) -> FederationDiff:
    """Dry-run everything (raises ApplyRefused like apply) and compare."""
    rollout.run(dry_run=True)
    old_plan, baseline = last_plan(rollout.states)
    return FederationDiff(
        security_diff(old_plan, rollout.plan),
        baseline,
        [cluster_diff(run) for run in rollout.runs],
    )
