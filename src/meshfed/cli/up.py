"""``meshfed up [--watch]``: run the federation here, and what it prints.

A stop signal (Ctrl-C, SIGTERM, SIGHUP) at any moment stops what this run had started and exits
with ``128 + signal``; the watch loop itself lives in ``local/watchloop.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgressBar
from rich.table import Table

from meshfed.cli.common import console, reported, state_option, the_spec, unclipped
from meshfed.interrupts import exit_code, signal_name
from meshfed.local.errors import LocalError
from meshfed.local.locate import default_spec
from meshfed.local.probe import partner_sources
from meshfed.local.report import Silent, UpReport
from meshfed.local.runtime import Runtime
from meshfed.local.state import WORKLOAD_HOST
from meshfed.local.watch import FileWatcher
from meshfed.local.watchloop import watch_edits
from meshfed.pki.errors import PKIError
from meshfed.workspace import open_workspace

out = console()
err = console(stderr=True)


class _RichProgress:
    """``report.Progress`` on a rich progress display (stderr, gone when done)."""

    def __init__(self, bar: RichProgressBar) -> None:
        self.bar = bar
        self.task: TaskID | None = None

    def phase(self, text: str, total: int | None = None) -> None:
        if self.task is not None:
            self.bar.update(self.task, visible=False)
        self.task = self.bar.add_task(text, total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)


def _say(text: str) -> None:
    click.echo(text)


def _complain(text: str) -> None:
    click.echo(text, err=True)


@click.command()
@click.argument("spec", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--spec",
    "spec_option",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The same as the SPEC argument.",
)
@state_option
@click.option(
    "--watch",
    is_flag=True,
    help="Then stay in the foreground and apply every saved edit of SPEC live (one line per "
    "edit). Ctrl-C, SIGTERM or SIGHUP stops watching and leaves the federation running.",
)
def up(spec: Path | None, spec_option: Path | None, state: Path | None, watch: bool) -> None:
    """Run every mesh of SPEC here on real Envoy (default: the bundled bank example).

    Starts in the background and returns once every Envoy is ready and every import answered a
    probe. Run it again after editing SPEC to apply the change live (no Envoy restart).
    Interrupted (Ctrl-C, SIGTERM, SIGHUP), it stops what this run had started.

    With --watch, up stays in the foreground instead and applies each saved edit of SPEC the
    same way as a new run of up, printing one line per edit: what changed and how long it took.
    A bad edit prints the same error up would and changes nothing; the federation keeps running
    on the last good spec, and the next good edit applies. Ctrl-C, SIGTERM or SIGHUP only stops
    watching: the federation keeps running, as after up, until meshfed down (a second one
    while an edit is being applied aborts that edit).
    """
    started = False
    try:
        with reported(PKIError, LocalError, effect="nothing was started"):
            spec_path = the_spec(spec, spec_option) or default_spec()
            # Made before the spec is read: an edit saved while the federation starts is applied.
            watcher = FileWatcher(spec_path) if watch else None
            ws = open_workspace(spec_path, state)
            bar = RichProgressBar(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            runtime = Runtime(ws.state_dir, _RichProgress(bar))
            started = True
            with bar:
                report = runtime.up(ws)
    except KeyboardInterrupt as exc:
        what = "stopped what this run had started" if started else "nothing was started"
        err.print(f"interrupted ({signal_name(exc)}): {what}", markup=False)
        sys.exit(exit_code(exc))
    _print_up(report, runtime)
    if not report.ok:
        failed = [p for p in report.probes if not p.ok]
        for p in failed:
            err.print(
                f"probe failed: {p.probe.mesh} {p.probe.key}: {p.detail}",
                markup=False,
                soft_wrap=True,
            )
            partners = partner_sources(ws.plan, p.probe)
            if p.refused:
                names = ", ".join(s.mesh for s in p.refused)
                err.print(
                    f"  served only by a partner's ingress, run by another organisation, and "
                    f"nothing listens at its address: start {names}'s federation (its meshfed "
                    f"up), or check the ingress address of mesh {names} in {spec_path}; then run"
                    " meshfed up again: this import is probed again",
                    markup=False,
                    soft_wrap=True,
                )
            elif partners:
                where = ", ".join(f"{s.mesh} ({s.address}:{s.port})" for s in partners)
                err.print(
                    f"  served only by a partner's ingress, run by another organisation: {where}."
                    " Once it is up, run meshfed up again: this import is probed again",
                    markup=False,
                )
        err.print(
            "the federation is running; see meshfed logs --boundary and meshfed status",
            markup=False,
        )
        if watcher is None:
            sys.exit(1)
    if watcher is not None:
        runtime.progress = Silent()
        try:
            watch_edits(watcher, ws, runtime, _say, _complain)
        except KeyboardInterrupt as exc:
            err.print(
                f"interrupted ({signal_name(exc)}): stopped what this edit had started; the "
                "federation keeps running on a partly applied edit (run meshfed up to finish "
                "it, meshfed down to stop it)",
                markup=False,
            )
            sys.exit(exit_code(exc))


def _listens(listeners: dict[str, str], app_port: int | None) -> str:
    """A process's listeners, short: the gateway's address, or a sidecar's ports by role."""
    if app_port is None:
        return "\n".join(listeners.values())
    line = []
    tcp = []
    for name, address in listeners.items():
        port = address.rpartition(":")[2]
        if name.startswith("outbound-tcp|"):
            tcp.append(f"{name.partition('|')[2]} -> {port}")
        else:
            line.append(f"{ {'inbound': 'in', 'outbound': 'out'}.get(name, name) } {port}")
    line.append(f"app {app_port}")
    return "\n".join(["  ".join(line), *tcp])


