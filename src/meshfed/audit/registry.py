"""The check registry: one small function per concept, each with its catalogue entry.

A check is a generator over the audit context yielding ``Hit``s; it raises ``NotAssessed`` when
there is nothing for it to look at. ``run_check`` turns its hits into findings and a status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.controls import control
from meshfed.audit.model import CheckInfo, CheckResult, Finding, Location, Severity, Status


@dataclass(frozen=True)
class Hit:
    """What a check reports; the registry adds the check id and default why/fix."""

    severity: Severity
    message: str
    location: Location
    fix: str | None = None
    why: str | None = None


CheckFn = Callable[[AuditContext], Iterator[Hit]]


@dataclass(frozen=True)
class Check:
    info: CheckInfo
    run: CheckFn


REGISTRY: dict[str, Check] = {}


def check(
    id: str,
    *,
    title: str,
    severity: Severity,
    why: str,
    fix: str,
    controls: tuple[str, ...],
) -> Callable[[CheckFn], CheckFn]:
    """Register a check function under ``id`` with its catalogue entry."""
    for c in controls:
        control(c)  # fail at import time on an unknown control id

    def register(fn: CheckFn) -> CheckFn:
        if id in REGISTRY:
            raise ValueError(f"check {id!r} registered twice")
        info = CheckInfo(id, title, severity, why, fix, controls)
        REGISTRY[id] = Check(info, fn)
        return fn

    return register


def run_check(chk: Check, ctx: AuditContext) -> CheckResult:
    info = chk.info
    findings: list[Finding] = []
    note: str | None = None
    assessed = True
    try:
        for hit in chk.run(ctx):
            findings.append(
                Finding(
                    check=info.id,
                    severity=hit.severity,
                    message=hit.message,
                    location=hit.location,
                    why=hit.why or info.why,
                    fix=hit.fix or info.fix,
                )
            )
    except NotAssessed as exc:
        assessed = False
        note = str(exc)
    status: Status
    if any(f.severity >= Severity.LOW for f in findings):
        status = "fail"
    elif not assessed:
        status = "not assessed"
    else:
        status = "pass"
    return CheckResult(info, status, tuple(findings), note)
