"""Hostile and odd input: every class a fuzzer found is a located spec error, found by
``validate``, refused the same way by every command that reads a spec (render, pki init, audit),
and nothing accepted crashes later."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from meshfed.audit import audit_manifests
from meshfed.cli.main import main
from meshfed.pki.certs import anchor_name, intermediate_name
from meshfed.spec.check import MAX_FEDERATION_NAME, MAX_MESH_NAME
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.spec.yamlsafe import ALIAS_ALLOWANCE, InputError, load_all

from conftest import EXAMPLES

BANK = (EXAMPLES / "bank.yaml").read_text()


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """The classic 'billion laughs': ``levels`` lists of ``width`` aliases of the one before."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        refs = ",".join([f"*{chr(96 + level)}"] * width)
        lines.append(f"{chr(97 + level)}: &{chr(97 + level)} [{refs}]")
    return "\n".join(lines) + "\n"


def _swap(old: str, new: str) -> Callable[[], bytes]:
    def make() -> bytes:
        assert old in BANK, old
        return BANK.replace(old, new, 1).encode()

    return make


# name -> (the file's bytes, line, field, a fragment of the problem)
CASES: dict[str, tuple[Callable[[], bytes], int | None, str, str]] = {
    "non-utf8": (lambda: b"# \x80\n", 1, "(document)", "not UTF-8 text: byte 0x80 at column 3"),
    "alias-bomb": (lambda: alias_bomb().encode(), 1, "(document)", "an alias bomb"),
    "recursive-alias": (lambda: b"a: &a [*a]\n", 1, "(document)", "recursive structure"),
    "deep-nesting": (
        lambda: b"a: " + b"[" * 1000 + b"]" * 1000 + b"\n",
        1,
        "(document)",
        "nesting",
    ),
    "python-tag": (
        _swap("kind: Federation", "kind: !!python/object:os.system Federation"),
        5,
        "kind",
        "the tag !!python/object:os.system is not read",
    ),
    "local-tag": (
        _swap("kind: Federation", "kind: !shell Federation"),
        5,
        "kind",
        "the tag !shell is not read",
    ),
    "huge-integer": (
        _swap("port: 15443", "port: " + "9" * 5000),
        19,
        "spec.meshes[0].ingress.port",
        "an integer of 5,000 digits",
    ),
    "bad-timestamp": (
        _swap("port: 15443", "port: 2026-13-45"),
        19,
        "spec.meshes[0].ingress.port",
        "cannot be read as timestamp",
    ),
    "huge-duration": (
        _swap("workloadTTL: 24h", "workloadTTL: " + "9" * 400 + "h"),
        14,
        "spec.trust.workloadTTL",
        "is not a duration",
    ),
    "duplicate-key": (
        _swap("kind: Federation", "kind: Federation\nkind: Federation"),
        6,
        "kind",
        "key 'kind' appears twice",
    ),
    "control-character": (
        _swap("name: bank", 'name: "ba\\x1bnk"'),
        7,
        "metadata.name",
        "control character U+001B",
    ),
    "bidi-override": (
        _swap("[ns/shop/sa/checkout]", '["ns/shop/sa/\\u202echeckout"]'),
        47,
        "spec.exports[0].consumers[0].principals[0]",
        "bidirectional control character U+202E",
    ),
    "zero-intermediate-ttl": (
        _swap("intermediateTTL: 8760h", "intermediateTTL: 0s"),
        13,
        "spec.trust.intermediateTTL",
        "shorter than 10s",
    ),
    "nanosecond-workload-ttl": (
        _swap("workloadTTL: 24h", "workloadTTL: 1ns"),
        14,
        "spec.trust.workloadTTL",
        "shorter than 10s",
    ),
    "root-ttl-past-year-9999": (
        _swap("rootTTL: 87600h", "rootTTL: 999999999h"),
        12,
        "spec.trust.rootTTL",
        "longer than 100 years",
    ),
    "63-character-mesh-name": (
        lambda: re.sub(r"\bpayments\b(?!-)", "p" * 63, BANK).encode(),
        16,
        "spec.meshes[0].name",
        "the mesh name has 63 characters",
    ),
    "63-character-federation-name": (
        _swap("name: bank\n", f"name: {'b' * 63}\n"),
        7,
        "metadata.name",
        "the federation name has 63 characters",
    ),
}


