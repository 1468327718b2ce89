"""Kubernetes/Istio objects read from a tree of YAML files, each with its file and lines.

A tree may hold several clusters (meshfed's ``render`` writes one directory per mesh). Objects are
grouped into *scopes*, one per cluster: the nearest directory holding a ``kustomization.yaml``,
else the first directory level under the root, else the root itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshfed.audit.model import Location
from meshfed.audit.yamlsrc import (
    FieldPath,
    LineMap,
    Obj,
    as_dict,
    as_list,
    as_str,
    dig,
    line_for,
    parse_documents,
)
from meshfed.spec import yamlsafe
from meshfed.spec.errors import format_path
from meshfed.spec.yamlsafe import InputError

YAML_SUFFIXES = (".yaml", ".yml")
KUSTOMIZATION = ("kustomization.yaml", "kustomization.yml", "Kustomization")


@dataclass(frozen=True)
class Doc:
    """One object, where it came from, and the line of each of its fields."""

    obj: Obj
    file: str
    """Path as shown in reports: relative to the audited root."""
    line: int | None
    scope: str
    lines: Mapping[FieldPath, int] = field(default_factory=dict, repr=False)
    disk_path: Path | None = None
    default_namespace: str = "default"

    @property
    def kind(self) -> str:
        return as_str(self.obj.get("kind")) or ""

    @property
    def api_version(self) -> str:
        return as_str(self.obj.get("apiVersion")) or ""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def name(self) -> str:
        return as_str(dig(self.obj, "metadata", "name")) or ""

    @property
    def namespace(self) -> str:
        return as_str(dig(self.obj, "metadata", "namespace")) or self.default_namespace

    @property
    def spec(self) -> Obj:
        return as_dict(self.obj.get("spec"))

    def get(self, *path: str | int) -> Any:
        return dig(self.obj, *path)

    def is_istio(self, kind: str) -> bool:
        return self.kind == kind and self.group.endswith("istio.io")

    def at(self, *path: str | int, detail: str | None = None) -> Location:
        """The location of a field of this object (its own line, or its nearest parent's)."""
        line = line_for(self.lines, path) if self.lines else self.line
        return Location(
            file=self.file,
            line=line,
            kind=self.kind or None,
            namespace=None if self.kind in ("Namespace", "") else self.namespace,
            name=self.name or None,
            detail=detail,
        )


@dataclass(frozen=True)
class LoadProblem:
    file: str
    line: int | None
    problem: str


@dataclass(frozen=True)
class Inventory:
    root: Path
    docs: tuple[Doc, ...]
    problems: tuple[LoadProblem, ...]
    files: tuple[Path, ...]
    """Every YAML file read (absolute)."""

    def scopes(self) -> dict[str, list[Doc]]:
        return group_by_scope(self.docs)


def group_by_scope(docs: Iterable[Doc]) -> dict[str, list[Doc]]:
    out: dict[str, list[Doc]] = {}
    for doc in docs:
        out.setdefault(doc.scope, []).append(doc)
    return out


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def yaml_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in YAML_SUFFIXES and p.is_file() and not _hidden(p.relative_to(root))
    )


def _scope_dir(root: Path, rel: Path) -> Path:
    parents = list(rel.parents)[:-1]  # relative parent directories, deepest first
    for parent in [*parents, Path(".")]:
        if any((root / parent / k).is_file() for k in KUSTOMIZATION):
            return parent
    if len(rel.parts) > 1:
        return Path(rel.parts[0])
    return Path(".")


def _kustomize_namespace(root: Path, scope: Path) -> str | None:
    for name in KUSTOMIZATION:
        path = root / scope / name
        if path.is_file():
            try:
                docs = parse_documents(yamlsafe.read_text(path), str(path))
            except (OSError, InputError):
                return None
            return as_str(as_dict(docs[0].data).get("namespace")) if docs else None
    return None


HELM_VALUE_KEYS = ("meshConfig", "pilot")
"""Top-level keys of the istiod chart's values that the audit reads (see ``audit/install.py``)."""


def _objects(data: Any) -> list[tuple[Obj, FieldPath]]:
    """Kubernetes objects of one document (``kind: List`` expanded), with their field path;
    a document of istiod Helm values (no ``kind``) is kept as it is."""
    if isinstance(data, dict) and "kind" not in data:
        helm = any(isinstance(data.get(k), dict) for k in HELM_VALUE_KEYS)
        return [(data, ())] if helm else []
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return []
    if data["kind"].endswith("List") and isinstance(data.get("items"), list):
        return [(item, ("items", i)) for i, item in enumerate(as_list(data["items"])) if item]
    return [(data, ())]


def docs_from_text(
    text: str,
    file: str,
    scope: str,
    disk_path: Path | None = None,
    default_namespace: str = "default",
) -> list[Doc]:
    """Objects of one YAML stream; InputError if it cannot be read."""
    docs = []
    for parsed in parse_documents(text, file):
        for obj, prefix in _objects(parsed.data):
            if not isinstance(obj, dict):
                continue
            lines: LineMap = {
                path[len(prefix) :]: line
                for path, line in parsed.lines.items()
                if path[: len(prefix)] == prefix
            }
            docs.append(
                Doc(
                    obj=obj,
                    file=file,
                    line=lines.get((), parsed.line),
                    scope=scope,
                    lines=lines,
                    disk_path=disk_path,
                    default_namespace=default_namespace,
                )
            )
    return docs


def _problem_text(problem: yamlsafe.InputProblem) -> str:
    field_path = format_path(problem.path) if problem.path else ""
    return f"{field_path + ': ' if field_path else ''}{problem.message} (fix: {problem.fix})"


def load_tree(root: Path) -> Inventory:
    """Every object in every ``.yaml``/``.yml`` file under ``root`` (hidden paths skipped)."""
    root = root.resolve()
    base = root.parent if root.is_file() else root
    docs: list[Doc] = []
    problems: list[LoadProblem] = []
    files = yaml_files(root)
    for path in files:
        rel = path.relative_to(base)
        if path.name in KUSTOMIZATION:
            continue
        scope = _scope_dir(base, rel)
        scope_name = scope.as_posix() if scope != Path(".") else "."
        namespace = _kustomize_namespace(base, scope) or "default"
        try:
            text = yamlsafe.read_text(path)
            docs += docs_from_text(text, rel.as_posix(), scope_name, path, namespace)
        except OSError as exc:
            problems.append(LoadProblem(rel.as_posix(), None, f"cannot be read ({exc})"))
        except InputError as exc:
            problems.extend(
                LoadProblem(rel.as_posix(), p.line, f"cannot be read: {_problem_text(p)}")
                for p in exc.problems
            )
    return Inventory(root, tuple(docs), tuple(problems), tuple(files))


def scope_name(scope: str, root: Path | None) -> str:
    """The cluster/mesh name a scope stands for: its directory's name."""
    if scope == "." and root is not None:
        return root.name
    return Path(scope).name
