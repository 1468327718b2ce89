"""The report as SARIF 2.1.0, for code-scanning dashboards and CI annotations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meshfed import __version__
from meshfed.audit.model import Finding, Report, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
ROOT_BASE = "AUDITROOT"
_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub code scanning reads rule property "security-severity" (0.0-10.0, as a string).
_SCORE = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


def _location(f: Finding, base: str | None) -> dict[str, Any] | None:
    loc = f.location
    out: dict[str, Any] = {}
    if loc.file:
        artifact: dict[str, Any]
        path = Path(loc.file)
        if path.is_absolute():
            artifact = {"uri": path.as_uri()}
        else:
            artifact = {"uri": path.as_posix()}
            if base:
                artifact["uriBaseId"] = base
        physical: dict[str, Any] = {"artifactLocation": artifact}
        if loc.line is not None:
            physical["region"] = {"startLine": loc.line}
        out["physicalLocation"] = physical
    if loc.object_ref:
        out["logicalLocations"] = [
            {
                "name": loc.name or loc.object_ref,
                "fullyQualifiedName": loc.object_ref,
                "kind": "resource",
            }
        ]
    return out or None


def sarif_dict(report: Report) -> dict[str, Any]:
    rules = []
    index: dict[str, int] = {}
    for i, check_result in enumerate(report.results):
        info = check_result.info
        index[info.id] = i
        rules.append(
            {
                "id": info.id,
                "name": "".join(w.capitalize() for w in info.id.split("-")),
                "shortDescription": {"text": info.title},
                "fullDescription": {"text": info.why},
                "help": {
                    "text": f"{info.fix} Controls: {', '.join(info.controls)}.",
                    "markdown": f"{info.fix}\n\nControls: {', '.join(info.controls)}.",
                },
                "defaultConfiguration": {"level": _LEVEL[info.severity]},
                "properties": {
                    "tags": ["security", "compliance", *info.controls],
                    "security-severity": _SCORE[info.severity],
                },
            }
        )
    base = ROOT_BASE if report.mode == "manifests" else None
    results = []
    for f in report.findings:
        result: dict[str, Any] = {
            "ruleId": f.check,
            "ruleIndex": index[f.check],
            "level": _LEVEL[f.severity],
            "message": {"text": f"{f.message}. Fix: {f.fix}"},
            "properties": {"severity": f.severity.value},
        }
        location = _location(f, base)
        if location is not None:
            result["locations"] = [location]
        results.append(result)
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "meshfed-audit",
                "version": __version__,
                "rules": rules,
            }
        },
        "invocations": [{"executionSuccessful": True}],
        "results": results,
        "properties": {"target": report.target, "mode": report.mode, **report.options},
    }
    if base is not None:
        root = Path(report.target).resolve()
        root_dir = root if root.is_dir() else root.parent
        run["originalUriBaseIds"] = {base: {"uri": root_dir.as_uri() + "/"}}
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def render_sarif(report: Report) -> str:
    return json.dumps(sarif_dict(report), indent=2) + "\n"