def _write(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(CASES[case][0]())
    return path


def _expected_line(path: Path, case: str) -> str:
    _, line, field, _ = CASES[case]
    return f"{path}:{line}: {field}: " if line is not None else f"{path}: {field}: "


def _no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_names_file_line_field_and_fix(case: str, tmp_path: Path) -> None:
    path = _write(tmp_path, case)
    result = CliRunner().invoke(main, ["validate", str(path)])
    _no_traceback(result)
    assert result.exit_code == 1, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(_expected_line(path, case)), first
    assert CASES[case][3] in first, first
    assert ". Fix: " in first, first


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["render", "pki init"])
def test_writers_refuse_the_same_and_write_nothing(
    case: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, case)
    monkeypatch.chdir(tmp_path)
    args = [*command.split(), str(path), "--state", str(tmp_path / "state")]
    if command == "render":
        args += ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    _no_traceback(result)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(_expected_line(path, case)), result.output
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".meshfed").exists()


UNREADABLE = ["non-utf8", "alias-bomb", "recursive-alias", "deep-nesting", "python-tag"]


@pytest.mark.parametrize("case", UNREADABLE)
def test_audit_of_an_unreadable_spec_exits_2(case: str, tmp_path: Path) -> None:
    path = _write(tmp_path, case)
    result = CliRunner().invoke(main, ["audit", str(path)])
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    assert _expected_line(path, case) in result.output


@pytest.mark.parametrize("case", [*UNREADABLE, "huge-integer", "duplicate-key"])
def test_audit_manifests_reports_unreadable_files_and_goes_on(case: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "bad.yaml").write_bytes(CASES[case][0]())
    (tree / "good.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n", encoding="utf-8"
    )
    report = audit_manifests(tree)
    texts = [f.message for r in report.results for f in r.findings if f.check == "input-valid"]
    assert any(t.startswith("bad.yaml cannot be read") for t in texts), texts
    result = CliRunner().invoke(main, ["audit", "--manifests", str(tree)])
    _no_traceback(result)
    assert result.exit_code == 1


def test_alias_bomb_is_refused_in_bounded_memory() -> None:
    text = alias_bomb()
    assert len(text.encode()) <= 520  # the issue's 510-byte, nine-level bomb
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="alias bomb"):
            load_all(text, "bomb.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024, peak


def test_aliases_within_the_allowance_are_read() -> None:
    spec = BANK.replace(
        "principals: [ns/shop/sa/checkout]", "principals: &p [ns/shop/sa/checkout]", 1
    )
    spec = spec.replace(
        "principals: [spiffe://web.bank.example/ns/shop/sa/checkout]", "principals: *p"
    )
    fed = parse_spec(spec, "aliases.yaml")
    assert fed.spec.exports[1].consumers[0].principals == ["ns/shop/sa/checkout"]
    # A large anchor used once more doubles the document: still read.
    items = ",".join(f'"x{i}"' for i in range(ALIAS_ALLOWANCE))
    (doc,) = load_all(f"a: &a [{items}]\nb: *a\n", "big.yaml")
    assert len(doc.data["b"]) == ALIAS_ALLOWANCE


def test_several_documents_in_a_spec_are_refused() -> None:
    with pytest.raises(SpecError, match="holds 2 YAML documents"):
        parse_spec(BANK + "---\na: 1\n", "two.yaml")


def test_common_name_limits_match_the_names_meshfed_issues() -> None:
    generation = "20260301T120000Z"  # pki/rotation.py and pki/signing.py stamp this form
    mesh, federation = "m" * MAX_MESH_NAME, "f" * MAX_FEDERATION_NAME
    longest = [
        intermediate_name(mesh, generation),
        anchor_name(mesh),
        f"{mesh} root CA {generation}",  # Federated: one root per mesh
        f"{federation} root CA {generation}",  # SharedRoot
    ]
    assert max(len(n) for n in longest) == 64
    assert len(intermediate_name(mesh + "m", generation)) == 65
    assert len(f"{federation}f root CA {generation}") == 65
