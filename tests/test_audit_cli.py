"""``meshfed audit`` on the command line: formats, SARIF structure, exit codes for CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from meshfed.audit.report import FORMATS
from meshfed.audit.run import all_checks
from meshfed.cli.audit import register
from test_audit_corpus import BAD_CASES, BAD_SPECS, GOOD_SPEC, GOOD_TREE, build_tree, read_case


@click.group()
def cli() -> None:
    """The audit commands on their own group (meshfed's main group gets them via register)."""


register(cli)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def spec(stem: str) -> str:
    return str(next(p for p in BAD_SPECS if p.stem == stem))


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ((str(GOOD_SPEC),), 0),
        # meshfed's own rendering of an HTTP-only spec: nothing at all (the workload guard
        # refuses what Istio's gateway cannot, a leaf with two URI SANs)
        ((str(GOOD_SPEC), "--fail-on", "medium"), 0),
        ((str(GOOD_SPEC), "--fail-on", "info"), 0),
        ((spec("duplicate-trust-domain"),), 1),
        ((spec("duplicate-trust-domain"), "--fail-on", "critical"), 1),
        ((spec("failover-unauthorised"), "--fail-on", "critical"), 0),
        ((spec("prefix-principal"),), 0),
        ((spec("prefix-principal"), "--fail-on", "low"), 1),
        (("--manifests", str(GOOD_TREE)), 0),
        (("--manifests", str(GOOD_TREE), "--fail-on", "low"), 0),
        (("--manifests", str(GOOD_TREE), "--fail-on", "info"), 1),  # its TCP export's note
        (("--manifests", str(GOOD_TREE / "beta"), "--fail-on", "info"), 1),  # an info note
    ],
)
def test_exit_code_follows_fail_on(args: tuple[str, ...], code: int, tmp_path: Path) -> None:
    extra = ("--state", str(tmp_path)) if not args[0].startswith("--") else ()
    result = run("audit", *args, *extra, "--format", "json")
    assert result.exit_code == code, result.output


def test_bad_manifests_fail_the_build(tmp_path: Path) -> None:
    case = read_case(next(p for p in BAD_CASES if p.stem == "deny-by-default-missing"))
    result = run("audit", "--manifests", str(build_tree(case, tmp_path)))
    assert result.exit_code == 1
    assert "ingress-deny-by-default" in result.output and "critical" in result.output


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_renders(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / f"report.{fmt}"
    result = run(
        "audit",
        spec("failover-unauthorised"),
        "--state",
        str(tmp_path),
        "--format",
        fmt,
        "-o",
        str(out),
    )
    assert result.exit_code == 1
    text = out.read_text()
    assert "import-failover-authorised" in text
    assert "SC-7" in text
    if fmt in ("json", "sarif"):
        json.loads(text)
    if fmt == "html":
        assert text.startswith("<!DOCTYPE html>") and "</html>" in text
        assert "Controls" in text
    if fmt == "markdown":
        assert "## Controls" in text and "## Findings" in text
    if fmt == "table":
        assert "Controls" in text and "Result:" in text
    assert "finding(s)" in result.stderr


def test_json_controls_summary(tmp_path: Path) -> None:
    result = run("audit", spec("whole-trust-domain"), "--state", str(tmp_path), "--format", "json")
    doc = json.loads(result.stdout)
    controls = {c["id"]: c for c in doc["controls"]}
    assert controls["AC-6"]["status"] == "fail"
    assert "authz-principals" in controls["AC-6"]["failed"]
    assert controls["SC-7(5)"]["status"] == "pass"  # meshfed renders REGISTRY_ONLY
    assert controls["AC-6"]["not_assessed"] == ["key-file-permissions"]
    assert controls["SC-7(16)"]["status"] == "pass"
    assert controls["PCI 10.2.1"]["status"] == "pass"
    assert controls["PCI 10.2.1"]["passed"] == [
        "gateway-access-logging",
        "gateway-handshake-logging",
    ]
    assert controls["SC-12"]["status"] == "not assessed"  # no PKI state in tmp_path
    # passing checks, and one (from the PKI state) that could not be assessed
    assert controls["SC-7(21)"]["status"] == "partial"
    assert controls["SC-7(21)"]["not_assessed"] == ["intermediate-name-constraints"]
    finding = next(f for f in doc["findings"] if f["check"] == "authz-principals")
    assert finding["severity"] == "medium"
    assert finding["location"]["line"] > 0 and finding["location"]["file"].endswith(".yaml")
    assert finding["why"] and finding["fix"] and "AC-6" in finding["controls"]


def sarif(*args: str) -> dict[str, Any]:
    result = run("audit", *args, "--format", "sarif")
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_sarif_structure(tmp_path: Path) -> None:
    case = read_case(next(p for p in BAD_CASES if p.stem == "principals-star"))
    doc = sarif("--manifests", str(build_tree(case, tmp_path)))
    assert doc["version"] == "2.1.0" and doc["$schema"].endswith("sarif-2.1.0.json")
    (run_,) = doc["runs"]
    driver = run_["tool"]["driver"]
    assert driver["name"] == "meshfed-audit" and driver["version"]
    ids = [r["id"] for r in driver["rules"]]
    assert sorted(ids) == sorted(c.info.id for c in all_checks())
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
        assert float(rule["properties"]["security-severity"]) >= 0
    assert run_["results"]
    for result in run_["results"]:
        assert result["ruleId"] in ids
        assert ids[result["ruleIndex"]] == result["ruleId"]
        assert result["level"] in ("none", "note", "warning", "error")
        assert result["message"]["text"]
        for location in result.get("locations", []):
            physical = location["physicalLocation"]
            assert physical["artifactLocation"]["uri"]
            assert physical["artifactLocation"]["uriBaseId"] in run_["originalUriBaseIds"]
            assert physical["region"]["startLine"] >= 1
    star = next(r for r in run_["results"] if r["ruleId"] == "authz-principals")
    assert star["level"] == "error"
    physical = star["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"]["uri"] == "alpha/zz-case.yaml"
    base = run_["originalUriBaseIds"][physical["artifactLocation"]["uriBaseId"]]["uri"]
    assert base.startswith("file://") and base.endswith("/tree/")


def test_sarif_spec_mode_points_into_the_spec(tmp_path: Path) -> None:
    doc = sarif(spec("private-ingress"), "--state", str(tmp_path))
    result = next(r for r in doc["runs"][0]["results"] if r["ruleId"] == "boundary-private-address")
    physical = result["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"]["uri"].endswith("private-ingress.yaml")
    assert physical["region"]["startLine"] >= 1
    assert result["level"] == "warning"


@pytest.mark.parametrize(
    "args",
    [
        (),
        (str(GOOD_SPEC), "--manifests", str(GOOD_TREE)),
        ("--manifests", str(GOOD_TREE), "--state", "x"),
        (str(GOOD_SPEC), "--window", "three weeks"),
        (str(GOOD_SPEC), "--fail-on", "severe"),
    ],
)
def test_usage_errors(args: tuple[str, ...]) -> None:
    assert run("audit", *args).exit_code == 2


def test_unreadable_spec(tmp_path: Path) -> None:
    result = run("audit", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2
    assert "cannot read the spec" in result.stderr
