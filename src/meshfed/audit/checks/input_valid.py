"""The input is readable and valid: meshfed's own validation of the spec, YAML syntax of
manifests. What cannot be read cannot be audited."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext
from meshfed.audit.model import Location, Severity
from meshfed.audit.registry import Hit, check


@check(
    "input-valid",
    title="The configuration is valid and fully audited",
    severity=Severity.HIGH,
    why="meshfed refuses to render a spec that fails validation (several of its rules are "
    "security rules); a manifest that does not parse was not audited and would not apply.",
    fix="Correct the input as the message says (`meshfed validate SPEC` lists every problem).",
    controls=("PCI 1.2.1",),
)
def input_valid(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.spec is not None:
        for problem in ctx.spec.problems:
            yield Hit(
                Severity.HIGH,
                f"{problem.field}: {problem.message}",
                Location(
                    file=ctx.spec.file,
                    line=problem.line,
                    kind="Federation",
                    name=ctx.spec.name,
                    detail=problem.field,
                ),
                fix=problem.fix,
            )
    for load in ctx.load_problems:
        yield Hit(
            Severity.HIGH,
            f"{load.file} {load.problem}",
            Location(file=load.file, line=load.line),
        )
