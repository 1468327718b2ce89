"""The report as one self-contained HTML page."""

from __future__ import annotations

from html import escape

from meshfed.audit.model import Report
from meshfed.audit.report.summary import controls_summary, verdict

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1d2733;max-width:1200px}
h1{font-size:1.5rem}h2{margin-top:2rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border:1px solid #d5dbe3;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#eef2f7}code{font-size:.85rem}
.sev{font-weight:600;border-radius:3px;padding:0 .35rem;color:#fff;white-space:nowrap}
.critical{background:#7a1020}.high{background:#c0392b}.medium{background:#d68910}
.low{background:#2e86c1}.info{background:#7f8c8d}
.pass{color:#1e7e34;font-weight:600}.partial{color:#9a6700;font-weight:600}.fail{color:#c0392b;font-weight:600}
.not-assessed{color:#7f8c8d}
.finding{border:1px solid #d5dbe3;border-radius:4px;padding:.5rem 1rem;margin:.6rem 0}
"""


def _status(status: str) -> str:
    return f'<span class="{status.replace(" ", "-")}">{escape(status)}</span>'


def render_html(report: Report) -> str:
    e = escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>meshfed audit: {e(report.target)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>meshfed audit: {e(report.target)}</h1>",
        f"<p><strong>{e(verdict(report))}</strong> (mode {e(report.mode)})</p>",
        "<ul>",
        *(f"<li>{e(k)}: {e(v)}</li>" for k, v in report.options.items()),
        "</ul>",
        '<h2 id="controls">Controls</h2>',
        "<table><tr><th>control</th><th>title</th><th>status</th><th>passing checks</th>"
        "<th>failing checks</th><th>not assessed</th></tr>",
    ]
    for s in controls_summary(report):
        parts.append(
            f"<tr><td>{e(s.control.id)}</td><td>{e(s.control.title)}</td>"
            f"<td>{_status(s.status)}</td><td>{e(', '.join(s.passed))}</td>"
            f"<td>{e(', '.join(s.failed))}</td><td>{e(', '.join(s.not_assessed))}</td></tr>"
        )
    parts += ["</table>", '<h2 id="findings">Findings</h2>']
    if not report.findings:
        parts.append("<p>No findings.</p>")
    for f in report.findings:
        sev = f.severity.value
        parts.append(
            f'<div class="finding"><p><span class="sev {sev}">{sev}</span> '
            f"<code>{e(f.check)}</code> {e(f.message)}</p>"
            f"<p>object: <code>{e(f.location.describe())}</code>"
            + (f" field <code>{e(f.location.detail)}</code>" if f.location.detail else "")
            + f"</p><p>why it matters: {e(f.why)}</p><p>fix: {e(f.fix)}</p></div>"
        )
    parts += [
        '<h2 id="checks">Checks</h2>',
        "<table><tr><th>check</th><th>title</th><th>max severity</th><th>status</th>"
        "<th>findings</th><th>controls</th><th>note</th></tr>",
    ]
    for r in report.results:
        parts.append(
            f"<tr><td><code>{e(r.info.id)}</code></td><td>{e(r.info.title)}</td>"
            f"<td>{e(r.info.severity.value)}</td><td>{_status(r.status)}</td>"
            f"<td>{len(r.findings)}</td><td>{e(', '.join(r.info.controls))}</td>"
            f"<td>{e(r.note or '')}</td></tr>"
        )
    parts += ["</table>", "</body></html>"]
    return "\n".join(parts) + "\n"
