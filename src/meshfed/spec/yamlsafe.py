"""YAML input, read safely: the one path by which meshfed reads a spec or manifests.

Every command that reads a spec (validate, render, pki, up, apply, audit, ...) or a tree of
manifests (audit) reads it here. Whatever the bytes, the result is the documents, each with the
line of every field, or :class:`InputError` naming file, line, field and fix; never a traceback,
and bounded time and memory:

* bytes must be UTF-8 (the line and column of the first bad byte are named);
* nesting deeper than :data:`MAX_DEPTH` is refused before anything recursive runs;
* aliases may reuse what an anchor names (``principals: *shop``), but an alias bomb is refused:
  aliases may add at most as many nodes as the text itself holds, plus
  :data:`ALIAS_ALLOWANCE` (a 510-byte document of nine levels of ten aliases would expand to a
  billion nodes); an alias to its own enclosing node is refused too;
* only YAML's plain tags are read (``!!str``, ``!!int``, ``!!map``, ...; timestamps and binary as
  YAML resolves them): ``!!python/object`` and every local tag are refused;
* a scalar YAML cannot turn into a value (an integer of more than 4,300 digits, a timestamp of
  month 13, a lone surrogate) is a problem of its field, as are keys that appear twice and keys
  that are not plain values;
* with ``plain_text`` (specs), strings may not hold control characters, bidirectional overrides
  or lone surrogates: names and identities are printed to terminals and logs.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from meshfed.spec.errors import Path_, format_path

__all__ = [
    "ALIAS_ALLOWANCE",
    "MAX_BYTES",
    "MAX_DEPTH",
    "Document",
    "InputError",
    "InputProblem",
    "LineMap",
    "decode",
    "line_for",
    "load_all",
    "load_one",
    "read_text",
]

MAX_BYTES: Final = 64 * 1024 * 1024
"""Largest file read (a spec of 10,000 principals is about 0.5 MB)."""
MAX_DEPTH: Final = 100
"""Deepest nesting of mappings and lists (a spec nests 7 deep, Kubernetes objects about 20)."""
ALIAS_ALLOWANCE: Final = 10_000
"""Nodes aliases may add beyond the document's own count."""

LineMap = dict[Path_, int]
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present

_STR: Final = "tag:yaml.org,2002:str"
_MAP: Final = "tag:yaml.org,2002:map"
_SEQ: Final = "tag:yaml.org,2002:seq"
_INT: Final = "tag:yaml.org,2002:int"
_MAX_DIGITS: Final = 100
_SCALAR_TAGS: Final = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "timestamp", "binary", "merge", "value")
)
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class InputProblem:
    """One reason the input cannot be read, located by line and field path."""

    line: int | None
    path: Path_
    message: str
    fix: str

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line is not None else file
        return f"{where}: {format_path(self.path)}: {self.message}. Fix: {self.fix}"


class InputError(Exception):
    """The file cannot be read as YAML meshfed accepts. ``lines``: one rendered problem each."""

    def __init__(self, file: str, problems: list[InputProblem]) -> None:
        self.file = file
        self.problems = problems
        self.lines = [p.render(file) for p in problems]
        super().__init__("\n".join(self.lines))


@dataclass(frozen=True)
class Document:
    """One YAML document: its value, the line it starts on, and the line of every field."""

    data: Any
    line: int
    lines: LineMap


def line_for(lines: Mapping[Path_, int], path: Path_) -> int | None:
    """The line of the deepest part of ``path`` that exists in the file."""
    for cut in range(len(path), -1, -1):
        found = lines.get(path[:cut])
        if found is not None:
            return found
    return None


def decode(raw: bytes, file: str) -> str:
    """UTF-8 text of ``raw`` (a BOM is dropped); InputError naming the first bad byte."""
    if len(raw) > MAX_BYTES:
        raise InputError(
            file,
            [
                InputProblem(
                    None,
                    (),
                    f"the file holds {len(raw):,} bytes, more than meshfed reads ({MAX_BYTES:,})",
                    "split it, or check that this is the file you meant",
                )
            ],
        )
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise InputError(
            file,
            [
                InputProblem(
                    line,
                    (),
                    f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {column} "
                    f"({exc.reason})",
                    "save the file as UTF-8",
                )
            ],
        ) from None


