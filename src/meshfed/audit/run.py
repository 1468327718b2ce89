"""Run an audit: gather the inputs of one mode, run every registered check, make the report."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import meshfed.audit.checks  # noqa: F401  (importing the package registers every check)
from meshfed.audit.context import AuditContext, AuditOptions
from meshfed.audit.model import CheckResult, Report
from meshfed.audit.registry import REGISTRY, Check, run_check
from meshfed.audit.sources.manifests import load_tree
from meshfed.audit.sources.rendered import rendered_docs
from meshfed.audit.sources.spec import read_spec
from meshfed.workspace import plan_of


def all_checks() -> list[Check]:
    return [REGISTRY[k] for k in sorted(REGISTRY)]


def run_checks(ctx: AuditContext) -> tuple[CheckResult, ...]:
    return tuple(run_check(c, ctx) for c in all_checks())


def default_options() -> AuditOptions:
    return AuditOptions(now=datetime.now(UTC))


def _options(options: AuditOptions, **extra: str) -> dict[str, str]:
    out = {
        "now": options.now.isoformat(timespec="seconds"),
        "window": str(options.window) if options.window else "1/3 of each lifetime",
        "production": "yes" if options.production else "no",
    }
    out.update(extra)
    return out


def audit_spec(
    spec_path: Path, state_dir: Path | None = None, options: AuditOptions | None = None
) -> Report:
    """Audit a federation spec (read leniently), what meshfed would render from it, and its
    PKI state. OSError if the spec cannot be read."""
    options = options or default_options()
    spec = read_spec(spec_path)
    if state_dir is None:
        state_dir = Path(".meshfed") / spec.name if spec.name else None
    ctx = AuditContext(mode="spec", options=options, spec=spec, state_dir=state_dir)
    if spec.federation is not None:
        ctx.plan = plan_of(spec.federation)
        ctx.docs = tuple(rendered_docs(ctx.plan))
    else:
        ctx.docs_note = "the spec does not validate, so what meshfed renders was not assessed"
    extra = {"state": str(state_dir) if state_dir else "(none)"}
    return Report(
        target=str(spec_path),
        mode="spec",
        generated=options.now.isoformat(timespec="seconds"),
        results=run_checks(ctx),
        options=_options(options, **extra),
    )


def audit_manifests(root: Path, options: AuditOptions | None = None) -> Report:
    """Audit a tree of Kubernetes/Istio YAML (rendered by meshfed or not)."""
    options = options or default_options()
    inventory = load_tree(root)
    ctx = AuditContext(
        mode="manifests",
        options=options,
        docs=inventory.docs,
        root=inventory.root,
        files=inventory.files,
        load_problems=inventory.problems,
        docs_note=f"no Kubernetes objects found under {root}",
    )
    return Report(
        target=str(root),
        mode="manifests",
        generated=options.now.isoformat(timespec="seconds"),
        results=run_checks(ctx),
        options=_options(options, scopes=", ".join(sorted(ctx.scopes())) or "(none)"),
    )
