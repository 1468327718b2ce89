"""Spec mode: the raw spec (valid or not), what meshfed renders from it, and its PKI state."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshfed.audit import AuditOptions, audit_spec
from meshfed.audit.model import Report, Severity
from meshfed.pki import PKIStore
from meshfed.plan.trust import trust_request
from meshfed.spec.load import load_spec
from test_audit_corpus import BAD_SPECS, GOOD_SPEC, read_case

PKI_CHECKS = {"certificate-rotation", "intermediate-name-constraints", "key-file-permissions"}
RENDERER_GAPS: set[str] = set()
"""Found in what meshfed renders for the clean spec: nothing. (A leaf with two URI SANs, one
allowed, passes an Istio ingress; on its HTTP exports the exported workload's guard refuses it,
and it has no TCP export, where ``istio-boundary-gaps`` would note it as info.)"""


def statuses(report: Report) -> dict[str, str]:
    return {r.info.id: r.status for r in report.results}


def test_clean_spec_without_state(tmp_path: Path) -> None:
    report = audit_spec(GOOD_SPEC, tmp_path / "no-state")
    assert {f.check for f in report.findings} == RENDERER_GAPS
    assert all(f.severity.rank <= Severity.MEDIUM.rank for f in report.findings)
    for check, status in statuses(report).items():
        if check not in RENDERER_GAPS:
            assert status == ("not assessed" if check in PKI_CHECKS else "pass"), check


def test_clean_spec_with_its_pki_passes_everything(tmp_path: Path) -> None:
    PKIStore(tmp_path).ensure(trust_request(load_spec(GOOD_SPEC)))
    report = audit_spec(GOOD_SPEC, tmp_path)
    assert {f.check for f in report.findings} == RENDERER_GAPS
    assert {s for c, s in statuses(report).items() if c not in RENDERER_GAPS} == {"pass"}


@pytest.mark.parametrize("path", BAD_SPECS, ids=[p.stem for p in BAD_SPECS])
def test_bad_spec_triggers_its_check(path: Path, tmp_path: Path) -> None:
    case = read_case(path)
    report = audit_spec(path, tmp_path)
    for check, severity in case.expect:
        assert any(
            f.check == check and f.severity == Severity(severity) for f in report.findings
        ), (check, severity, [(f.check, f.severity.value, f.message) for f in report.findings])
        assert statuses(report)[check] == "fail"


def test_invalid_spec_is_still_audited_and_points_at_lines(tmp_path: Path) -> None:
    path = next(p for p in BAD_SPECS if p.stem == "duplicate-trust-domain")
    report = audit_spec(path, tmp_path)
    dup = next(f for f in report.findings if f.check == "trust-domain-unique")
    lines = path.read_text().splitlines()
    assert dup.location.line is not None
    assert "trustDomain: cards.clean.example" in lines[dup.location.line - 1]
    assert dup.location.detail == "spec.meshes[1].trustDomain"
    invalid = next(f for f in report.findings if f.check == "input-valid")
    assert invalid.location.line == dup.location.line
    assert "already used" in invalid.message and invalid.fix
    # What meshfed would render cannot be assessed for a spec it refuses.
    assert statuses(report)["ingress-deny-by-default"] == "not assessed"


def test_spec_mode_audits_what_meshfed_renders(tmp_path: Path) -> None:
    report = audit_spec(GOOD_SPEC, tmp_path)
    for check in ("ingress-deny-by-default", "peer-authentication-strict", "gateway-tls"):
        assert statuses(report)[check] == "pass"


def test_loopback_ingress_is_a_finding_in_production_only(tmp_path: Path) -> None:
    bank = Path(__file__).resolve().parents[1] / "examples" / "bank.yaml"
    relaxed = audit_spec(bank, tmp_path)
    assert not [f for f in relaxed.findings if f.check == "boundary-private-address"]
    strict = audit_spec(bank, tmp_path, AuditOptions(now=datetime.now(UTC), production=True))
    hits = [f for f in strict.findings if f.check == "boundary-private-address"]
    assert len(hits) == 3 and {f.severity for f in hits} == {Severity.HIGH}
    assert all("127.0.0.1" in f.message for f in hits)