def read_text(path: Path) -> str:
    """The file's text; OSError if it cannot be read, InputError if it is not UTF-8."""
    with path.open("rb") as handle:
        raw = handle.read(MAX_BYTES + 1)
    return decode(raw, str(path))


# --- parsing ------------------------------------------------------------------------------------


def _yaml_problem(exc: yaml.YAMLError, what: str = "not valid YAML") -> InputProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    line = mark.line + 1 if mark is not None else None
    return InputProblem(line, (), f"{what}: {reason}", "correct the syntax")


def _check_depth(text: str) -> None:
    """Refuse deep nesting from the event stream, before any recursive composition."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise _Refused(
                    InputProblem(
                        mark.line + 1 if mark is not None else None,
                        (),
                        f"nesting deeper than {MAX_DEPTH} levels",
                        "flatten the document; no spec or manifest nests that deep",
                    )
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


class _Refused(Exception):
    def __init__(self, problem: InputProblem) -> None:
        self.problem = problem


def _expanded(root: yaml.Node) -> tuple[int, int, int]:
    """(distinct nodes, nodes once aliases are expanded, expanded depth) of a node graph.

    Iterative, memoized per node: a bomb is measured without being expanded. An alias to an
    enclosing node (a recursive structure) is refused.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            active.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            continue
        if key in size:
            continue
        if key in active:
            raise _Refused(
                InputProblem(
                    node.start_mark.line + 1,
                    (),
                    "an alias refers to a node that contains it (a recursive structure)",
                    "write the value out instead of the alias",
                )
            )
        active.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in active:
                raise _Refused(
                    InputProblem(
                        child.start_mark.line + 1,
                        (),
                        "an alias refers to a node that contains it (a recursive structure)",
                        "write the value out instead of the alias",
                    )
                )
            if id(child) not in size:
                stack.append((child, False))
    return len(size), size[id(root)], depth[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _text_problem(value: str) -> str | None:
    for char in value:
        if char in "\t\n\r":
            continue
        category = unicodedata.category(char)
        if category == "Cc":
            return f"holds the control character U+{ord(char):04X}"
        if char in _BIDI:
            return f"holds the invisible bidirectional control character U+{ord(char):04X}"
        if category == "Cs":
            return f"holds a lone surrogate U+{ord(char):04X} (not a character)"
    return None


def _surrogate_problem(value: str) -> str | None:
    for char in value:
        if "\ud800" <= char <= "\udfff":
            return f"holds a lone surrogate U+{ord(char):04X} (not a character)"
    return None


def _tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!", 1)


def _scalar_problem(node: yaml.ScalarNode, plain_text: bool) -> tuple[str, str] | None:
    if node.tag not in _SCALAR_TAGS:
        return (
            f"the tag {_tag(node.tag)} is not read (only YAML's plain types are)",
            "remove the tag and write the value itself",
        )
    check = _text_problem if plain_text else _surrogate_problem
    problem = check(str(node.value))
    if problem:
        return problem, "remove it (write only printable characters)"
    if node.tag == _STR:
        return None
    digits = sum(c.isdigit() for c in node.value)
    if node.tag == _INT and digits > _MAX_DIGITS:
        return (
            f"an integer of {digits:,} digits; no field takes a number that large",
            "write a number in the field's range",
        )
    try:
        yaml.constructor.SafeConstructor().construct_object(node)
    except Exception as exc:  # whatever PyYAML raises for this scalar (!!timestamp x: ...)
        shown = node.value if len(node.value) <= 40 else f"{node.value[:20]}...({len(node.value)})"
        return (
            f"{shown!r} cannot be read as {node.tag.rpartition(':')[2]}: {exc}",
            "write a value of the documented form (quote it to make it a string)",
        )
    return None


def _walk(root: yaml.Node, plain_text: bool) -> tuple[LineMap, list[InputProblem]]:
    """Line of every field path (aliases expanded: bounded by now), and per-node problems."""
    lines: LineMap = {}
    problems: list[InputProblem] = []
    reported: set[int] = set()

    def report(node: yaml.Node, path: Path_, message: str, fix: str) -> None:
        if id(node) not in reported:
            reported.add(id(node))
            problems.append(InputProblem(node.start_mark.line + 1, path, message, fix))

    stack: list[tuple[yaml.Node, Path_]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            found = _scalar_problem(node, plain_text)
            if found:
                report(node, path, *found)
        elif isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                report(node, path, f"the tag {_tag(node.tag)} is not read", "remove the tag")
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    report(
                        key_node,
                        path,
                        "a key is a list or mapping",
                        "use a plain name as the key",
                    )
                    continue
                key = str(key_node.value)
                child = (*path, key)
                found = _scalar_problem(key_node, plain_text)
                if found:
                    report(key_node, child, *found)
                if key in seen and key != "<<":
                    report(
                        key_node, child, f"key {key!r} appears twice", "keep one of the two entries"
                    )
                    continue
                seen.add(key)
                lines[child] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                report(node, path, f"the tag {_tag(node.tag)} is not read", "remove the tag")
            for index in range(len(node.value) - 1, -1, -1):
                stack.append((node.value[index], (*path, index)))
    problems.sort(key=lambda p: p.line or 0)
    return lines, problems


def _document(loader: Any, node: yaml.Node, plain_text: bool) -> Document:
    distinct, expanded, depth = _expanded(node)
    if depth > MAX_DEPTH:
        raise _Refused(
            InputProblem(
                node.start_mark.line + 1,
                (),
                f"aliases nest the document deeper than {MAX_DEPTH} levels",
                "write the values out instead of chaining aliases",
            )
        )
    if expanded - distinct > distinct + ALIAS_ALLOWANCE:
        raise _Refused(
            InputProblem(
                node.start_mark.line + 1,
                (),
                f"aliases would expand this document of {distinct:,} nodes to {expanded:,} "
                f"(at most {2 * distinct + ALIAS_ALLOWANCE:,} are read; an alias bomb?)",
                "write the values out, or use fewer aliases of large anchors",
            )
        )
    lines, problems = _walk(node, plain_text)
    if problems:
        raise _Many(problems)
    try:
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _Refused(_yaml_problem(exc, "cannot be read")) from None
    except Exception as exc:  # anything else PyYAML raises: still this document's problem
        raise _Refused(
            InputProblem(
                node.start_mark.line + 1, (), f"cannot be read: {exc}", "simplify the document"
            )
        ) from None
    return Document(data, node.start_mark.line + 1, lines)


class _Many(Exception):
    def __init__(self, problems: list[InputProblem]) -> None:
        self.problems = problems


def _documents(text: str, file: str, plain_text: bool) -> Iterator[Document]:
    try:
        _check_depth(text)
    except yaml.YAMLError as exc:
        raise InputError(file, [_yaml_problem(exc)]) from None
    except _Refused as refused:
        raise InputError(file, [refused.problem]) from None
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            yield _document(loader, node, plain_text)
    except yaml.YAMLError as exc:
        raise InputError(file, [_yaml_problem(exc)]) from None
    except _Refused as refused:
        raise InputError(file, [refused.problem]) from None
    except _Many as many:
        raise InputError(file, many.problems) from None
    finally:
        loader.dispose()


def load_all(text: str, file: str, *, plain_text: bool = False) -> list[Document]:
    """Every document of a YAML stream (empty ones too, as data None)."""
    return list(_documents(text, file, plain_text))


def load_one(text: str, file: str, *, plain_text: bool = True) -> Document | None:
    """The single document of ``text`` (None when it has none); InputError for several."""
    docs = list(_documents(text, file, plain_text))
    if len(docs) > 1:
        raise InputError(
            file,
            [
                InputProblem(
                    docs[1].line,
                    (),
                    f"the file holds {len(docs)} YAML documents; a spec is one",
                    "keep one document (remove the '---' and what follows)",
                )
            ],
        )
    return docs[0] if docs else None
