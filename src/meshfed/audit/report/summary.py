"""Per control: which checks evidence it, and whether they pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meshfed.audit.controls import Control, control, sort_key
from meshfed.audit.model import CheckResult, Report

ControlStatus = Literal["pass", "partial", "fail", "not assessed"]
"""partial: every check that ran passed, but some could not be assessed."""


@dataclass(frozen=True)
class ControlSummary:
    control: Control
    status: ControlStatus
    passed: tuple[str, ...]
    failed: tuple[str, ...]
    not_assessed: tuple[str, ...]


def controls_summary(report: Report) -> list[ControlSummary]:
    by_control: dict[str, list[CheckResult]] = {}
    for result in report.results:
        for c in result.info.controls:
            by_control.setdefault(c, []).append(result)
    out = []
    for cid in sorted(by_control, key=sort_key):
        results = by_control[cid]
        passed = tuple(r.info.id for r in results if r.status == "pass")
        failed = tuple(r.info.id for r in results if r.status == "fail")
        skipped = tuple(r.info.id for r in results if r.status == "not assessed")
        status: ControlStatus
        if failed:
            status = "fail"
        elif passed:
            status = "partial" if skipped else "pass"
        else:
            status = "not assessed"
        out.append(ControlSummary(control(cid), status, passed, failed, skipped))
    return out


def verdict(report: Report) -> str:
    counts = report.counts()
    found = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return f"{sum(counts.values())} finding(s)" + (f": {found}" if found else "")
