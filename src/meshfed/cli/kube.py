"""Commands for real clusters: apply, diff, discover, remote-secret and ``pki install``.

``register(main)`` adds them to the ``meshfed`` group (``pki install`` under ``meshfed pki``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from meshfed import interrupts
from meshfed.cli.common import reported
from meshfed.kube.apply import ClusterRun, Rollout, kube_connector
from meshfed.kube.client import KubeClient
from meshfed.kube.diff import diff as federation_diff
from meshfed.kube.discover import discover, discover_addresses
from meshfed.kube.errors import ApplyRefused, KubeError
from meshfed.kube.remote_secret import istioctl_output, remote_secret
from meshfed.kube.targets import TargetError
from meshfed.kube.workspace import KubeWorkspace, open_kube_workspace
from meshfed.pki.errors import PKIError
from meshfed.plan.names import GATEWAY_NAMESPACE
from meshfed.render.istio import multicluster
from meshfed.spec.load import load_spec

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])


def _options(func: F) -> F:
    func = click.option(
        "--kubeconfig",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, as kubectl).",
    )(func)
    func = click.option(
        "--state",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="State directory (default ./.meshfed/<federation>/).",
    )(func)
    return click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))(func)


def _mesh_option(func: F) -> F:
    return click.option(
        "--mesh", "meshes", multiple=True, help="Only this mesh's clusters (repeatable)."
    )(func)


class _RichProgress:
    """Per-cluster progress bars on stderr, and one line per finished phase."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}

    def start(self, cluster: str, what: str, total: int) -> None:
        self.tasks[cluster] = self.bar.add_task(f"{cluster}: {what}", total=total)

    def step(self, cluster: str) -> None:
        self.bar.advance(self.tasks[cluster])

    def done(self, cluster: str, text: str) -> None:
        if cluster in self.tasks:
            self.bar.remove_task(self.tasks.pop(cluster))
        err.print(f"  {cluster}: {text}", markup=False)


def _open(spec: Path, state: Path | None, kubeconfig: Path | None) -> KubeWorkspace:
    kws = open_kube_workspace(spec, state, kube_connector(str(kubeconfig) if kubeconfig else None))
    for found in kws.discovered:
        err.print(
            f"discovered {len(found.workloads)} workloads of mesh {found.mesh} "
            f"(from {found.source}s)",
            markup=False,
        )
        for note in found.notes:
            err.print(f"  note: {note}", markup=False)
    for address in kws.addresses:
        what = "ingress.address" if address.ingress else "discoveryAddress"
        err.print(
            f"discovered {what} {address.address} of mesh {address.mesh} (from {address.source})",
            markup=False,
        )
    return kws


def _table(title: str, runs: list[ClusterRun]) -> Table:
    table = Table(title=title)
    for column in ("cluster", "created", "configured", "unchanged", "deleted"):
        table.add_column(column)
    for run in runs:
        counts = run.counts()
        table.add_row(
            run.label, *(str(counts[k]) for k in ("created", "configured", "unchanged", "deleted"))
        )
    return table


def _notes(rollout: Rollout) -> None:
    for note in rollout.notes():
        click.echo(f"  {note}")


def _remote_hints(kws: KubeWorkspace) -> None:
    for mesh in kws.ws.plan.meshes:
        primary = mesh.primary
        if mesh.remotes and primary is not None and primary.discovery_address is None:
            err.print(
                f"note: mesh {mesh.name}: the east-west gateway {GATEWAY_NAMESPACE}/"
                f"{multicluster.EASTWEST_GATEWAY} on cluster {primary.name} has no "
                "load-balancer address yet; once it has one, `meshfed discover` prints it as "
                "discoveryAddress (or set it in the spec), and `meshfed render` writes the "
                "remotes' Istio settings",
                markup=False,
            )


def _forget_option(func: F) -> F:
    return click.option(
        "--forget",
        "forget",
        multiple=True,
        metavar="CONTEXT",
        help="A cluster meshfed applied to before and the spec no longer names, gone for good: "
        "drop it from the record instead of cleaning it up. Repeatable.",
    )(func)


