"""``meshfed up / status / call / logs / down / lab``: the local federation on real Envoy.

Wired into the main group with ``register(main)``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
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

from meshfed.cli.common import reported
from meshfed.local import dashboard
from meshfed.local.client import NoResponse, Response, http_call, tcp_call, tcp_port
from meshfed.local.errors import LocalError
from meshfed.local.locate import default_spec, locate_state
from meshfed.local.logs import (
    LogEntry,
    boundary_view,
    follow,
    gateway_logs,
    read_entries,
    summary_line,
)
from meshfed.local.runtime import Runtime, Silent, UpReport
from meshfed.local.state import WORKLOAD_HOST
from meshfed.local.status import Status, collect_status
from meshfed.local.watch import FileWatcher
from meshfed.pki.errors import PKIError
from meshfed.plan.diff import SecurityChange, security_diff
from meshfed.plan.model import FederationPlan
from meshfed.spec.errors import SpecError
from meshfed.workspace import Workspace, open_workspace

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_HTTP_ERROR = 1
EXIT_NO_RESPONSE = 2


def _state_option(func: F) -> F:
    return click.option(
        "--state",
        "state",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="State directory (default ./.meshfed/<federation>/).",
    )(func)


def _spec_option(func: F) -> F:
    return click.option(
        "--spec",
        "spec",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        default=None,
        help="Spec of the federation (to find its state directory).",
    )(func)


def _runtime(spec: Path | None, state: Path | None) -> Runtime:
    return Runtime(locate_state(spec, state))


# --- progress ----------------------------------------------------------------------------------


class _RichProgress:
    """``runtime.Progress`` on a rich progress display (stderr, gone when done)."""

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


# --- up ----------------------------------------------------------------------------------------


@click.command()
@click.argument("spec", required=False, type=click.Path(path_type=Path, dir_okay=False))
@_state_option
@click.option(
    "--watch",
    is_flag=True,
    help="Then stay in the foreground and apply every saved edit of SPEC live (one line per "
    "edit). Ctrl-C or SIGTERM stops watching and leaves the federation running.",
)
def up(spec: Path | None, state: Path | None, watch: bool) -> None:
    """Run every mesh of SPEC here on real Envoy (default: the bundled bank example).

    Starts in the background and returns once every Envoy is ready and every import answered a
    probe. Run it again after editing SPEC to apply the change live (no Envoy restart).

    With --watch, up stays in the foreground instead and applies each saved edit of SPEC the
    same way as a new run of up, printing one line per edit: what changed and how long it took.
    A bad edit prints the same error up would and changes nothing; the federation keeps running
    on the last good spec, and the next good edit applies. Ctrl-C or SIGTERM only stops
    watching: the federation keeps running, as after up, until meshfed down (a second Ctrl-C
    while an edit is being applied aborts that edit).
    """
    with reported(PKIError, LocalError, effect="nothing was started"):
        spec_path = spec if spec is not None else default_spec()
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
        try:
            with bar:
                report = runtime.up(ws)
        except KeyboardInterrupt:
            err.print("interrupted: stopped what this run had started", markup=False)
            sys.exit(130)
    _print_up(report, runtime)
    if not report.ok:
        failed = [p for p in report.probes if not p.ok]
        for p in failed:
            err.print(f"probe failed: {p.probe.mesh} {p.probe.key}: {p.detail}", markup=False)
        err.print(
            "the federation is running; see meshfed logs --boundary and meshfed status",
            markup=False,
        )
        if watcher is None:
            sys.exit(1)
    if watcher is not None:
        runtime.progress = Silent()
        _watch(watcher, ws, runtime)


# --- up --watch ------------------------------------------------------------------------------


class _StopSignals:
    """SIGINT and SIGTERM while watching. Between edits they end the watch (``requested``, and
    the watcher wakes up through ``fd``, a ``signal.set_wakeup_fd`` pipe: nothing is raised in
    the middle of printing). During an edit the first one lets the edit finish, and the watch
    ends after it; a second one aborts the edit (KeyboardInterrupt: the runtime stops what the
    edit had started, as for an interrupted ``up``).
    """

    def __init__(self) -> None:
        self.applying = False
        self.requested = False
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, signum: int, frame: object) -> None:
        if self.applying and signum == signal.SIGTERM:
            # As SIGINT: the runtime holds SIGINT back while it records a process it started.
            signal.raise_signal(signal.SIGINT)
            return
        if self.applying and self.requested:
            raise KeyboardInterrupt
        if self.applying:
            err.print(
                "stopping after this edit is applied (Ctrl-C again aborts the edit)",
                markup=False,
            )
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self.fd)
        os.close(self._write_fd)


def _watch(watcher: FileWatcher, ws: Workspace, runtime: Runtime) -> None:
    """Apply every saved edit of the spec until Ctrl-C / SIGTERM; the federation keeps running."""
    spec_path, state_dir, plan = ws.spec_path, ws.state_dir, ws.plan
    signals = _StopSignals()
    try:
        out.print(
            f"watching {spec_path} for edits ({watcher.how}); Ctrl-C stops watching, the "
            "federation keeps running (meshfed down stops it)",
            markup=False,
            soft_wrap=True,
        )
        while not signals.requested:
            if not watcher.wait(wake=signals.fd) or signals.requested:
                continue
            signals.applying = True
            plan = _apply_edit(spec_path, state_dir, runtime, plan)
            signals.applying = False
    except KeyboardInterrupt:
        err.print(
            "interrupted: stopped what this edit had started; the federation keeps running on a "
            "partly applied edit (run meshfed up to finish it, meshfed down to stop it)",
            markup=False,
        )
        sys.exit(130)
    finally:
        signals.restore()
        watcher.close()
    out.print(
        "stopped watching; the federation keeps running (meshfed down stops it)", markup=False
    )


def _apply_edit(
    spec_path: Path, state_dir: Path, runtime: Runtime, plan: FederationPlan
) -> FederationPlan:
    """One saved edit, as a new run of ``up`` would apply it; the plan now running."""
    t0 = time.monotonic()
    stamp = datetime.now().strftime("%H:%M:%S")
    kept = "nothing was changed; the federation keeps running on the last good spec"
    try:
        ws = open_workspace(spec_path, state_dir)
    except SpecError as exc:
        for line in exc.lines:
            click.echo(line, err=True)
        click.echo(f"{exc.file}: {len(exc.lines)} problem(s); {kept}", err=True)
        return plan
    except (PKIError, LocalError) as exc:
        click.echo(f"error: {exc}", err=True)
        click.echo(kept, err=True)
        return plan
    try:
        report = runtime.up(ws)
    except LocalError as exc:
        click.echo(f"error: {exc}", err=True)
        click.echo(
            "the edit was not applied in full; what it started was stopped and the federation "
            "keeps running: fix the spec and save again",
            err=True,
        )
        return plan
    elapsed = time.monotonic() - t0
    line = _edit_line(stamp, spec_path.name, elapsed, security_diff(plan, ws.plan), report)
    out.print(line, markup=False, soft_wrap=True)
    for p in report.probes:
        if not p.ok:
            err.print(f"probe failed: {p.probe.mesh} {p.probe.key}: {p.detail}", markup=False)
    return ws.plan


def _edit_line(
    stamp: str, name: str, elapsed: float, changes: list[SecurityChange], report: UpReport
) -> str:
    """``12:03:04 applied bank.yaml in 118 ms: <what changed> | <Envoys> | <probes>``."""
    spec = "; ".join(str(c) for c in changes[:3]) or "no security-relevant change"
    if len(changes) > 3:
        spec += f" (+{len(changes) - 3} more)"
    envoys = [
        f"{verb} {_names(names)}"
        for verb, names in (
            ("started", [n for n in report.started if n != dashboard.DASHBOARD]),
            ("restarted", report.restarted),
            ("updated", sorted(report.updated)),
            ("stopped", report.stopped),
        )
        if names
    ]
    checked = [p for p in report.probes if p.checked]
    failed = [p for p in checked if not p.ok]
    probes = f"{len(checked)} import{'s' if len(checked) != 1 else ''} probed: " + (
        f"{len(failed)} FAILED" if failed else "ok"
    )
    if not checked:
        probes = "no import to probe again"
    return (
        f"{stamp} applied {name} in {elapsed * 1000:.0f} ms: {spec} | "
        f"{', '.join(envoys) or 'no Envoy changed'} | {probes}"
    )


def _names(names: list[str], shown: int = 3) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f" and {len(names) - shown} more"


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
                str(p.admin_port),
            )
        table.add_section()
    host = records.get(WORKLOAD_HOST)
    table.add_row("", "workload host", str(host.pid) if host else "-", "every app port", "-")
    out.print(table)

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
    out.print(imports)

    if not report.first_run:
        _print_changes(report)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)
    envoys = len(report.summary.processes)
    out.print(
        f"{envoys} Envoys and the workload host up in {report.elapsed:.1f} s "
        f"(state: {runtime.paths.root})",
        markup=False,
    )
    example = _example_call(report)
    if example:
        out.print(f"try: {example}", markup=False)
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


# --- status ------------------------------------------------------------------------------------


@click.command()
@click.argument("spec", required=False, type=click.Path(path_type=Path, dir_okay=False))
@_state_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--kube",
    "kube",
    is_flag=True,
    help="The Federation objects' status in the management cluster, as the controller wrote "
    "it (SPEC: the federation's name; default: all).",
)
@click.option("--kubeconfig", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--context", default=None, help="With --kube: the management cluster's context.")
def status(
    spec: Path | None,
    state: Path | None,
    as_json: bool,
    kube: bool = False,
    kubeconfig: Path | None = None,
    context: str | None = None,
) -> None:
    """Every process and its health, its ports, and each import's current source (--kube:
    the controller's view of Federations in a management cluster)."""
    if kube:
        from meshfed.cli.controller import print_kube_status

        print_kube_status(str(spec) if spec else None, kubeconfig, context, as_json)
        return
    with reported(PKIError, LocalError, effect="nothing was started"):
        runtime = _runtime(spec, state)
        st = collect_status(runtime)
    if as_json:
        click.echo(json.dumps(asdict(st), indent=2))
        return
    _print_status(st)
    record = runtime.processes().get(dashboard.DASHBOARD)
    url = dashboard.url(runtime.paths)
    if url and record is not None and record.alive:
        out.print(f"dashboard: {url} (pid {record.pid})", markup=False, soft_wrap=True)
    else:
        out.print("dashboard: not running (meshfed up starts it)", markup=False)


