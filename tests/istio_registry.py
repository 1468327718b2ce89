"""Istio's CRD schemas from the npm registry: ``@kubernetes-models/istio`` (tests/npm/).

The package is generated from Istio's own ``crd-all.gen.yaml`` (its package.json names the Istio
release it was built from: :data:`ISTIO_RELEASE`). It carries, per kind and version,

* a validator compiled (ajv) from the CRD's ``openAPIV3Schema``: types, required fields, enums,
  patterns, formats, bounds, oneOf. It is JavaScript, so it runs in one long-lived ``node``
  process (``tests/npm/istio_validate.mjs``), stopped when the test session ends;
* TypeScript declarations of the same schema. The compiled validators do not reject unknown
  fields (the generator leaves objects open), so the field names every object may hold are read
  from the declarations here, and anything else is an unknown field, as the apiserver's
  structural-schema pruning with ``fieldValidation=Strict`` would say.

CEL rules (``x-kubernetes-validations``) are in no registry package; ``k8s_schema`` evaluates them
from the richer bundle in ``../shared/istio/`` where one is present.

``./dev setup`` (and ``./dev test``) install the package with the machine's npm into
``tests/npm/node_modules`` (git-ignored) from the committed lock file.
"""

from __future__ import annotations

import atexit
import functools
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "PACKAGE",
    "PACKAGE_DIR",
    "RegistryMissing",
    "cluster_crds",
    "istio_release",
    "kinds",
    "package_label",
    "registry_errors",
    "versions",
]

NPM_DIR: Final[Path] = Path(__file__).resolve().parent / "npm"
PACKAGE: Final[str] = "@kubernetes-models/istio"
PACKAGE_DIR: Final[Path] = NPM_DIR / "node_modules" / "@kubernetes-models" / "istio"
_SCRIPT: Final[Path] = NPM_DIR / "istio_validate.mjs"


class RegistryMissing(RuntimeError):
    """The npm package is not installed."""


def _require() -> Path:
    if not (PACKAGE_DIR / "package.json").is_file():
        raise RegistryMissing(
            f"{PACKAGE} is not installed in {PACKAGE_DIR.parent.parent}: run ./dev setup "
            "(it installs the test-only npm dependencies of tests/npm/ with the machine's npm)"
        )
    return PACKAGE_DIR


@functools.lru_cache(maxsize=1)
def _package_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((_require() / "package.json").read_text(encoding="utf-8"))
    return data


def istio_release() -> str:
    """The Istio release whose crd-all.gen.yaml the installed package was generated from."""
    for url in _package_json().get("crd-generate", {}).get("input", []):
        match = re.search(r"/istio/istio/([0-9.]+)/.*crd-all\.gen\.yaml$", str(url))
        if match:
            return match.group(1)
    return "unknown"


def package_label() -> str:
    return f"{PACKAGE} {_package_json().get('version')} (Istio {istio_release()} CRDs)"


# --------------------------------------------------------------------------------------
# Field names, from the TypeScript declarations
# --------------------------------------------------------------------------------------


@dataclass
class Shape:
    """What a value may hold: an object's fields, a map's values, a list's items."""

    props: dict[str, Shape] = field(default_factory=dict)
    index: Shape | None = None  # [key: string]: T
    item: Shape | None = None  # Array<T>
    is_object: bool = False
    open: bool = False  # any, or a field typed {}: x-kubernetes-preserve-unknown-fields
    empty: bool = False  # {}: in a union or intersection it adds no field (oneOf branches)

    def merge(self, other: Shape) -> Shape:
        """A union or intersection: a field of any member is known."""
        if self.empty:
            return other
        if other.empty:
            return self
        out = Shape(dict(self.props), self.index, self.item, self.is_object, self.open)
        for name, sub in other.props.items():
            out.props[name] = out.props[name].merge(sub) if name in out.props else sub
        if other.index is not None:
            out.index = other.index if out.index is None else out.index.merge(other.index)
        if other.item is not None:
            out.item = other.item if out.item is None else out.item.merge(other.item)
        out.is_object = out.is_object or other.is_object
        out.open = out.open or other.open
        return out


_TOKEN = re.compile(
    r'\s+|/\*.*?\*/|//[^\n]*|(?P<str>"(?:\\.|[^"\\])*")|(?P<word>[A-Za-z_$][\w$.]*)'
    r"|(?P<num>-?\d+(?:\.\d+)?)|(?P<punct>[{}<>\[\]();:?|&,=.*/!+-])",
    re.DOTALL,
)


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"cannot read the declarations at {text[pos : pos + 40]!r}")
        pos = match.end()
        if match.lastgroup is not None:
            out.append(match.group(match.lastgroup))
    return out