def admin_sockets_line(directory: str) -> str:
    return f"admin: each Envoy's unix socket (0600) in {directory} (0700), no TCP port"


def _print_up(report: UpReport, runtime: Runtime) -> None:
    records = runtime.processes()
    table = Table(
        title=f"local federation {report.federation} ({report.summary.trust_mode}, 127.0.0.1)"
    )
    for column in ("mesh", "process", "pid", "listens", "admin"):
        table.add_column(column)
    layout = report.layout
    for mesh in report.summary.meshes:
        for p in report.summary.processes:
            if p.mesh != mesh.name:
                continue
            app = None
            if p.workload is not None:
                app = layout.meshes[p.mesh].sidecars[p.workload].app_port
            record = records.get(p.name)
            table.add_row(
                mesh.name,
                p.role if p.workload is None else f"sidecar {p.workload}",
                str(record.pid) if record else "-",
                _listens(p.listeners, app),
                Path(p.admin_socket).name,
            )
        table.add_section()
    host = records.get(WORKLOAD_HOST)
    table.add_row("", "workload host", str(host.pid) if host else "-", "every app port", "-")
    out.print(unclipped(table))
    out.print(admin_sockets_line(layout.admin_dir), markup=False, soft_wrap=True)

    imports = Table(title="imports (local name -> exporters, in failover order)")
    for column in ("mesh", "local name", "wire host (SNI)", "sources", "probe"):
        imports.add_column(column)
    probes = {(p.probe.mesh, p.probe.key): p for p in report.probes}
    for imp in report.summary.imports:
        probe = probes.get((imp.mesh, imp.key))
        verdict = "-" if probe is None else ("ok: " if probe.ok else "FAILED: ") + probe.detail
        imports.add_row(
            imp.mesh,
            f"{imp.key} ({imp.protocol})",
            imp.wire_host,
            " > ".join(s.mesh for s in sorted(imp.sources, key=lambda s: s.priority)),
            verdict,
        )
    out.print(unclipped(imports))

    if not report.first_run:
        _print_changes(report)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)
    envoys = len(report.summary.processes)
    took = f"{report.elapsed:.1f} s"
    if not report.ok:
        # A failed probe retries until its timeout (or until its partners kept refusing): say
        # where the wait went.
        failed = sum(not p.ok for p in report.probes)
        took = (
            f"{report.elapsed - report.probing:.1f} s, then {report.probing:.1f} s probing "
            f"imports ({failed} did not answer)"
        )
    out.print(
        f"{envoys} Envoys and the workload host up in {took} (state: {runtime.paths.root})",
        markup=False,
        soft_wrap=True,
    )
    example = _example_call(report)
    if example:
        out.print(f"try: {example}", markup=False, soft_wrap=True)  # one line: copied whole
    if report.dashboard:
        out.print(f"dashboard: {report.dashboard}", markup=False, soft_wrap=True)


def _example_call(report: UpReport) -> str | None:
    """A ``meshfed call`` that the probe showed to work."""
    for p in report.probes:
        if p.ok and p.probe.allowed and p.probe.protocol == "HTTP" and p.probe.workload:
            w = next(
                w
                for w in report.summary.workloads
                if w.mesh == p.probe.mesh and w.ref == p.probe.workload
            )
            method = "" if p.probe.method == "GET" else f" -X {p.probe.method}"
            return (
                f"meshfed call --mesh {p.probe.mesh} --as {w.namespace}/{w.service_account}"
                f"{method} http://{p.probe.host}{p.probe.path}"
            )
    return None


def _print_changes(report: UpReport) -> None:
    lines = []
    lines += [f"  started   {n}" for n in report.started]
    lines += [f"  restarted {n} (bootstrap changed)" for n in report.restarted]
    lines += [f"  updated   {n}: {what}" for n, what in sorted(report.updated.items())]
    lines += [f"  stopped   {n}" for n in report.stopped]
    if report.certificates:
        lines.append("  new certificates: " + ", ".join(report.certificates))
    if lines:
        out.print("changes applied live:", markup=False)
        for line in lines:
            out.print(line, markup=False)
        out.print(
            f"unchanged: {len(report.unchanged)} processes (same pids, not restarted)",
            markup=False,
        )
    else:
        out.print(
            f"no changes: all {len(report.unchanged)} processes kept (same pids)", markup=False
        )
