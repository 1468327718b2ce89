"""The audit corpus (tests/fixtures/audit/) and how to read it; shared by the audit tests.

A bad manifest case is a mutation of the clean tree ``manifests/good``: its header says what it
expects (``# expect: <check> <severity>``), which scope it changes (``# scope: alpha``), which
objects it removes (``# remove: Kind/namespace/name``), or that it is a raw file to add as is
(``# raw: alpha/broken.yaml``); its documents replace objects of the same kind/namespace/name in
that scope, or are added to it. A bad spec says what it expects the same way.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AUDIT = Path(__file__).resolve().parent / "fixtures" / "audit"
GOOD_TREE = AUDIT / "manifests" / "good"
BAD_CASES = sorted((AUDIT / "manifests" / "bad").glob("*.yaml"))
GOOD_SPEC = AUDIT / "specs" / "good.yaml"
BAD_SPECS = sorted(p for p in (AUDIT / "specs").glob("*.yaml") if p != GOOD_SPEC)

_HEADER = re.compile(r"^# (expect|scope|remove|raw): (.+?)\s*$", re.MULTILINE)


@dataclass
class Case:
    path: Path
    expect: list[tuple[str, str]] = field(default_factory=list)
    scope: str = "."
    remove: list[str] = field(default_factory=list)
    raw: str | None = None

    @property
    def id(self) -> str:
        return self.path.stem


def read_case(path: Path) -> Case:
    case = Case(path)
    for key, value in _HEADER.findall(path.read_text()):
        if key == "expect":
            check, severity = value.split()
            case.expect.append((check, severity))
        elif key == "scope":
            case.scope = value
        elif key == "remove":
            case.remove.append(value)
        else:
            case.raw = value
    assert case.expect, f"{path} expects nothing"
    return case


def key(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}"


def build_tree(case: Case, tmp: Path) -> Path:
    """The clean tree with the case applied, under ``tmp``."""
    tree = tmp / "tree"
    shutil.copytree(GOOD_TREE, tree)
    if case.raw is not None:
        (tree / case.raw).write_text(case.path.read_text())
        return tree
    added = [d for d in yaml.safe_load_all(case.path.read_text()) if d]
    drop = set(case.remove) | {key(d) for d in added}
    scope_dir = tree / case.scope
    for path in sorted(scope_dir.rglob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        kept = [d for d in docs if key(d) not in drop]
        if len(kept) != len(docs):
            path.write_text(yaml.safe_dump_all(kept, sort_keys=False))
    if added:
        (scope_dir / "zz-case.yaml").write_text(yaml.safe_dump_all(added, sort_keys=False))
    return tree
