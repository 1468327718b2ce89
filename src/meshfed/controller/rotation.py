"""Staged trust rotation in controller mode: the same state machine as ``meshfed rotate``,
on the Federation's PKI state Secret, one step per turn, each followed by a reconcile that
puts the step's bundles, CA and certificates on every cluster (the order of
docs/rotation.md: new anchor trusted everywhere before anything is signed by it, the old one
removed only after every certificate chained to it was replaced).

Started by the annotation ``meshfed.dev/rotate`` on the Federation (``intermediate/<mesh>``,
``root``, or ``root/<mesh>`` in Federated trust; ``abort`` rolls back), which
``meshfed controller rotate`` sets. In split custody the step that needs a signature waits:
``meshfed controller pki-request``/``pki-import`` work on the same Secret.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from meshfed.controller.pkistate import SecretState
from meshfed.kube.client import KubeClient
from meshfed.spec.model import Federation

ANNOTATION = "meshfed.dev/rotate"
Kind = Literal["intermediate", "root"]


@dataclass(frozen=True)
class Request:
    kind: Kind | Literal["abort"]
    mesh: str | None


def parse_request(value: str | None) -> Request | None:
    """The annotation's value (pure); None when absent; ValueError when unreadable."""
    if not value:
        return None
    kind, _, mesh = value.strip().partition("/")
    if kind == "abort" and not mesh:
        return Request("abort", None)
    if kind == "intermediate" and mesh:
        return Request("intermediate", mesh)
    if kind == "root":
        return Request("root", mesh or None)
    raise ValueError(
        f"{ANNOTATION}: {value!r} is not intermediate/<mesh>, root, root/<mesh> or abort"
    )


@dataclass
class StepOutcome:
    step: str | None
    detail: str
    finished: bool
    waiting: list[str]
    record: dict[str, Any] | None
    held: str | None = None
    """Why the next step waits (partners following a bundle must get its new root first)."""


def _number(complete: Federation, state_dir: Path) -> None:
    """Number the published bundles of the state's current roots (``bundles.state``), so the
    bundle endpoint serves a trust step's overlap and a rotation can wait for it."""
    from meshfed.controller.publish import number_bundles
    from meshfed.pki.errors import PKIError

    with contextlib.suppress(PKIError):
        number_bundles(complete, state_dir)


def _bundle_hold(complete: Federation, state_dir: Path, step: str | None) -> str | None:
    """Before signing switches to the new root: every published bundle has held its current
    roots (both generations, after the trust step) for ``AHEAD`` refresh hints."""
    from meshfed.bundles.config import published
    from meshfed.bundles.state import published_since
    from meshfed.controller.publish import publish_wait

    if step != "switch":
        return None
    _number(complete, state_dir)
    now = datetime.now(UTC)
    waits = []
    for mesh in published(complete):
        left = publish_wait(published_since(state_dir, mesh.name), mesh.refresh_hint, now)
        if left > 0:
            waits.append(f"{mesh.name} ({left:.0f}s more)")
    if not waits:
        return None
    return (
        "the switch to the new root waits until partners following the bundle of "
        + ", ".join(waits)
        + " hold it (published 3 refresh hints ahead)"
    )


def rotation_step(
    management: KubeClient,
    namespace: str,
    work_dir: Path,
    complete: Federation,
    request: Request,
) -> StepOutcome:
    """Start (or resume) the requested rotation and do its next step, on the state Secret."""
    from meshfed.rotation.machine import Rotator

    state = SecretState(management, namespace, complete.name, work_dir / "rotation")
    with state.session() as state_dir:
        spec = work_dir / f"{complete.name}.rotation-spec.yaml"
        doc = complete.model_dump(mode="json", by_alias=True, exclude_none=True)
        spec.write_text(yaml.safe_dump(doc, sort_keys=False))
        rotator = Rotator(state_dir, spec)
        if request.kind == "abort":
            if rotator.status() is None:
                return StepOutcome(None, "no rotation under way", True, [], None)
            result = rotator.abort()
        else:
            started = rotator.start(request.kind, request.mesh)
            held = _bundle_hold(complete, state_dir, started.running or started.next_step)
            if held:
                return StepOutcome(None, held, False, [], _record(started), held)
            result = rotator.run(started, single=True)
            _number(complete, state_dir)  # a trust step's new root is published at once
        step = result.steps[-1] if result.steps else None
        now = rotator.status()
        return StepOutcome(
            step.step if step else None,
            step.detail if step else "",
            result.finished or now is None,
            [str(p.relative_to(state_dir)) for p in result.waiting],
            _record(now),
        )


def _record(record: Any) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "id": record.id,
        "kind": record.kind,
        "meshes": list(record.meshes),
        "done": list(record.done),
        "next": record.next_step,
        "aborting": bool(record.aborting),
    }
