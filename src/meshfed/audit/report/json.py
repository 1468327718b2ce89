"""The report as JSON: for scripts and dashboards."""

from __future__ import annotations

import json
from typing import Any

from meshfed import __version__
from meshfed.audit.model import Finding, Location, Report
from meshfed.audit.report.summary import controls_summary


def location_dict(loc: Location) -> dict[str, Any]:
    out: dict[str, Any] = {
        "object": loc.object_ref or None,
        "kind": loc.kind,
        "namespace": loc.namespace,
        "name": loc.name,
        "file": loc.file,
        "line": loc.line,
        "field": loc.detail,
    }
    return {k: v for k, v in out.items() if v is not None}


def finding_dict(f: Finding, controls: tuple[str, ...]) -> dict[str, Any]:
    return {
        "check": f.check,
        "severity": f.severity.value,
        "message": f.message,
        "location": location_dict(f.location),
        "why": f.why,
        "fix": f.fix,
        "controls": list(controls),
    }


def report_dict(report: Report) -> dict[str, Any]:
    controls = {r.info.id: r.info.controls for r in report.results}
    return {
        "tool": {"name": "meshfed audit", "version": __version__},
        "target": report.target,
        "mode": report.mode,
        "generated": report.generated,
        "options": report.options,
        "counts": report.counts(),
        "findings": [finding_dict(f, controls[f.check]) for f in report.findings],
        "checks": [
            {
                "id": r.info.id,
                "title": r.info.title,
                "severity": r.info.severity.value,
                "status": r.status,
                "note": r.note,
                "findings": len(r.findings),
                "controls": list(r.info.controls),
                "why": r.info.why,
                "fix": r.info.fix,
            }
            for r in report.results
        ],
        "controls": [
            {
                "id": s.control.id,
                "framework": s.control.framework,
                "title": s.control.title,
                "status": s.status,
                "passed": list(s.passed),
                "failed": list(s.failed),
                "not_assessed": list(s.not_assessed),
            }
            for s in controls_summary(report)
        ],
    }


def render_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2) + "\n"
