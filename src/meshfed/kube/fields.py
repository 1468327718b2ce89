"""The fields meshfed owns in an object (server-side apply's ``managedFields``), and views of
objects fit for showing: only meshfed's fields, with secret values replaced by digests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from meshfed.kube.client import FIELD_MANAGER, Obj

FieldSet = dict[str, Any]
"""``fieldsV1``: ``f:<name>`` for a map key, ``k:<json>`` for a list item by key fields,
``v:<json>`` for a set value, ``i:<n>`` for a list index, ``.`` for the item itself."""


def owned_fields(obj: Obj | None, manager: str = FIELD_MANAGER) -> FieldSet:
    """The fields ``manager`` owns through apply."""
    merged: FieldSet = {}
    for entry in (obj or {}).get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            _merge(merged, entry.get("fieldsV1") or {})
    return merged


def _merge(into: FieldSet, more: FieldSet) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _matches(item: Any, key: dict[str, Any]) -> bool:
    return isinstance(item, dict) and all(item.get(k) == v for k, v in key.items())


def project(value: Any, fields: FieldSet) -> Any:
    """The part of ``value`` that ``fields`` names (the whole value where it names a leaf)."""
    if not fields:
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in fields.items():
            if key.startswith("f:"):
                name = key[2:]
                if name in value:
                    out[name] = project(value[name], sub)
        return out
    if isinstance(value, list):
        items: list[Any] = []
        for key, sub in fields.items():
            if key.startswith("k:"):
                want = json.loads(key[2:])
                items += [project(i, sub) for i in value if _matches(i, want)]
            elif key.startswith("v:"):
                want = json.loads(key[2:])
                items += [i for i in value if i == want]
            elif key.startswith("i:"):
                index = int(key[2:])
                if index < len(value):
                    items.append(project(value[index], sub))
        return items
    return value


def digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def redact(obj: Obj) -> Obj:
    """A copy safe to print: a Secret's values become digests of themselves."""
    if obj.get("kind") != "Secret":
        return obj
    out = dict(obj)
    for key in ("data", "stringData"):
        if isinstance(out.get(key), dict):
            out[key] = {k: f"<{digest(str(v))}>" for k, v in out[key].items()}
    return out


def owned_view(obj: Obj | None, fields: FieldSet | None = None) -> Obj:
    """The meshfed-owned fields of ``obj``, redacted; {} for a missing object."""
    if obj is None:
        return {}
    view = project(obj, fields if fields is not None else owned_fields(obj))
    view = view if isinstance(view, dict) else {}
    for key in ("apiVersion", "kind"):
        view.setdefault(key, obj.get(key))
    meta = view.setdefault("metadata", {})
    for key in ("name", "namespace"):
        if key in obj.get("metadata", {}):
            meta.setdefault(key, obj["metadata"][key])
    return redact(view)
