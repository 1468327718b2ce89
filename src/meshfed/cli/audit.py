"""``meshfed audit`` and ``meshfed graph``: compliance report and picture of a federation.

``register(main)`` adds both commands to the ``meshfed`` group.
"""

from __future__ import annotations

import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from meshfed.audit import AuditOptions, Severity, audit_manifests, audit_spec
from meshfed.audit.model import SEVERITY_NAMES, Report
from meshfed.audit.report import FORMATS, render
from meshfed.audit.report.summary import verdict
from meshfed.audit.report.table import render_table
from meshfed.graph import build_graph, render_html, render_svg
from meshfed.spec.duration import parse_duration
from meshfed.spec.errors import SpecError
from meshfed.spec.load import load_spec
from meshfed.spec.yamlsafe import InputError
from meshfed.workspace import plan_of

EXIT_FINDINGS = 1
EXIT_UNREADABLE = 2


def _window(value: str | None) -> AuditOptions:
    now = datetime.now(UTC)
    if value is None:
        return AuditOptions(now=now)
    try:
        window = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--window") from None
    return AuditOptions(now=now, window=window)


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@click.command()
@click.argument("spec", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--manifests",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Audit a directory tree (or file) of Kubernetes/Istio YAML instead of a spec.",
)
@click.option(
    "--state",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="PKI state directory of SPEC (default ./.meshfed/<federation>/).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS)),
    default="table",
    show_default=True,
    help="table for a terminal; json, sarif (code scanning), markdown or html for files.",
)
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITY_NAMES),
    default="high",
    show_default=True,
    help="Exit 1 when a finding at or above this severity exists.",
)
@click.option(
    "--window",
    default=None,
    help="Certificate rotation window, a Go duration such as 720h "
    "(default: the last third of each certificate's lifetime).",
)
@click.option(
    "--production", is_flag=True, help="Loopback addresses at the boundary are findings too."
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 on what `meshfed validate` warns about too (a principal that matches no "
    "declared workload), whatever --fail-on says.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the report to this file instead of standard output.",
)
def audit(
    spec: Path | None,
    manifests: Path | None,
    state: Path | None,
    fmt: str,
    fail_on: str,
    window: str | None,
    production: bool,
    strict: bool,
    output: Path | None,
) -> None:
    """Audit a federation for boundary protection and report the controls it evidences.

    Give SPEC (a federation spec, with its PKI state) or --manifests DIR (any Istio YAML).
    Exit status: 0 clean, 1 a finding at or above --fail-on, 2 the input could not be read.
    """
    if (spec is None) == (manifests is None):
        raise click.UsageError("give either SPEC or --manifests DIR (one of them)")
    if state is not None and spec is None:
        raise click.UsageError("--state goes with SPEC, not with --manifests")
    options = _window(window)
    options = AuditOptions(now=options.now, window=options.window, production=production)
    report: Report
    if spec is not None:
        try:
            report = audit_spec(spec, state, options)
        except OSError as exc:
            click.echo(f"error: {spec}: cannot read the spec: {exc.strerror or exc}", err=True)
            sys.exit(EXIT_UNREADABLE)
        except InputError as exc:
            for line in exc.lines:
                click.echo(line, err=True)
            click.echo(f"{exc.file}: cannot be read; nothing was audited", err=True)
            sys.exit(EXIT_UNREADABLE)
    else:
        assert manifests is not None
        report = audit_manifests(manifests, options)
    if fmt == "table" and output is None and sys.stdout.isatty():
        columns = shutil.get_terminal_size((160, 40)).columns
        text = render_table(report, color=True, width=max(100, columns))
    else:
        text = render(report, fmt)
    _emit(text, output)
    failing = report.at_or_above(Severity.parse(fail_on))
    warnings = _spec_warnings(spec) if strict and spec is not None else []
    if output is not None or fmt != "table":
        click.echo(
            f"meshfed audit: {verdict(report)}; {len(failing)} at or above {fail_on}", err=True
        )
    for line in warnings:
        click.echo(line, err=True)
    if failing or warnings:
        sys.exit(EXIT_FINDINGS)


def _spec_warnings(spec: Path) -> list[str]:
    """validate's warnings for a spec that validates (--strict); none for one that does not."""
    warnings: list[str] = []
    try:
        load_spec(spec, warnings=warnings)
    except SpecError:
        return []
    return warnings


@click.command()
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="file.svg or file.html (default: SVG on standard output).",
)
def graph(spec: Path, output: Path | None) -> None:
    """Draw the federation: meshes as boxes, imports and grants as labelled arrows."""
    try:
        fed = load_spec(spec)
    except SpecError as exc:
        for line in exc.lines:
            click.echo(line, err=True)
        click.echo(f"{exc.file}: {len(exc.lines)} problem(s); nothing was drawn", err=True)
        sys.exit(1)
    picture = build_graph(plan_of(fed))
    if output is not None and output.suffix.lower() in (".html", ".htm"):
        text = render_html(picture)
    elif output is None or output.suffix.lower() == ".svg":
        text = render_svg(picture)
    else:
        raise click.BadParameter("use a .svg or .html file name", param_hint="-o/--output")
    _emit(text, output)
    if output is not None:
        click.echo(f"wrote {output}", err=True)


def register(group: click.Group) -> None:
    """Add ``audit`` and ``graph`` to the meshfed command group."""
    group.add_command(audit)
    group.add_command(graph)
