"""The ``meshfed`` command line: thin, on top of spec, pki, plan, renderers and sinks."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from meshfed import __version__
from meshfed.cli.common import reported
from meshfed.pki.certs import fingerprint
from meshfed.pki.errors import PKIError
from meshfed.sinks.files import OutputError, write_rendered
from meshfed.spec.load import load_spec
from meshfed.spec.model import Federation
from meshfed.workspace import open_workspace

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

SPEC = click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))


def state_option(func: F) -> F:
    return click.option(
        "--state",
        "state",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="State directory (default ./.meshfed/<federation>/).",
    )(func)


# Command groups load on first use, so "meshfed up" does not import the Kubernetes client.
LAZY_COMMANDS = {
    **dict.fromkeys(("up", "status", "call", "logs", "down", "lab"), "meshfed.cli.local"),
    **dict.fromkeys(("audit", "graph"), "meshfed.cli.audit"),
    **dict.fromkeys(("apply", "diff", "discover", "remote-secret"), "meshfed.cli.kube"),
    "rotate": "meshfed.cli.rotate",
    "controller": "meshfed.cli.controller",
    "trust": "meshfed.cli.trust",
}
PKI_EXTENSIONS = ("meshfed.cli.kube", "meshfed.cli.rotate")
"""Modules that add subcommands to ``pki`` (install; request, sign, import, init-root)."""
_loaded: set[str] = set()


class _LazyGroup(click.Group):
    def _load(self, module: str) -> None:
        if module not in _loaded:
            _loaded.add(module)
            importlib.import_module(module).register(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            self._load(LAZY_COMMANDS[name])
        elif name == "pki":
            for module in PKI_EXTENSIONS:
                self._load(module)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshfed")
def main() -> None:
    """Secure multi-mesh federation for Istio: one spec in; trust, policy and routing out."""


@main.command()
@SPEC
@click.option(
    "--strict",
    is_flag=True,
    help="Fail (exit 1) on warnings too, e.g. a principal that matches no declared workload.",
)
def validate(spec: Path, strict: bool) -> None:
    """Check a federation spec; list every problem with file:line, field and fix."""
    warnings: list[str] = []
    with reported(PKIError, OutputError):
        fed = load_spec(spec, warnings=warnings)
    for line in warnings:
        click.echo(line, err=True)
    if warnings and strict:
        click.echo(f"{spec}: {len(warnings)} warning(s); --strict makes them fatal", err=True)
        sys.exit(1)
    s = fed.spec
    out.print(
        f"{spec}: valid: federation {fed.name!r}, {len(s.meshes)} meshes, "
        f"{len(s.exports)} exports, {len(s.imports)} imports ({s.trust.mode})",
        markup=False,
    )


@main.command()
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None)
def schema(output: Path | None) -> None:
    """Print the JSON Schema of the spec (for editors' completion and validation)."""
    doc = Federation.model_json_schema(by_alias=True, mode="validation")
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["$id"] = "https://meshfed.dev/schemas/v1alpha1/federation.json"
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        err.print(f"wrote {output}", markup=False)


@main.group()
def pki() -> None:
    """Certificate authorities and trust bundles."""


@pki.command("init")
@SPEC
@state_option
def pki_init(spec: Path, state: Path | None) -> None:
    """Create missing CAs (idempotent); check what exists; never print keys."""
    with reported(PKIError, OutputError):
        ws = open_workspace(spec, state)
    table = Table(title=f"PKI of {ws.federation.name} ({ws.pki.mode}) in {ws.state_dir / 'pki'}")
    for column in ("mesh", "trust domain", "root", "intermediate (sha256)", "expires"):
        table.add_column(column)
    for name, ca in sorted(ws.pki.meshes.items()):
        table.add_row(
            name,
            ca.trust_domain,
            ca.root_name,
            fingerprint(ca.ca_cert)[:16],
            ca.ca_cert.not_valid_after_utc.strftime("%Y-%m-%d"),
        )
    out.print(table)


@main.command()
@SPEC
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Output directory (default ./out/<federation>). Written whole on success; on a new "
    "render meshfed replaces the files it wrote there and keeps any you added.",
)
@click.option("--target", type=click.Choice(["istio"]), default="istio", show_default=True)
@state_option
def render(spec: Path, out_dir: Path | None, target: str, state: Path | None) -> None:
    """Render each mesh's Istio and Kubernetes manifests into OUT/<mesh>/."""
    with reported(PKIError, OutputError):
        ws = open_workspace(spec, state)
        rendered = ws.istio()
        target_dir = out_dir if out_dir is not None else Path("out") / ws.federation.name
        kept = write_rendered(target_dir, rendered)
    table = Table(title=f"{target} manifests of {ws.federation.name} in {target_dir}")
    for column in ("mesh", "exports (SNI)", "imports (local name)", "objects"):
        table.add_column(column)
    for mesh, result in zip(ws.plan.meshes, rendered, strict=True):
        table.add_row(
            mesh.name,
            "\n".join(s.sni for s in mesh.ingress.servers) or "-",
            "\n".join(f"{i.local_host}:{i.port}" for i in mesh.imports) or "-",
            str(sum(len(d) for d in result.files.values())),
        )
    out.print(table)
    out.print(
        f"Secrets (keys, mode 0600) are in {target_dir}/<mesh>/secrets/; apply them first.",
        markup=False,
    )
    if kept:
        shown = ", ".join(kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
        out.print(
            f"Kept {len(kept)} file(s) in {target_dir} that meshfed did not write: {shown}",
            markup=False,
        )