class _Parser:
    """The subset of TypeScript type syntax the generator writes."""

    def __init__(self, tokens: list[str], start: int) -> None:
        self.tokens = tokens
        self.pos = start

    def peek(self) -> str:
        return self.tokens[self.pos]

    def take(self, expected: str | None = None) -> str:
        token = self.tokens[self.pos]
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, found {token!r} (token {self.pos})")
        self.pos += 1
        return token

    def type_(self) -> Shape:
        if self.peek() == "|":
            self.take()
        shape = self.intersection()
        while self.peek() == "|":
            self.take()
            shape = shape.merge(self.intersection())
        return shape

    def intersection(self) -> Shape:
        shape = self.postfix()
        while self.peek() == "&":
            self.take()
            shape = shape.merge(self.postfix())
        return shape

    def postfix(self) -> Shape:
        shape = self.primary()
        while self.peek() == "[" and self.tokens[self.pos + 1] == "]":
            self.take()
            self.take()
            shape = Shape(item=shape)
        return shape

    def primary(self) -> Shape:
        token = self.take()
        if token == "{":
            return self.members()
        if token == "(":
            shape = self.type_()
            self.take(")")
            return shape
        if token == "Array":
            self.take("<")
            item = self.type_()
            self.take(">")
            return Shape(item=item)
        if token in ("any", "unknown", "object", "IObjectMeta"):
            return Shape(open=True)
        if token == "Exclude":  # Exclude<A, B>: a oneOf branch; its fields are A's
            self.take("<")
            shape = self.type_()
            self.take(",")
            self.type_()
            self.take(">")
            return shape
        if self.peek() == "<":
            raise ValueError(f"unexpected generic {token} (token {self.pos})")
        return Shape()  # string, number, boolean, null, a literal

    def members(self) -> Shape:
        shape = Shape(is_object=True)
        while self.peek() != "}":
            token = self.take()
            if token == "[":
                self.take()  # key
                self.take(":")
                self.take()  # string
                self.take("]")
                self.take(":")
                value = self.type_()
                shape.index = value if shape.index is None else shape.index.merge(value)
            else:
                name = json.loads(token) if token.startswith('"') else token
                if self.peek() == "?":
                    self.take()
                self.take(":")
                value = self.type_()
                if value.empty:  # a field typed {}: anything goes
                    value = Shape(open=True)
                shape.props[name] = value
            if self.peek() in (";", ","):
                self.take()
        self.take("}")
        if not shape.props and shape.index is None:
            shape.empty = True
        return shape


@functools.lru_cache(maxsize=64)
def _shape(group: str, version: str, kind: str) -> Shape | None:
    path = _require() / group / version / f"{kind}.d.ts"
    if not path.is_file():
        return None
    tokens = _tokens(path.read_text(encoding="utf-8"))
    for i in range(len(tokens) - 3):
        if tokens[i : i + 3] == ["export", "interface", f"I{kind}"] and tokens[i + 3] == "{":
            return _Parser(tokens, i + 4).members()
    raise ValueError(f"{path}: no interface I{kind}")