def _print_status(st: Status) -> None:
    table = Table(title=f"local federation {st.federation} ({st.state_dir})")
    for column in ("process", "pid", "health", "listens", "admin", "cert until"):
        table.add_column(column)
    now = datetime.now(UTC)
    for p in st.processes:
        health = "ready" if p.ready else ("alive, not ready" if p.alive else "stopped")
        style = "green" if p.ready else ("yellow" if p.alive else "red")
        cert = "-"
        if p.cert_expires:
            until = datetime.fromisoformat(p.cert_expires)
            cert = until.strftime("%Y-%m-%d %H:%M")
            if until <= now:
                cert = f"[red]EXPIRED {cert}[/] (run meshfed up)"
        table.add_row(
            p.name,
            str(p.pid) if p.pid and p.alive else "-",
            f"[{style}]{health}[/]",
            "\n".join(f"{n} {a}" for n, a in p.listens.items())
            if len(p.listens) <= 4
            else f"{len(p.listens)} ports",
            p.admin or "-",
            cert,
        )
    out.print(table)
    imports = Table(title="imports")
    for column in ("mesh", "local name", "serving now", "sources (failover order)"):
        imports.add_column(column)
    for imp in st.imports:
        sources = ", ".join(
            f"{s.mesh} ({'healthy' if s.healthy else 'unknown' if s.healthy is None else 'down'})"
            for s in imp.sources
        )
        imports.add_row(imp.mesh, imp.local, imp.current or "[red]none[/]", sources)
    out.print(imports)
    out.print(f"{st.running}/{len(st.processes)} processes running", markup=False)


