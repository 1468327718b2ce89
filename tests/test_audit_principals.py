"""How broad an allowed principal is: Istio's patterns as Istio matches them, a spec's as its
plan resolves them."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.audit import audit_spec
from meshfed.audit.checks.principals import classify
from meshfed.audit.model import Severity
from test_audit_corpus import BAD_SPECS


@pytest.mark.parametrize(
    ("principal", "severity"),
    [
        ("*", Severity.CRITICAL),
        ("*/ns/web/sa/checkout", Severity.HIGH),
        # Istio matches ``spiffe://`` + the text as a prefix: short of the domain's '/', it
        # reaches every trust domain that starts the same way.
        ("cluster.local*", Severity.HIGH),
        ("clus*", Severity.HIGH),
        ("cluster.local/*", Severity.MEDIUM),
        ("cluster.local/ns/*", Severity.MEDIUM),
        # ``n*`` reaches every namespace as surely as ``ns/*`` does.
        ("cluster.local/n*", Severity.MEDIUM),
        ("cluster.local/ns/web/*", Severity.LOW),
        ("cluster.local/ns/web/sa/check*", Severity.LOW),
        ("cluster.local/ns/web/sa/checkout", None),
    ],
)
def test_istio_principal_breadth(principal: str, severity: Severity | None) -> None:
    found = classify(principal)
    assert (found[0] if found else None) == severity


def test_a_valid_specs_principals_are_judged_as_planned(tmp_path: Path) -> None:
    (case,) = [p for p in BAD_SPECS if p.stem == "whole-trust-domain"]
    report = audit_spec(case, tmp_path / "none")
    hits = [f for f in report.findings if f.check == "authz-principals"]
    assert hits and all(f.severity == Severity.MEDIUM for f in hits)
    assert all("every workload of the consumer mesh" in f.message for f in hits)
    assert all(f.location.detail and ".principals[" in f.location.detail for f in hits)
