"""The report as Markdown: to hand over, or to paste into a review."""

from __future__ import annotations

from meshfed.audit.model import Report
from meshfed.audit.report.summary import controls_summary, verdict


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    lines = [
        f"# meshfed audit: {report.target}",
        "",
        f"- mode: {report.mode}",
        *(f"- {k}: {v}" for k, v in report.options.items()),
        f"- result: **{verdict(report)}**",
        "",
        "## Controls",
        "",
        "| control | title | status | passing checks | failing checks | not assessed |",
        "|---|---|---|---|---|---|",
    ]
    for s in controls_summary(report):
        lines.append(
            f"| {s.control.id} | {_cell(s.control.title)} | **{s.status}** | "
            f"{', '.join(s.passed) or '-'} | {', '.join(s.failed) or '-'} | "
            f"{', '.join(s.not_assessed) or '-'} |"
        )
    lines += ["", "## Findings", ""]
    if not report.findings:
        lines.append("No findings.")
    for n, f in enumerate(report.findings, start=1):
        lines += [
            f"### {n}. [{f.severity.value.upper()}] {f.check}: {_cell(f.message)}",
            "",
            f"- object: `{f.location.describe()}`"
            + (f" (field `{f.location.detail}`)" if f.location.detail else ""),
            f"- why it matters: {f.why}",
            f"- fix: {f.fix}",
            "",
        ]
    lines += [
        "",
        "## Checks",
        "",
        "| check | title | max severity | status | findings | controls | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.results:
        lines.append(
            f"| {r.info.id} | {_cell(r.info.title)} | {r.info.severity.value} | {r.status} | "
            f"{len(r.findings)} | {', '.join(r.info.controls)} | {_cell(r.note or '')} |"
        )
    return "\n".join(lines) + "\n"