# --- call --------------------------------------------------------------------------------------


@click.command()
@click.option("--mesh", "mesh", required=True, help="Mesh of the calling workload.")
@click.option(
    "--as", "as_", required=True, metavar="NS/SA", help="Namespace/serviceAccount of the caller."
)
@click.option("-X", "--request", "method", default=None, help="HTTP method (default GET/POST).")
@click.option("-d", "--data", "data", default=None, help="Request body (TCP: a line to echo).")
@click.option("-H", "--header", "headers", multiple=True, help="Extra header 'Name: value'.")
@click.option("-i", "--include", is_flag=True, help="Print the status line and headers too.")
@click.argument("url")
@_spec_option
@_state_option
def call(
    mesh: str,
    as_: str,
    method: str | None,
    data: str | None,
    headers: tuple[str, ...],
    include: bool,
    url: str,
    spec: Path | None,
    state: Path | None,
) -> None:
    """Call URL as workload NS/SA of MESH, through its sidecar.

    URL uses an import's local name, e.g. http://tokenizer.shop.svc.cluster.local/v1/tokenize
    (or tcp://ledger.shop.svc.cluster.local:9000 for a TCP import). Prints the response body.
    Exit 0 on 2xx, 1 on an HTTP error (status on stderr), 2 when no response came.
    """
    with reported(PKIError, LocalError, effect="nothing was started"):
        namespace, sep, service_account = as_.partition("/")
        if not sep or not namespace or not service_account:
            raise LocalError(f"--as {as_!r} is not NS/SA", "e.g. --as shop/checkout")
        runtime = _runtime(spec, state)
        workload = runtime.workload_for(mesh, namespace, service_account)
        layout = runtime.layout()
        if layout is None or mesh not in layout.meshes:
            raise LocalError("no port layout for this federation", "run meshfed up")
        sidecar = layout.meshes[mesh].sidecars[workload]
        process = next(
            p.name for p in runtime.summary().processes if p.mesh == mesh and p.workload == workload
        )
        record = runtime.processes().get(process)
        if record is None or not record.alive:
            raise LocalError(f"the sidecar of {mesh}/{workload} is not running", "run meshfed up")
        body = data.encode() if data is not None else None
        if url.startswith("tcp://"):
            port = tcp_port(sidecar, url)
            try:
                reply = tcp_call(port, body)
            except NoResponse as exc:
                click.echo(f"no response: {exc}", err=True)
                sys.exit(EXIT_NO_RESPONSE)
            sys.stdout.buffer.write(reply)
            return
        extra = []
        for h in headers:
            name, sep, value = h.partition(":")
            if not sep:
                raise LocalError(f"header {h!r} is not 'Name: value'")
            extra.append((name.strip(), value.strip()))
        verb = method or ("POST" if body is not None else "GET")
        try:
            resp = http_call(sidecar.outbound_port, verb, url, body, extra)
        except NoResponse as exc:
            click.echo(f"no response: {exc}", err=True)
            sys.exit(EXIT_NO_RESPONSE)
    _print_response(resp, include)
    if not resp.ok:
        click.echo(f"HTTP {resp.status} {resp.reason}", err=True)
        sys.exit(EXIT_HTTP_ERROR)