@click.command()
@_options
@_mesh_option
@click.option("--dry-run", is_flag=True, help="Only the server-side dry-run; write nothing.")
@_forget_option
def apply(
    spec: Path,
    state: Path | None,
    kubeconfig: Path | None,
    meshes: tuple[str, ...],
    dry_run: bool,
    forget: tuple[str, ...],
) -> None:
    """Server-side apply each mesh's manifests to its clusters; prune what meshfed no longer
    renders, and (without --mesh) empty the clusters of meshes the spec no longer names.
    Everything is dry-run on every cluster first: one refusal, and nothing is written."""
    rollout = None
    try:
        with reported(ApplyRefused, KubeError, TargetError, PKIError):
            kws = _open(spec, state, kubeconfig)
            targets = kws.targets(meshes or None)
            rollout = kws.rollout(
                targets, retire=not meshes, forget=forget, progress=_RichProgress()
            )
            err.print(f"dry-run on {len(targets)} cluster(s)", markup=False)
            runs = rollout.run(dry_run=dry_run)
    except KeyboardInterrupt as exc:
        _apply_interrupted(rollout.runs if rollout is not None else [], exc, dry_run)
    title = f"{'dry-run: ' if dry_run else ''}{kws.ws.federation.name} applied"
    out.print(_table(title, runs))
    _notes(rollout)
    if dry_run:
        for run in runs:
            for action, name in run.actions:
                if action != "unchanged":
                    click.echo(f"  {run.label}: would be {action}: {name}")
    _remote_hints(kws)


def _apply_interrupted(runs: list[ClusterRun], exc: KeyboardInterrupt, dry_run: bool) -> NoReturn:
    """A stop signal during apply: what was written where, and how to finish."""
    sig = interrupts.signal_name(exc)
    written = [r for r in runs if r.actions]
    if dry_run or not written:
        click.echo(f"interrupted ({sig}) before anything was written to a cluster", err=True)
    else:
        click.echo(f"interrupted ({sig}) while writing; written so far:", err=True)
        for run in runs:
            click.echo(f"  {run.label}: {run.summary() if run.actions else 'nothing'}", err=True)
        click.echo(
            "the object being written when the signal came may or may not have been applied; "
            "run meshfed apply again to finish (it dry-runs every object again first; "
            "server-side apply is idempotent)",
            err=True,
        )
    sys.exit(interrupts.exit_code(exc))


@click.command("diff")
@_options
@_mesh_option
@_forget_option
def diff_command(
    spec: Path,
    state: Path | None,
    kubeconfig: Path | None,
    meshes: tuple[str, ...],
    forget: tuple[str, ...],
) -> None:
    """What apply would change: the security diff in plain words, then each cluster's objects
    (server-side dry-run against the live objects, meshfed's fields only, secrets as digests)."""
    with reported(ApplyRefused, KubeError, TargetError, PKIError):
        kws = _open(spec, state, kubeconfig)
        rollout = kws.rollout(kws.targets(meshes or None), retire=not meshes, forget=forget)
        result = federation_diff(rollout)
    base = result.baseline
    since = (
        f"since the apply stored on {base.cluster} at {base.applied_at}"
        if base
        else "nothing applied yet"
    )
    click.echo(f"Security changes ({since}):")
    for security in result.security:
        click.echo(f"  {security}")
    if not result.security:
        click.echo("  (none)")
    for cluster in result.clusters:
        counts = cluster.counts()
        click.echo(
            f"\nCluster {cluster.label}: " + ", ".join(f"{n} {a}" for a, n in counts.items())
        )
        for change in cluster.changes:
            if change.action != "unchanged":
                click.echo(f"{change.action}: {change.name}")
                if change.diff:
                    click.echo(change.diff, nl=not change.diff.endswith("\n"))


