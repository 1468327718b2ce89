"""meshfed's own output, audited: the bundled examples have no finding at or above high."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meshfed.audit import AuditOptions, audit_manifests, audit_spec
from meshfed.audit.model import Report, Severity

from conftest import EXAMPLES, Rendered

KNOWN_MEDIUM: set[str] = {"istio-boundary-gaps"}
"""Accepted findings on the examples: what Istio cannot refuse (a leaf with two URI SANs, one
allowed, on a TCP export: info; on HTTP exports the exported workload's guard refuses it)."""


@pytest.fixture(params=["bank_rendered", "partners_rendered"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    value: Rendered = request.getfixturevalue(request.param)
    return value


def summary(report: Report) -> list[tuple[str, str, str]]:
    return [(f.severity.value, f.check, f.message) for f in report.findings]


def test_rendered_output_has_no_high_finding(rendered: Rendered) -> None:
    report = audit_manifests(rendered.out)
    assert report.at_or_above(Severity.HIGH) == [], summary(report)
    assert {f.check for f in report.findings} <= KNOWN_MEDIUM, summary(report)
    by_id = {r.info.id: r for r in report.results}
    # Everything is assessed on meshfed's output, failover across the meshes of the tree too.
    for check in by_id:
        if check not in KNOWN_MEDIUM:
            assert by_id[check].status == "pass", (check, by_id[check].note)


def test_spec_and_state_have_no_high_finding(rendered: Rendered) -> None:
    ws = rendered.workspace
    report = audit_spec(ws.spec_path, ws.state_dir)
    assert report.at_or_above(Severity.HIGH) == [], summary(report)
    assert {f.check for f in report.findings} <= KNOWN_MEDIUM, summary(report)
    for result in report.results:
        if result.info.id not in KNOWN_MEDIUM:
            assert result.status == "pass", (result.info.id, result.note)


def test_examples_use_loopback_ingresses(rendered: Rendered) -> None:
    """The examples are local setups: --production flags every loopback ingress address."""
    options = AuditOptions(now=datetime.now(UTC), production=True)
    report = audit_manifests(rendered.out, options)
    hits = [f for f in report.findings if f.check == "boundary-private-address"]
    assert hits and all(f.severity == Severity.HIGH and "127.0.0.1" in f.message for f in hits)
    assert EXAMPLES.is_dir()
