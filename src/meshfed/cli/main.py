"""The ``meshfed`` command line: thin, on top of spec, pki, plan, renderers and sinks."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from meshfed import __version__, interrupts
from meshfed.bundles.config import fetch_hint, unfetched
from meshfed.cli.common import Output, console, reported, state_option, unclipped
from meshfed.pki.certs import fingerprint
from meshfed.pki.errors import PKIError
from meshfed.sinks.files import OutputError, write_rendered
from meshfed.spec.load import load_spec
from meshfed.spec.model import Federation
from meshfed.workspace import default_state_dir, fetch_command, init_pki, open_workspace

out = Output(console)
err = Output(lambda: console(stderr=True))


SPEC = click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))


SECRET_PREFIX = re.compile(r"(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
"""Remote key prefix of ``--secrets external-secrets``: relative path segments, no ``.``/``..``."""

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

    def invoke(self, ctx: click.Context) -> Any:
        """Every command: SIGTERM and SIGHUP act as Ctrl-C (``meshfed.interrupts``); one that
        reaches this far ends the command with ``128 + signal`` and one line, no traceback."""
        previous = interrupts.install()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            click.echo(f"interrupted ({interrupts.signal_name(exc)})", err=True)
            sys.exit(interrupts.exit_code(exc))
        finally:
            interrupts.restore(previous)


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
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the schema to this file instead of standard output.",
)
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
    """Create missing CAs (idempotent); check what exists; never print keys.

    Needs nothing of a partner's: when a mesh follows a peer's bundle that no fetch has
    accepted yet, the CAs are made all the same and a note names the meshfed trust fetch that
    render, up and apply need first."""
    with reported(PKIError, OutputError):
        fed = load_spec(spec)
        # Read first: a damaged kept bundle is an error that leaves everything as it was.
        missing = unfetched(fed, state if state is not None else default_state_dir(fed))
        state_dir, pki = init_pki(fed, state)
    from rich.table import Table

    table = Table(title=f"PKI of {fed.name} ({pki.mode}) in {state_dir / 'pki'}")
    for column in ("mesh", "trust domain", "root", "intermediate (sha256)", "expires"):
        table.add_column(column)
    for name, ca in sorted(pki.meshes.items()):
        table.add_row(
            name,
            ca.trust_domain,
            ca.root_name,
            fingerprint(ca.ca_cert)[:16],
            ca.ca_cert.not_valid_after_utc.strftime("%Y-%m-%d"),
        )
    out.print(unclipped(table))
    for peer in missing:
        out.print(
            f"note: {', '.join(peer.followers)} follow(s) the bundle of {peer.name} "
            f"({peer.trust_domain}), not fetched yet: render, up and apply need it; "
            + fetch_hint(peer, fetch_command(spec, state)),
            markup=False,
            soft_wrap=True,
        )


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
@click.option(
    "--target",
    type=click.Choice(["istio"]),
    default="istio",
    show_default=True,
    help="What to render for (Istio's APIs, as installed by istioctl, Helm or Sail).",
)
@click.option(
    "--secrets",
    "secrets_as",
    type=click.Choice(["plain", "external-secrets"]),
    default="plain",
    show_default=True,
    help="plain: Secrets with their keys in OUT/<mesh>/secrets/ (0600). external-secrets: "
    "ExternalSecrets there instead (no key material, safe for git), and the values to upload "
    "to the store under STATE/secret-store/.",
)
@click.option(
    "--secret-store",
    default=None,
    help="With --secrets external-secrets: the name of the (Cluster)SecretStore to read from.",
)
@click.option(
    "--secret-store-kind",
    type=click.Choice(["ClusterSecretStore", "SecretStore"]),
    default="ClusterSecretStore",
    show_default=True,
    help="With --secrets external-secrets: the kind of the store --secret-store names.",
)
@click.option(
    "--secret-prefix",
    default=None,
    help="Remote keys are PREFIX/<mesh>/<secret> (default meshfed/<federation>).",
)
@state_option
def render(
    spec: Path,
    out_dir: Path | None,
    target: str,
    secrets_as: str,
    secret_store: str | None,
    secret_store_kind: str,
    secret_prefix: str | None,
    state: Path | None,
) -> None:
    """Render each mesh's Istio and Kubernetes manifests into OUT/<mesh>/."""
    from meshfed.sinks.external_secrets import (
        ExternalSecretsOptions,
        to_external_secrets,
        write_values,
    )

    options: ExternalSecretsOptions | None = None
    if secrets_as == "external-secrets":
        if not secret_store:
            raise click.UsageError(
                "--secrets external-secrets needs --secret-store NAME (the ClusterSecretStore "
                "or SecretStore holding the values)"
            )
        if secret_prefix is not None and not SECRET_PREFIX.fullmatch(secret_prefix):
            raise click.BadParameter(
                "path segments of letters, digits, '.', '_' or '-', separated by '/' "
                "(e.g. platform/meshfed)",
                param_hint="--secret-prefix",
            )
    with reported(PKIError, OutputError):
        ws = open_workspace(spec, state)
        rendered = ws.istio()
        target_dir = out_dir if out_dir is not None else Path("out") / ws.federation.name
        values_dir = None
        if secrets_as == "external-secrets" and secret_store:
            options = ExternalSecretsOptions(
                store=secret_store,
                store_kind="SecretStore"
                if secret_store_kind == "SecretStore"
                else "ClusterSecretStore",
                prefix=secret_prefix or f"meshfed/{ws.federation.name}",
            )
            converted = [to_external_secrets(r, options) for r in rendered]
            rendered = [r for r, _ in converted]
            # The values first (the state directory, private): a failure after them leaves
            # the output as it was.
            values_dir = write_values(
                ws.state_dir, {k: v for _, d in converted for k, v in d.items()}
            )
        kept = write_rendered(target_dir, rendered)
    from rich.table import Table

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
    out.print(unclipped(table))
    if options is not None:
        out.print(
            f"{target_dir}/<mesh>/secrets/ holds ExternalSecrets of {options.store_kind} "
            f"{options.store} (no key material). Upload each file under {values_dir}/ to the "
            f"store key it is named after ({options.prefix}/<mesh>/<secret>), e.g. "
            f"vault kv put <mount>/{options.prefix}/<mesh>/cacerts @{values_dir}/"
            f"{options.prefix}/<mesh>/cacerts.json",
            markup=False,
        )
    else:
        out.print(
            f"Secrets (keys, mode 0600) are in {target_dir}/<mesh>/secrets/; apply them first.",
            markup=False,
        )
    out.print(
        f"Istio install settings (IstioOperator, istiod Helm values, Sail Istio) are beside "
        f"the manifests in {target_dir}/<mesh>/, outside the kustomization.",
        markup=False,
    )
    if kept:
        shown = ", ".join(kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
        out.print(
            f"Kept {len(kept)} file(s) in {target_dir} that meshfed did not write: {shown}",
            markup=False,
        )