@click.command("discover")
@_options
@_mesh_option
def discover_command(
    spec: Path, state: Path | None, kubeconfig: Path | None, meshes: tuple[str, ...]
) -> None:
    """Print what each mesh's clusters hold as spec YAML: the workloads (meshes[].workloads)
    and, for a primary with remotes, the east-west gateway's load-balancer address
    (meshes[].clusters[].discoveryAddress) when the spec leaves it out."""
    del state
    with reported(ApplyRefused, KubeError, TargetError, PKIError):
        fed = load_spec(spec, discovery_pending=True)
        connect = kube_connector(str(kubeconfig) if kubeconfig else None)
        chosen = meshes or [m.name for m in fed.spec.meshes]
        found = discover(fed, connect, chosen)
        addresses = discover_addresses(fed, connect, chosen)
    entries: dict[str, dict[str, Any]] = {}
    for d in found:
        entries[d.mesh] = {"name": d.mesh, "workloads": d.workloads}
        err.print(f"mesh {d.mesh}: {len(d.workloads)} workloads from {d.source}s", markup=False)
        for note in d.notes:
            err.print(f"  note: {note}", markup=False)
    for a in addresses:
        mesh = fed.mesh(a.mesh)
        clusters = [
            c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in mesh.clusters or []
        ]
        for c in clusters:
            if c["name"] == a.cluster:
                c["discoveryAddress"] = a.address
        entries.setdefault(a.mesh, {"name": a.mesh})["clusters"] = clusters
        err.print(f"mesh {a.mesh}: discoveryAddress from {a.source}", markup=False)
    doc = {"meshes": [entries[m] for m in chosen if m in entries]}
    click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


@click.command("remote-secret")
@click.option("--context", required=True, help="kubeconfig context of the remote cluster.")
@click.option("--name", "cluster", required=True, help="Istio's name for the remote cluster.")
@click.option("--rotate", is_flag=True, help="Issue a new token, then revoke the old ones.")
@click.option(
    "--istio-namespace",
    default="istio-system",
    show_default=True,
    help="Istio's namespace: the reader account's on the remote, the Secret's on the primary.",
)
@click.option(
    "--server", default=None, help="API server address for istiod (default: kubeconfig's)."
)
@click.option(
    "--apply-to",
    "apply_to",
    default=None,
    help="Also apply the Secret to this (primary) context, before old tokens are revoked.",
)
@click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, as kubectl).",
)
def remote_secret_command(
    context: str,
    cluster: str,
    rotate: bool,
    istio_namespace: str,
    server: str | None,
    apply_to: str | None,
    kubeconfig: Path | None,
) -> None:
    """The primary-remote Secret for a remote cluster, as istioctl create-remote-secret makes
    it (reader account and RBAC created on the remote). --rotate renews and revokes the token."""
    with reported(ApplyRefused, KubeError, TargetError, PKIError):
        if not multicluster_name_ok(cluster):
            raise KubeError(f"{cluster!r} is not a DNS-1123 label")
        remote = KubeClient.for_context(context, kubeconfig)
        primary = KubeClient.for_context(apply_to, kubeconfig) if apply_to else None

        def publish(secret: dict[str, Any]) -> None:
            if primary is not None:
                primary.apply(secret, force=True)
                err.print(f"applied {secret['metadata']['name']} to {primary.label}", markup=False)

        result = remote_secret(
            remote, cluster, istio_namespace, rotate=rotate, server=server, publish=publish
        )
    if result.issued:
        err.print(f"issued reader token {istio_namespace}/{result.token_secret}", markup=False)
    for name in result.revoked:
        err.print(f"revoked token {istio_namespace}/{name}", markup=False)
    click.echo(istioctl_output(result.secret), nl=False)


def multicluster_name_ok(name: str) -> bool:
    return re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name) is not None


@click.command("install")
@_options
@_mesh_option
def pki_install(
    spec: Path, state: Path | None, kubeconfig: Path | None, meshes: tuple[str, ...]
) -> None:
    """Put each mesh's cacerts (its intermediate CA) into every one of its clusters."""
    with reported(ApplyRefused, KubeError, TargetError, PKIError):
        kws = _open(spec, state, kubeconfig)
        targets = kws.pki_targets(meshes or None)
        rollout = kws.rollout(targets, prune=False, store_state=False, progress=_RichProgress())
        runs = rollout.run()
    out.print(_table(f"cacerts of {kws.ws.federation.name}", runs))
    _notes(rollout)


def register(group: click.Group) -> None:
    """Add apply, diff, discover, remote-secret, and ``pki install`` to ``group``."""
    for command in (apply, diff_command, discover_command, remote_secret_command):
        group.add_command(command)
    pki = group.commands.get("pki")
    if isinstance(pki, click.Group):
        pki.add_command(pki_install)
