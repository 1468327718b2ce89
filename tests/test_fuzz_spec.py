"""Property-based fuzzing of the spec input path: mutated bundled examples never escape as a
traceback, every rejection names file, line, field and fix, and every accepted spec survives
plan, both renderers (Istio, and the local Envoy translation) and ``pki init``.

A few hundred examples run in the default suite; ``MESHFED_FUZZ_EXAMPLES=10000 pytest
tests/test_fuzz_spec.py`` runs as many as asked (see bench/README.md for the last long run).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from local_helpers import TEST_ADMIN
from meshfed.audit import audit_spec
from meshfed.local.layout import allocate_layout
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.spec.yamlsafe import InputError, decode
from meshfed.workspace import workspace_for

from conftest import EXAMPLES

FILE = "fuzz.yaml"
EXAMPLE_TEXT = {name: (EXAMPLES / f"{name}.yaml").read_text() for name in ("bank", "partners")}
_FIELD = r'(?:[A-Za-z_$][\w$-]*|\.[A-Za-z_$][\w$-]*|\[\d+\]|\["(?:\\.|[^"\\])*"\])+'
PROBLEM = re.compile(
    rf"^{re.escape(FILE)}(:\d+)?: (?P<field>\(document\)|{_FIELD}): (?P<what>.+)"
    r"\. Fix: (?P<fix>.+)$",
    re.DOTALL,
)
EXAMPLES_TO_RUN = int(os.environ.get("MESHFED_FUZZ_EXAMPLES", "300"))

# --- values ---------------------------------------------------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9-]{0,70}", fullmatch=True)
_durations = st.from_regex(r"[0-9]{1,14}(\.[0-9]{1,4})?(ns|us|ms|s|m|h)", fullmatch=True)
_principals = st.from_regex(
    r"(ns/[a-z*]{0,6}/sa/[a-z*]{0,6}|\*|spiffe://[a-z.]{1,16}/ns/[a-z]{1,4}/sa/[a-z*]{1,4})",
    fullmatch=True,
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=40),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=20),
    st.text(min_size=60, max_size=400),
    _names,
    _durations,
    _principals,
    st.sampled_from(["HTTP", "TCP", "SharedRoot", "Federated", "ECDSA_P256", "*", "", "~"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, sub in value.items():
            found += _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            found += _paths(sub, (*prefix, index))
    return found


def _set(data: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


def _plausible(draw: st.DrawFn, original: Any) -> Any:
    """A value of the same kind as ``original``: such a spec is often still valid."""
    if isinstance(original, bool):
        return not original
    if isinstance(original, int):
        return draw(st.integers(1, 65535))
    if isinstance(original, str):
        return draw(
            st.one_of(
                _names,
                _principals,
                _durations,
                st.sampled_from(["HTTP", "TCP", "Federated", "RSA_2048", "GET", "/v1/*"]),
                st.just(original + "x"),
                st.just(original.upper()),
            )
        )
    if isinstance(original, list) and original:
        index = draw(st.integers(0, len(original) - 1))
        if draw(st.booleans()):
            return [*original, original[index]]
        return original[:index] + original[index + 1 :]
    if isinstance(original, dict) and original:
        key = draw(st.sampled_from(sorted(original)))
        return {k: v for k, v in original.items() if k != key}
    return original


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@st.composite
def _data_mutation(draw: st.DrawFn, text: str) -> bytes:
    """Change one field of the example: another type, size or text; drop it; add a stranger."""
    data = yaml.safe_load(text)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        action = draw(st.sampled_from(["replace", "plausible", "plausible", "delete", "add"]))
        if action == "plausible":
            data = _set(data, path, _plausible(draw, _get(data, path)))
        elif action == "delete" and path:
            data = _set(data, path, None, delete=True)
        elif action == "add":
            target = data
            for part in path:
                target = target[part]
            if isinstance(target, dict):
                target[draw(st.text(max_size=12))] = draw(_values)
            elif isinstance(target, list):
                target.append(draw(_values))
        else:
            data = _set(data, path, draw(_values))
    dumped = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    return dumped.encode("utf-8", "surrogatepass")


def _bomb(levels: int, width: int) -> str:
    lines = ['b0: &b0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        refs = ",".join([f"*b{level - 1}"] * width)
        lines.append(f"b{level}: &b{level} [{refs}]")
    return "\n".join(lines) + "\n"


def _replace_value(text: str, key: str, new: str) -> str:
    return re.sub(rf"(\b{key}: )[^\n]*", lambda m: m.group(1) + new, text, count=1)


@st.composite
def _text_mutation(draw: st.DrawFn, text: str) -> bytes:
    """Change the bytes: encodings, YAML features (tags, anchors, bombs), sizes, nesting."""
    lines = text.splitlines(keepends=True)
    op: str = draw(
        st.sampled_from(
            [
                "bytes",
                "control",
                "duplicate-line",
                "tag",
                "bomb",
                "anchor",
                "deep",
                "big-int",
                "big-duration",
                "truncate",
                "long-name",
            ]
        )
    )
    event(f"mutation: {op}")
    if op == "bytes":
        raw = text.encode()
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.binary(min_size=1, max_size=6)) + raw[at:]
    if op == "control":
        at = draw(st.integers(0, len(text)))
        char = draw(st.characters(codec=None, categories=["Cc", "Cf", "Cs", "Zl", "Zp"]))
        escaped = draw(st.booleans())
        insert = f'"\\u{ord(char):04x}"' if escaped and ord(char) < 0x10000 else char
        return (text[:at] + insert + text[at:]).encode("utf-8", "surrogatepass")
    if op == "duplicate-line":
        index = draw(st.integers(0, len(lines) - 1))
        lines.insert(index, lines[index])
        return "".join(lines).encode()
    if op == "tag":
        tag = draw(
            st.sampled_from(
                [
                    "!!python/object:os.system",
                    "!!python/name:os.system",
                    "!foo",
                    "!!binary",
                    "!!set",
                    "!!int",
                    "!!float",
                    "!!timestamp",
                    "!!str",
                    "!!omap",
                    "!!map",
                ]
            )
        )
        candidates = [i for i, line in enumerate(lines) if ": " in line]
        index = draw(st.sampled_from(candidates))
        lines[index] = lines[index].replace(": ", f": {tag} ", 1)
        return "".join(lines).encode()
    if op == "bomb":
        levels = draw(st.integers(2, 9))
        width = draw(st.integers(2, 10))
        return (text + _bomb(levels, width)).encode()
    if op == "anchor":
        # Reuse one principals list by alias elsewhere: legitimate YAML, must behave.
        first = text.find("principals: ")
        if first < 0:
            return text.encode()
        text = text[:first] + "principals: &p " + text[first + len("principals: ") :]
        second = text.find("principals: ", first + 20)
        if second >= 0:
            end = text.index("\n", second)
            text = text[:second] + "principals: *p" + text[end:]
        return text.encode()
    if op == "deep":
        depth = draw(st.integers(20, 1500))
        key = draw(st.sampled_from(["port", "address", "name", "workloadTTL", "principals"]))
        return _replace_value(text, key, "[" * depth + "]" * depth).encode()
    if op == "big-int":
        digits = draw(st.integers(1, 6000))
        key = draw(st.sampled_from(["port", "address", "name"]))
        return _replace_value(text, key, "9" * digits).encode()
    if op == "big-duration":
        digits = draw(st.integers(1, 500))
        key = draw(st.sampled_from(["workloadTTL", "rootTTL", "intermediateTTL"]))
        unit = draw(st.sampled_from(["h", "m", "s", "ms", "ns"]))
        return _replace_value(text, key, "9" * digits + unit).encode()
    if op == "long-name":
        size = draw(st.integers(20, 70))
        return _replace_value(text, "name", "a" * size).encode()
    at = draw(st.integers(0, len(text)))
    return text[:at].encode()


@st.composite
def mutated_spec(draw: st.DrawFn) -> bytes:
    text = EXAMPLE_TEXT[draw(st.sampled_from(sorted(EXAMPLE_TEXT)))]
    if draw(st.booleans()):
        event("mutation: a field's value, type or presence")
        return draw(_data_mutation(text))
    return draw(_text_mutation(text))


# --- the property -----------------------------------------------------------------------------


def _survives_everything(text: str) -> None:
    """validate; if accepted: pki init, plan, the Istio renderer and the Envoy translation."""
    fed = parse_spec(text, FILE)
    with tempfile.TemporaryDirectory(prefix="meshfed-fuzz-") as tmp:
        ws = workspace_for(Path(tmp) / FILE, fed, Path(tmp) / "state")  # pki init + plan
        assert len(ws.istio()) == len(fed.spec.meshes)
        layout, _ = allocate_layout(ws.plan, None, set(), TEST_ADMIN)
        assert ws.envoy(layout, Path(tmp) / "local")


def check_input(raw: bytes, run: Callable[[str], None] = _survives_everything) -> str:
    """'accepted' or 'rejected'; AssertionError if a rejection is not located and fixable."""
    try:
        run(decode(raw, FILE))
    except InputError as exc:
        lines = exc.lines
    except SpecError as exc:
        lines = exc.lines
    else:
        return "accepted"
    assert lines, "a rejection with no problem"
    for line in lines:
        assert PROBLEM.match(line), f"not file:line: field: problem. Fix: fix -> {line!r}"
    return "rejected"


@settings(
    max_examples=EXAMPLES_TO_RUN,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(mutated_spec())
def test_mutated_examples_never_crash(raw: bytes) -> None:
    event(f"outcome: {check_input(raw)}")


def test_the_unmutated_examples_are_accepted() -> None:
    for text in EXAMPLE_TEXT.values():
        assert check_input(text.encode()) == "accepted"


@settings(
    max_examples=max(50, EXAMPLES_TO_RUN // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(mutated_spec())
def test_audit_reads_mutated_examples(raw: bytes) -> None:
    """audit reads the same input: a report, or InputError (exit 2), never a traceback."""
    with tempfile.TemporaryDirectory(prefix="meshfed-fuzz-") as tmp:
        path = Path(tmp) / FILE
        path.write_bytes(raw)
        try:
            report = audit_spec(path, Path(tmp) / "state")
        except InputError as exc:
            assert all(line.startswith(f"{path}") for line in exc.lines), exc.lines
            event("audit: unreadable (exit 2)")
        else:
            assert report.results
            event("audit: report")
