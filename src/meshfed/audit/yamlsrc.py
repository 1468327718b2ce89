"""YAML documents with the line of every field, and tolerant accessors for untyped objects.

Reading goes through :mod:`meshfed.spec.yamlsafe`, like every spec and manifest meshfed reads.
"""

from __future__ import annotations

from typing import Any

from meshfed.spec.yamlsafe import Document, line_for, load_all

__all__ = [
    "FieldPath",
    "LineMap",
    "Obj",
    "ParsedDocument",
    "as_dict",
    "as_list",
    "as_str",
    "dig",
    "line_for",
    "parse_documents",
    "str_list",
    "str_map",
]

FieldPath = tuple[str | int, ...]
LineMap = dict[FieldPath, int]
Obj = dict[str, Any]
ParsedDocument = Document


def parse_documents(text: str, file: str = "<yaml>") -> list[ParsedDocument]:
    """Every non-empty document of a YAML stream, read as every meshfed input is
    (:mod:`meshfed.spec.yamlsafe`); InputError naming line, field and fix otherwise."""
    return [doc for doc in load_all(text, file) if doc.data is not None]


def dig(value: Any, *path: str | int) -> Any:
    """``value[path[0]][path[1]]...``, or None where the shape does not fit."""
    for part in path:
        if isinstance(part, int):
            if not isinstance(value, list) or not -len(value) <= part < len(value):
                return None
            value = value[part]
        else:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
    return value


def as_dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def str_list(value: Any) -> list[str]:
    return [v for v in as_list(value) if isinstance(v, str)]


def str_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in as_dict(value).items() if v is not None}
