"""A principal that matches no workload the consumer mesh declares (``ns/shop/sa/chekout``) is a
warning in ``validate`` and a finding in ``audit``; ``--strict`` makes both fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from meshfed.cli.main import main
from meshfed.spec.lint import warn_federation
from meshfed.spec.load import parse_spec

from conftest import EXAMPLES

BANK = (EXAMPLES / "bank.yaml").read_text()
FIRST = "principals: [ns/shop/sa/checkout]"


def _with_principal(principal: str) -> str:
    assert FIRST in BANK
    return BANK.replace(FIRST, f"principals: [{principal!r}]", 1)


def _warnings(text: str) -> list[str]:
    found: list[str] = []
    parse_spec(text, "spec.yaml", warnings=found)
    return found


@pytest.mark.parametrize(
    "principal",
    [
        "ns/shop/sa/checkout",
        "spiffe://web.bank.example/ns/shop/sa/checkout",
        "ns/shop/sa/check*",
        "ns/shop/*",
        "ns/*",
        "*",
    ],
)
def test_principals_that_match_a_declared_workload_are_quiet(principal: str) -> None:
    assert _warnings(_with_principal(principal)) == []


@pytest.mark.parametrize(
    ("principal", "suggestion"),
    [
        ("ns/shop/sa/chekout", "did you mean 'ns/shop/sa/checkout'?"),
        ("spiffe://web.bank.example/ns/shop/sa/chekout", "did you mean 'ns/shop/sa/checkout'?"),
        ("ns/shpo/*", ""),
        ("ns/shop/sa/x*", ""),
    ],
)
def test_a_principal_matching_no_declared_workload_warns(principal: str, suggestion: str) -> None:
    (warning,) = _warnings(_with_principal(principal))
    assert warning.startswith(
        "spec.yaml:47: warning: spec.exports[0].consumers[0].principals[0]: "
    ), warning
    assert f"{principal!r} matches no workload mesh 'web' declares" in warning
    assert "ns/shop/sa/catalog, ns/shop/sa/checkout" in warning
    assert suggestion in warning


def test_meshes_whose_workloads_are_discovered_are_not_judged() -> None:
    lines = _with_principal("ns/shop/sa/chekout").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "- name: web" in line)
    workloads = next(i for i in range(start, len(lines)) if "workloads:" in lines[i])
    del lines[workloads : workloads + 3]  # web: kubernetes context set, workloads omitted
    text = "".join(lines)
    fed = parse_spec(text, "spec.yaml", discovery_pending=True)
    assert fed.mesh("web").workloads_omitted
    assert warn_federation(fed) == []


def test_validate_warns_and_strict_fails(tmp_path: Path) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text(_with_principal("ns/shop/sa/chekout"))
    result = CliRunner().invoke(main, ["validate", str(spec)])
    assert result.exit_code == 0
    assert f"{spec}:47: warning: spec.exports[0]" in result.output
    assert "did you mean 'ns/shop/sa/checkout'?" in result.output
    strict = CliRunner().invoke(main, ["validate", "--strict", str(spec)])
    assert strict.exit_code == 1
    assert "1 warning(s); --strict makes them fatal" in strict.output
    good = CliRunner().invoke(main, ["validate", "--strict", str(EXAMPLES / "bank.yaml")])
    assert good.exit_code == 0, good.output


def test_audit_reports_the_typo_and_strict_fails(tmp_path: Path) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text(_with_principal("ns/shop/sa/chekout"))
    state = ["--state", str(tmp_path / "state")]
    report = CliRunner().invoke(main, ["audit", str(spec), *state, "--format", "json"])
    assert "'ns/shop/sa/chekout' matches no workload mesh 'web' declares" in report.output
    lenient = ["audit", str(spec), *state, "--fail-on", "critical"]
    assert CliRunner().invoke(main, lenient).exit_code == 0
    strict = CliRunner().invoke(main, [*lenient, "--strict"])
    assert strict.exit_code == 1
    assert f"{spec}:47: warning:" in strict.output
    bank = ["audit", str(EXAMPLES / "bank.yaml"), *state, "--fail-on", "critical", "--strict"]
    assert CliRunner().invoke(main, bank).exit_code == 0
