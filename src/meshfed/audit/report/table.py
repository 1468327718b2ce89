"""The report for a terminal: findings, then the controls summary, as rich tables."""

from __future__ import annotations

import io

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshfed.audit.model import Report, Severity
from meshfed.audit.report.summary import controls_summary, verdict

_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}
_STATUS = {"pass": "green", "partial": "yellow", "fail": "bold red", "not assessed": "dim"}


def render_table(report: Report, color: bool = False, width: int = 160) -> str:
    """Rich tables as text; ``color`` adds ANSI colours (for a terminal of ``width``)."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        highlight=False,
    )
    findings = Table(title=f"meshfed audit of {report.target} ({report.mode})", expand=True)
    for column, ratio in (("severity", 1), ("check", 2), ("object", 3), ("finding / fix", 6)):
        findings.add_column(column, ratio=ratio, overflow="fold")
    for f in report.findings:
        findings.add_row(
            f"[{_STYLE[f.severity]}]{f.severity.value}[/]",
            escape(f.check),
            escape(f.location.describe()),
            f"{escape(f.message)}\n[dim]fix: {escape(f.fix)}[/]",
        )
    if report.findings:
        console.print(findings)
    checks = Table(title="Checks", expand=True)
    for column in ("check", "status", "findings", "controls", "note"):
        checks.add_column(column, overflow="fold")
    for r in report.results:
        checks.add_row(
            r.info.id,
            f"[{_STATUS[r.status]}]{r.status}[/]",
            str(len(r.findings)),
            ", ".join(r.info.controls),
            escape(r.note or ""),
        )
    console.print(checks)
    controls = Table(title="Controls", expand=True)
    for column in ("control", "title", "status", "failing checks", "passing checks"):
        controls.add_column(column, overflow="fold")
    for s in controls_summary(report):
        controls.add_row(
            s.control.id,
            s.control.title,
            f"[{_STATUS[s.status]}]{s.status}[/]",
            ", ".join(s.failed),
            ", ".join(s.passed),
        )
    console.print(controls)
    console.print(f"Result: {verdict(report)}", markup=False)
    return buffer.getvalue()