def _unknown_fields(
    value: Any, shape: Shape, path: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if shape.open:
        return
    if isinstance(value, dict) and (shape.is_object or shape.index is not None):
        for key, sub in value.items():
            if key in shape.props:
                yield from _unknown_fields(sub, shape.props[key], (*path, key))
            elif shape.index is not None:
                yield from _unknown_fields(sub, shape.index, (*path, key))
            else:
                yield (*path, key), f'unknown field "{key}"'
    elif isinstance(value, list) and shape.item is not None:
        for i, sub in enumerate(value):
            yield from _unknown_fields(sub, shape.item, (*path, i))


# --------------------------------------------------------------------------------------
# Kinds and versions the package serves
# --------------------------------------------------------------------------------------


def kinds(group: str) -> dict[str, list[str]]:
    """kind -> versions, for one API group (empty when the package has no such group)."""
    out: dict[str, list[str]] = {}
    base = _require() / group
    if not base.is_dir():
        return out
    for version_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for decl in version_dir.glob("*.d.ts"):
            if decl.name != "index.d.ts":
                out.setdefault(decl.name.removesuffix(".d.ts"), []).append(version_dir.name)
    return out


def versions(group: str, kind: str) -> list[str]:
    return sorted(kinds(group).get(kind, []))


# --------------------------------------------------------------------------------------
# The compiled validators, in one node process
# --------------------------------------------------------------------------------------


class _Node:
    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise RegistryMissing(
                f"node is not on PATH; the {PACKAGE} validators are JavaScript (install nodejs)"
            )
        _require()
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [node, str(_SCRIPT)],
            cwd=NPM_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        atexit.register(self.close)

    def ask(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{_SCRIPT.name} exited ({self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@functools.lru_cache(maxsize=1)
def _node() -> _Node:
    return _Node()


def _pointer(instance_path: str) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    for raw in instance_path.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(part) if part.isdigit() else part)
    return tuple(parts)


def _dig(value: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _problem(error: dict[str, Any], obj: dict[str, Any]) -> str:
    """An ajv error worded like the apiserver (and like the bundle's jsonschema check)."""
    keyword = error.get("keyword", "")
    params = error.get("params") or {}
    value = _dig(obj, _pointer(str(error.get("instancePath", ""))))
    if keyword == "required":
        return f"{params.get('missingProperty')!r} is a required property"
    if keyword == "enum":
        return f"{_short(value)} is not one of {params.get('allowedValues')}"
    if keyword == "type":
        return f"{_short(value)} is not of type {params.get('type')!r}"
    if keyword == "format":
        return f"Invalid value: {_short(value)}: not a valid {params.get('format')}"
    return f"Invalid value: {_short(value)}: {error.get('message')} ({keyword})"


def registry_errors(
    obj: dict[str, Any], group: str, version: str, kind: str
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(field path, problem) for ``obj`` by the registry package's schema of its kind.

    Paths are tuples; the empty-path entries ``("kind",)``/``("apiVersion",)`` say the package
    has no such kind or version. ``metadata`` is left to the ObjectMeta check.
    """
    served = kinds(group)
    if kind not in served:
        hint = (
            f"kinds served in {group}: {', '.join(sorted(served))}"
            if served
            else f"no Istio CRD defines group {group} (removed API?)"
        )
        yield ("kind",), f'no matches for kind "{kind}" in version "{group}/{version}" ({hint})'
        return
    if version not in served[kind]:
        yield (
            ("apiVersion",),
            f"version {version} of {kind}.{group} is not defined (removed?); served versions: "
            f"{', '.join(sorted(served[kind]))} ({package_label()})",
        )
        return
    body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    shape = _shape(group, version, kind)
    assert shape is not None
    yield from _unknown_fields(body, shape, ())
    answer = _node().ask({**body, "metadata": {"name": "x"}})
    if "errors" not in answer:
        raise RuntimeError(f"{_SCRIPT.name}: {answer}")
    for error in answer["errors"]:
        path = _pointer(str(error.get("instancePath", "")))
        if error.get("keyword") == "required" and error.get("params", {}).get(
            "missingProperty"
        ) in ("apiVersion", "kind"):
            continue
        yield path, _problem(error, body)


# --------------------------------------------------------------------------------------
# CRDs for a test apiserver
# --------------------------------------------------------------------------------------

_ISTIO_GROUPS: Final[tuple[str, ...]] = (
    "networking.istio.io",
    "security.istio.io",
    "telemetry.istio.io",
    "extensions.istio.io",
)


def _plural(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    return lower + "s"


def cluster_crds() -> list[dict[str, Any]]:
    """CustomResourceDefinitions registering every Istio kind and version the package serves.

    The package holds compiled validators, not the CRDs' openAPIV3Schema, so these CRDs keep
    unknown fields: an apiserver then checks everything but the Istio specs, which the tests
    check offline against the package (and the bundle, where present).
    """
    crds = []
    for group in _ISTIO_GROUPS:
        for kind, served in sorted(kinds(group).items()):
            ordered = sorted(served, key=lambda v: (v != "v1", v))
            crds.append(
                {
                    "apiVersion": "apiextensions.k8s.io/v1",
                    "kind": "CustomResourceDefinition",
                    "metadata": {"name": f"{_plural(kind)}.{group}"},
                    "spec": {
                        "group": group,
                        "names": {
                            "kind": kind,
                            "listKind": f"{kind}List",
                            "plural": _plural(kind),
                            "singular": kind.lower(),
                        },
                        "scope": "Namespaced",
                        "versions": [
                            {
                                "name": version,
                                "served": True,
                                "storage": version == ordered[0],
                                "schema": {
                                    "openAPIV3Schema": {
                                        "type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    }
                                },
                            }
                            for version in ordered
                        ],
                    },
                }
            )
    return crds
