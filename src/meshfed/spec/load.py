"""Read a spec file: YAML with line numbers, type validation, then whole-document checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from meshfed.spec.check import check_federation
from meshfed.spec.errors import Path_, Problem, SpecError
from meshfed.spec.model import Federation

LineMap = dict[Path_, int]
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present


def _walk(node: yaml.Node, path: Path_, lines: LineMap, problems: list[Problem]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            if key in seen:
                lines[child] = key_node.start_mark.line + 1
                problems.append(
                    Problem(child, f"key {key!r} appears twice", "keep one of the two entries")
                )
                continue
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, problems)


def line_for(lines: LineMap, path: Path_) -> int | None:
    """The line of the deepest part of ``path`` that exists in the file."""
    for cut in range(len(path), -1, -1):
        found = lines.get(path[:cut])
        if found is not None:
            return found
    return None


def _fix_for(error_type: str, field: str) -> str:
    fixes = {
        "missing": f"add the required field {field!r}",
        "extra_forbidden": f"remove {field!r} or check its spelling against `meshfed schema`",
        "literal_error": "use one of the values listed",
        "string_pattern_mismatch": "use the form described in `meshfed schema`",
        "too_short": "add at least one entry",
        "int_parsing": "use a whole number",
        "greater_than_equal": "use a larger value",
        "less_than_equal": "use a smaller value",
        "string_type": "use a string (quote it in YAML if needed)",
        "list_type": "use a YAML list",
        "model_type": "use a mapping of fields",
        "dict_type": "use a mapping of fields",
    }
    return fixes.get(error_type, "see `meshfed schema` for the expected form")


def _type_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc: Path_ = tuple(part for part in item["loc"] if not isinstance(part, str) or part)
        field = str(loc[-1]) if loc else "document"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = f"unknown field {field!r}"
        elif item["type"] == "string_pattern_mismatch":
            ctx = item.get("ctx") or {}
            message = f"{item['input']!r} does not match {ctx.get('pattern', '')}"
        elif item["type"] == "value_error":
            message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(Problem(loc, message, _fix_for(item["type"], field)))
    return problems


def parse_spec(text: str, file: str = "<spec>", *, discovery_pending: bool = False) -> Federation:
    """Parse and validate spec text; raise SpecError listing every problem with its line.

    ``discovery_pending``: see :func:`meshfed.spec.check.check_federation`.
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data: Any = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            file, [f"{file}{line}: (document): not valid YAML: {reason}. Fix: correct the syntax"]
        ) from None
    finally:
        loader.dispose()
    if root is None:
        raise SpecError(file, [f"{file}: (document): the file is empty. Fix: write a Federation"])
    lines: LineMap = {}
    problems: list[Problem] = []
    _walk(root, (), lines, problems)
    if not isinstance(data, dict):
        raise SpecError(
            file,
            [
                f"{file}:1: (document): expected a mapping (apiVersion, kind, metadata, spec). "
                "Fix: start from examples/bank.yaml"
            ],
        )
    federation: Federation | None = None
    try:
        federation = Federation.model_validate(data)
    except ValidationError as exc:
        problems.extend(_type_problems(exc))
    if federation is not None and not problems:
        problems.extend(check_federation(federation, discovery_pending=discovery_pending))
    if problems:
        located = sorted(
            ((line_for(lines, p.path), p) for p in problems),
            key=lambda item: item[0] or 0,
        )
        raise SpecError(file, [p.render(file, line) for line, p in located])
    assert federation is not None
    return federation


def load_spec(path: Path | str, *, discovery_pending: bool = False) -> Federation:
    """Read and validate a spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(
            str(path),
            [f"{path}: cannot read the spec: {exc.strerror}. Fix: check the path"],
        ) from None
    return parse_spec(text, str(path), discovery_pending=discovery_pending)
