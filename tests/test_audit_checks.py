"""Every check against the manifest corpus: the clean tree passes, each bad case triggers."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.audit import audit_manifests
from meshfed.audit.model import Report, Severity
from meshfed.audit.run import all_checks
from test_audit_corpus import BAD_CASES, GOOD_TREE, build_tree, read_case

GENERATED = {"certificate-rotation", "intermediate-name-constraints", "key-file-permissions"}
"""Checks whose cases are generated in tests/test_audit_certs.py (certificates, file modes)."""


def status(report: Report, check: str) -> str:
    return next(r.status for r in report.results if r.info.id == check)


ALWAYS_NOTED = {"istio-boundary-gaps"}
"""Checks that name what no setting fixes (info): a clean tree gets their notes too."""


def test_clean_tree_passes_every_check() -> None:
    report = audit_manifests(GOOD_TREE)
    notes = [f for f in report.findings if f.check in ALWAYS_NOTED]
    assert [f for f in report.findings if f not in notes] == []
    # The one TCP export of the clean tree: two URI SANs cannot be refused there on Istio.
    assert [(f.severity, f.location.name) for f in notes] == [(Severity.INFO, "fed-ingress")]
    for result in report.results:
        expected = "not assessed" if result.info.id in GENERATED else "pass"
        assert result.status == expected, (result.info.id, result.note)


@pytest.mark.parametrize("path", BAD_CASES, ids=[p.stem for p in BAD_CASES])
def test_bad_case_triggers_its_check(path: Path, tmp_path: Path) -> None:
    case = read_case(path)
    report = audit_manifests(build_tree(case, tmp_path))
    for check, severity in case.expect:
        hits = [f for f in report.findings if f.check == check]
        assert any(f.severity == Severity(severity) for f in hits), (
            check,
            severity,
            [(f.check, f.severity.value, f.message) for f in report.findings],
        )
        assert status(report, check) == "fail"
        for f in hits:
            assert f.why and f.fix and f.message
            assert f.location.file is not None


def test_findings_point_at_file_and_line(tmp_path: Path) -> None:
    case = read_case(next(p for p in BAD_CASES if p.stem == "principals-star"))
    report = audit_manifests(build_tree(case, tmp_path))
    (finding,) = [f for f in report.findings if f.check == "authz-principals"]
    loc = finding.location
    assert (loc.kind, loc.namespace, loc.name) == ("AuthorizationPolicy", "federation", "allow-api")
    assert loc.file == "alpha/zz-case.yaml"
    lines = (tmp_path / "tree" / "alpha" / "zz-case.yaml").read_text().splitlines()
    assert loc.line is not None and "'*'" in lines[loc.line - 1]


def test_remote_side_missing_is_noted_not_failed() -> None:
    report = audit_manifests(GOOD_TREE / "beta")
    result = next(r for r in report.results if r.info.id == "import-failover-authorised")
    assert result.status == "not assessed"
    assert [f.severity for f in result.findings] == [Severity.INFO]
    assert "cannot be checked" in result.findings[0].message


def test_registry_is_consistent() -> None:
    checks = all_checks()
    assert len({c.info.id for c in checks}) == len(checks) >= 14
    for c in checks:
        assert c.info.controls, c.info.id
        assert c.info.why and c.info.fix and c.info.title


def _triggering_cases() -> dict[str, list[str]]:
    from test_audit_certs import CASES
    from test_audit_corpus import BAD_SPECS

    found: dict[str, list[str]] = {}
    for path in [*BAD_CASES, *BAD_SPECS]:
        for check, _ in read_case(path).expect:
            found.setdefault(check, []).append(path.stem)
    for name, _, check, _ in CASES:
        found.setdefault(check, []).append(name)
    found.setdefault("key-file-permissions", []).append("test_readable_secret_files")
    return found


@pytest.mark.parametrize("check", sorted(c.info.id for c in all_checks()))
def test_every_check_has_a_triggering_case(check: str) -> None:
    """The passing side: test_clean_tree_passes_every_check, test_fresh_material_passes."""
    assert _triggering_cases().get(check), f"no corpus case triggers {check}"