def _print_response(resp: Response, include: bool) -> None:
    if include:
        click.echo(f"HTTP {resp.status} {resp.reason}")
        for name, value in resp.headers:
            click.echo(f"{name}: {value}")
        click.echo("")
    sys.stdout.buffer.write(resp.body)
    if resp.body and not resp.body.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


# --- logs --------------------------------------------------------------------------------------


@click.command()
@click.option("--mesh", "mesh", default=None, help="Only this mesh's gateways.")
@click.option(
    "--boundary",
    is_flag=True,
    help="Every crossing at ingress and egress, with TLS handshake failures.",
)
@click.option("--json", "as_json", is_flag=True, help="The raw JSON lines.")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new entries.")
@_spec_option
@_state_option
def logs(
    mesh: str | None,
    boundary: bool,
    as_json: bool,
    follow_: bool,
    spec: Path | None,
    state: Path | None,
) -> None:
    """The federation gateways' access logs (caller identity, SNI, decision)."""
    with reported(PKIError, LocalError, effect="nothing was started"):
        runtime = _runtime(spec, state)
        summary = runtime.summary()
        files = gateway_logs(runtime.root, summary, mesh, boundary)
        entries = read_entries(files, boundary)

    def show(batch: list[LogEntry]) -> None:
        for entry in boundary_view(batch, summary) if boundary else batch:
            if as_json:
                doc = {"process": entry.process, "file": entry.file, **entry.doc}
                click.echo(json.dumps(doc))
            else:
                out.print(summary_line(entry, summary), markup=False, soft_wrap=True)

    show(entries)
    if follow_:
        try:
            for entry in follow(files, boundary):
                show([entry])
        except KeyboardInterrupt:
            return


# --- down --------------------------------------------------------------------------------------


@click.command()
@_spec_option
@_state_option
def down(spec: Path | None, state: Path | None) -> None:
    """Stop every process of the local federation (certificates and ports are kept)."""
    with reported(PKIError, LocalError, effect="nothing was started"):
        runtime = _runtime(spec, state)
        stopped = runtime.down()
    if stopped:
        out.print(f"stopped {len(stopped)} processes ({runtime.paths.root})", markup=False)
    else:
        out.print("nothing was running", markup=False)


# --- lab ---------------------------------------------------------------------------------------


@click.group()
def lab() -> None:
    """Break things on purpose: stop and restart a mesh's ingress gateway."""


@lab.command("stop-gateway")
@click.argument("mesh")
@_spec_option
@_state_option
def stop_gateway(mesh: str, spec: Path | None, state: Path | None) -> None:
    """Stop MESH's ingress gateway (its peers fail over to the next exporter)."""
    with reported(PKIError, LocalError, effect="nothing was started"):
        record = _runtime(spec, state).stop_gateway(mesh)
    out.print(f"stopped {record.name} (pid {record.pid})", markup=False)


@lab.command("start-gateway")
@click.argument("mesh")
@_spec_option
@_state_option
def start_gateway(mesh: str, spec: Path | None, state: Path | None) -> None:
    """Start MESH's ingress gateway again (same configuration and ports)."""
    with reported(PKIError, LocalError, effect="nothing was started"):
        record = _runtime(spec, state).start_gateway(mesh)
    out.print(f"started {record.name} (pid {record.pid})", markup=False)


def register(group: click.Group) -> None:
    """Add the local-runtime commands to the ``meshfed`` group."""
    for command in (up, status, call, logs, down, lab):
        group.add_command(command)
