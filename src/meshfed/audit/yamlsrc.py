"""YAML documents with the line of every field, and tolerant accessors for untyped objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

FieldPath = tuple[str | int, ...]
LineMap = dict[FieldPath, int]
Obj = dict[str, Any]


@dataclass(frozen=True)
class ParsedDocument:
    data: Any
    line: int
    lines: LineMap


def _walk(node: yaml.Node, path: FieldPath, lines: LineMap) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, str(key_node.value))
            lines.setdefault(child, key_node.start_mark.line + 1)
            _walk(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines)


def parse_documents(text: str) -> list[ParsedDocument]:
    """Every non-empty document of a YAML stream; yaml.YAMLError on invalid YAML."""
    loader = yaml.SafeLoader(text)
    out: list[ParsedDocument] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            if data is None:
                continue
            lines: LineMap = {}
            _walk(node, (), lines)
            out.append(ParsedDocument(data, node.start_mark.line + 1, lines))
    finally:
        loader.dispose()
    return out


def line_for(lines: Mapping[FieldPath, int], path: FieldPath) -> int | None:
    """The line of the deepest part of ``path`` that exists."""
    for cut in range(len(path), -1, -1):
        found = lines.get(path[:cut])
        if found is not None:
            return found
    return None


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
