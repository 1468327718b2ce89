"""Read a spec file: YAML with line numbers, type validation, then whole-document checks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meshfed.spec import yamlsafe
from meshfed.spec.check import check_federation
from meshfed.spec.errors import Path_, Problem, SpecError
from meshfed.spec.lint import warn_federation
from meshfed.spec.model import Federation
from meshfed.spec.yamlsafe import InputError, line_for


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


def parse_spec(
    text: str,
    file: str = "<spec>",
    *,
    discovery_pending: bool = False,
    warnings: list[str] | None = None,
) -> Federation:
    """Parse and validate spec text; raise SpecError listing every problem with its line.

    ``discovery_pending``: see :func:`meshfed.spec.check.check_federation`. ``warnings``: when
    given, a valid spec's warnings (:func:`meshfed.spec.lint.warn_federation`) are appended to
    it, one ``file:line: warning: field: what. Fix: how`` line each.
    """
    try:
        doc = yamlsafe.load_one(text, file)
    except InputError as exc:
        raise SpecError(file, exc.lines) from None
    if doc is None or doc.data is None:
        raise SpecError(file, [f"{file}: (document): the file is empty. Fix: write a Federation"])
    return _validated(doc.data, doc.lines, file, discovery_pending, warnings)


def parse_document(data: Any, file: str, *, discovery_pending: bool = False) -> Federation:
    """``parse_spec`` of a document already read (e.g. a Federation object from the API
    server): the same checks and messages, without line numbers. At a thousand exports this
    is seconds faster than writing the document as YAML to parse it again."""
    if data is None:
        raise SpecError(
            file, [f"{file}: (document): the document is empty. Fix: write a Federation"]
        )
    return _validated(data, {}, file, discovery_pending, None)


def _validated(
    data: Any,
    lines: Mapping[Path_, int],
    file: str,
    discovery_pending: bool,
    warnings: list[str] | None,
) -> Federation:
    problems: list[Problem] = []
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
    if warnings is not None:
        for problem in warn_federation(federation):
            line = line_for(lines, problem.path)
            where = f"{file}:{line}" if line is not None else file
            warnings.append(f"{where}: warning: {problem.render(file, line)[len(where) + 2 :]}")
    return federation


def load_spec(
    path: Path | str, *, discovery_pending: bool = False, warnings: list[str] | None = None
) -> Federation:
    """Read and validate a spec file (``warnings``: see :func:`parse_spec`)."""
    return parse_spec(
        read_spec_text(path), str(path), discovery_pending=discovery_pending, warnings=warnings
    )


def read_spec_text(path: Path | str) -> str:
    """The text of a spec file; SpecError if it cannot be read or is not UTF-8."""
    path = Path(path)
    try:
        return yamlsafe.read_text(path)
    except OSError as exc:
        raise SpecError(
            str(path),
            [f"{path}: cannot read the spec: {exc.strerror or exc}. Fix: check the path"],
        ) from None
    except InputError as exc:
        raise SpecError(str(path), exc.lines) from None
