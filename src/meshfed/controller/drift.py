"""Drift: a watch event on a mesh cluster, and what it calls for (pure).

An object carrying meshfed's labels that someone else changed or deleted is put back as the
last reconcile rendered it; one that the last reconcile did not render (a copy, or an object
left behind) is deleted. meshfed's own writes come back as events too: a change is meshfed's
when the newest entry of its ``managedFields`` (status updates aside) is the ``meshfed`` field
manager's, and a deletion is meshfed's when it pruned that object.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from meshfed.kube.client import FIELD_MANAGER
from meshfed.kube.targets import owned_by, ref

Obj = dict[str, Any]
Ref = tuple[str, str, str, str]


def last_writer(obj: Obj) -> str | None:
    """The field manager of the newest change to the object's spec or metadata (status
    updates by other controllers, e.g. a Deployment's, do not count)."""
    entries = [
        e
        for e in (obj.get("metadata") or {}).get("managedFields") or []
        if e.get("subresource") != "status"
    ]
    if not entries:
        return None
    newest = max(str(e.get("time") or "") for e in entries)
    writers = {str(e.get("manager")) for e in entries if str(e.get("time") or "") == newest}
    if len(writers) > 1 and FIELD_MANAGER in writers:
        writers.discard(FIELD_MANAGER)  # same second: someone else wrote after meshfed
    return sorted(writers)[0]


def may_drift(event: str, live: Obj) -> bool:
    """Whether a watch event can call for a repair at all (``repair_for`` returns None
    otherwise): a deletion, or a change whose last writer is not meshfed. Decided where the
    event arrives, so that a list of thousands of objects meshfed wrote is not queued."""
    return event == "DELETED" or last_writer(live) != FIELD_MANAGER


@dataclass(frozen=True)
class Repair:
    action: Literal["restore", "prune"]
    ref: Ref
    obj: Obj
    """restore: the object as meshfed renders it; prune: the live object."""
    why: str


def repair_for(
    event: str,
    live: Obj,
    desired: Mapping[Ref, Obj],
    federation: str,
    pruned_by_us: Collection[Ref] = (),
) -> Repair | None:
    """What one watch event on a labelled object calls for (None: nothing)."""
    if event not in ("ADDED", "MODIFIED", "DELETED") or not owned_by(live, federation):
        return None
    key = ref(live)
    wanted = desired.get(key)
    if event == "DELETED":
        if wanted is None or key in pruned_by_us:
            return None
        return Repair("restore", key, wanted, "deleted by hand")
    writer = last_writer(live)
    if writer == FIELD_MANAGER:
        return None
    if wanted is None:
        return Repair("prune", key, live, f"carries meshfed's labels, not rendered (by {writer})")
    return Repair("restore", key, wanted, f"changed by {writer or 'someone else'}")


def missing_after_list(
    desired: Mapping[Ref, Obj],
    api_version: str,
    kind: str,
    listed: Collection[Ref],
    written_after: Collection[Ref] = (),
) -> list[Obj]:
    """The objects of one kind that meshfed applied to a cluster and a complete list of that
    kind no longer holds: deleted while no watch was running (between a reconcile's writes
    and the watch's first list, or before a re-list after an expired watch), so no DELETED
    event will ever say so. Each is restored as a deletion by hand would be.

    ``written_after``: objects written after the list began (a reconcile ran while the watch
    listed): the list may predate them, so they are not judged by it (a deletion of one
    after its writing comes as a DELETED event: the watch runs from the list's version)."""
    group = api_version.rpartition("/")[0]
    listed, unsure = set(listed), set(written_after)
    return [
        desired[at]
        for at in desired
        if at[0] == group and at[1] == kind and at not in listed and at not in unsure
    ]
