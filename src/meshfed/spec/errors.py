"""Spec problems: each names the file, the line, the field, what is wrong and how to fix it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

Path_ = tuple[str | int, ...]


_PLAIN_KEY = re.compile(r"[A-Za-z_$][\w$-]*")


def format_path(path: Path_) -> str:
    """Render a field path the way users write it: ``spec.meshes[0].ingress.port``.

    A key that is not a plain name is quoted (``metadata["a b"]``, ``["0"]``), escaped so that
    no control character reaches a terminal.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(document)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located by field path."""

    path: Path_
    message: str
    fix: str

    def render(self, file: str, line: int | None) -> str:
        where = f"{file}:{line}" if line is not None else file
        return f"{where}: {format_path(self.path)}: {self.message}. Fix: {self.fix}"


class SpecError(Exception):
    """The spec is invalid. ``lines`` holds one rendered problem each, in file order."""

    def __init__(self, file: str, lines: list[str]) -> None:
        self.file = file
        self.lines = lines
        count = len(lines)
        head = f"{file}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *lines]))
