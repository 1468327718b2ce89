"""Render a report: table (terminal), json, sarif, markdown, html."""

from __future__ import annotations

from collections.abc import Callable

from meshfed.audit.model import Report
from meshfed.audit.report.html import render_html
from meshfed.audit.report.json import render_json
from meshfed.audit.report.markdown import render_markdown
from meshfed.audit.report.sarif import render_sarif
from meshfed.audit.report.table import render_table

FORMATS: dict[str, Callable[[Report], str]] = {
    "table": render_table,
    "json": render_json,
    "sarif": render_sarif,
    "markdown": render_markdown,
    "html": render_html,
}


def render(report: Report, fmt: str) -> str:
    return FORMATS[fmt](report)


__all__ = ["FORMATS", "render"]
