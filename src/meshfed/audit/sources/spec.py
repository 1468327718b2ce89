"""A federation spec read leniently: the raw document (with lines) even where it does not validate.

Checks read the raw document, so an invalid spec is still audited; meshfed's own validation
problems are kept to be reported as findings too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshfed.audit.model import Location
from meshfed.audit.yamlsrc import FieldPath, LineMap, Obj, as_dict, as_list, as_str, line_for
from meshfed.spec import yamlsafe
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.spec.model import Federation


@dataclass(frozen=True)
class SpecProblem:
    """One problem meshfed's validation reports: line, field, what, fix."""

    line: int | None
    field: str
    message: str
    fix: str


@dataclass(frozen=True)
class SpecSource:
    file: str
    data: Obj
    lines: LineMap = field(repr=False)
    federation: Federation | None
    problems: tuple[SpecProblem, ...]

    @property
    def name(self) -> str | None:
        return as_str(as_dict(self.data.get("metadata")).get("name"))

    def section(self, key: str) -> list[tuple[int, Obj]]:
        """``spec.<key>`` entries that are mappings, with their index."""
        items = as_list(as_dict(self.data.get("spec")).get(key))
        return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]

    def meshes(self) -> list[tuple[int, Obj]]:
        return self.section("meshes")

    def exports(self) -> list[tuple[int, Obj]]:
        return self.section("exports")

    def imports(self) -> list[tuple[int, Obj]]:
        return self.section("imports")

    def trust_domains(self) -> dict[str, str]:
        """mesh name -> trust domain, for meshes that have both."""
        out: dict[str, str] = {}
        for _, mesh in self.meshes():
            name, domain = as_str(mesh.get("name")), as_str(mesh.get("trustDomain"))
            if name and domain:
                out.setdefault(name, domain)
        return out

    def at(self, *path: str | int, kind: str = "Federation", name: str | None = None) -> Location:
        return Location(
            file=self.file,
            line=line_for(self.lines, path),
            kind=kind,
            name=name if name is not None else self.name,
            detail=_format_path(path),
        )


def _format_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _problems(exc: SpecError, file: str) -> list[SpecProblem]:
    pattern = re.compile(rf"^{re.escape(file)}(?::(\d+))?: (.*)$")
    out = []
    for text in exc.lines:
        match = pattern.match(text)
        if match is None:
            out.append(SpecProblem(None, "(document)", text, "see `meshfed validate`"))
            continue
        line = int(match.group(1)) if match.group(1) else None
        rest = match.group(2)
        field_name, sep, message = rest.partition(": ")
        if not sep:
            field_name, message = "(document)", rest
        fix = "see `meshfed validate`"
        if ". Fix: " in message:
            message, _, fix = message.rpartition(". Fix: ")
        out.append(SpecProblem(line, field_name, message, fix))
    return out


def read_spec(path: Path) -> SpecSource:
    """Read ``path``; OSError if it cannot be read, InputError if it is not YAML meshfed reads
    (not UTF-8, an alias bomb, ...). Never raises for a spec that does not validate."""
    file = str(path)
    text = yamlsafe.read_text(path)
    doc = yamlsafe.load_one(text, file)
    federation: Federation | None = None
    problems: list[SpecProblem] = []
    try:
        federation = parse_spec(text, file)
    except SpecError as exc:
        problems = _problems(exc, file)
    data: Any = doc.data if doc is not None else None
    lines: LineMap = doc.lines if doc is not None else {}
    return SpecSource(file, as_dict(data), lines, federation, tuple(problems))
