"""``meshfed status / call / logs / down / lab`` (and ``up``, from ``cli/up.py``): the local
federation on real Envoy.

Every command names its federation the same way: ``[SPEC]`` as an argument or ``--spec SPEC``
(both accepted), or ``--state DIR``; with none, the one local federation under ``./.meshfed/``.

Wired into the main group with ``register(main)``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.table import Table

from meshfed.cli.common import console, reported, spec_inputs, state_option, the_spec, unclipped
from meshfed.cli.up import admin_sockets_line, up
from meshfed.local import dashboard
from meshfed.local.client import (
    NoResponse,
    Response,
    check_imported,
    http_call,
    tcp_call,
    tcp_port,
)
from meshfed.local.errors import LocalError
from meshfed.local.locate import locate_state
from meshfed.local.logs import (
    LogEntry,
    boundary_view,
    follow,
    gateway_logs,
    hop_logs,
    marked,
    read_entries,
    summary_line,
)
from meshfed.local.prober import ledger_path, load_marks
from meshfed.local.runtime import Runtime
from meshfed.local.status import Status, collect_status
from meshfed.pki.errors import PKIError

out = console()
err = console(stderr=True)

EXIT_HTTP_ERROR = 1
EXIT_NO_RESPONSE = 2


def _runtime(spec: Path | None, spec_option: Path | None, state: Path | None) -> Runtime:
    return Runtime(locate_state(the_spec(spec, spec_option), state))


# --- status ------------------------------------------------------------------------------------

NOT_HEALTHY = 3
"""``status --check``'s exit status when anything is not healthy (1 is an error: nothing read)."""


@click.command()
@spec_inputs
@state_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--kube",
    "kube",
    is_flag=True,
    help="The Federation objects' status in the management cluster, as the controller wrote "
    "it (all of them, or --federation's).",
)
@click.option("--federation", default=None, help="With --kube: one Federation, by name.")
@click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --kube: kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).",
)
@click.option("--context", default=None, help="With --kube: the management cluster's context.")
@click.option(
    "--check",
    is_flag=True,
    help=f"Exit {NOT_HEALTHY} when anything is not healthy: a process stopped or not ready, an "
    "import no source serves or one of its sources down, an import probe that failed at the "
    "last up (each listed on stderr). Without it, status exits 0 whenever it could read the "
    "federation.",
)
def status(
    spec: Path | None,
    spec_option: Path | None,
    state: Path | None,
    as_json: bool,
    kube: bool = False,
    federation: str | None = None,
    kubeconfig: Path | None = None,
    context: str | None = None,
    check: bool = False,
) -> None:
    """Every process and its health, its ports, and each import's current source (--kube:
    the controller's view of Federations in a management cluster).

    Exit status: 0; 1 when there is no federation to read (or bad input); with --check, 3
    when the federation is not healthy."""
    if kube:
        if check:
            raise click.UsageError("--check judges the local federation; not with --kube")
        from meshfed.cli.controller import print_kube_status

        print_kube_status(federation, kubeconfig, context, as_json)
        return
    with reported(PKIError, LocalError, effect="nothing was started"):
        runtime = _runtime(spec, spec_option, state)
        st = collect_status(runtime)
    problems = st.problems
    if as_json:
        click.echo(json.dumps({**asdict(st), "problems": problems}, indent=2))
    else:
        _print_status(st)
        record = runtime.processes().get(dashboard.DASHBOARD)
        url = dashboard.url(runtime.paths)
        if url and record is not None and record.alive:
            out.print(f"dashboard: {url} (pid {record.pid})", markup=False, soft_wrap=True)
        else:
            out.print("dashboard: not running (meshfed up starts it)", markup=False)
        if problems:
            out.print(f"not healthy: {len(problems)} problem(s)", markup=False)
    if check and problems:
        for line in problems:
            click.echo(f"not healthy: {line}", err=True)
        sys.exit(NOT_HEALTHY)


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
            Path(p.admin).name if p.admin else "-",
            cert,
        )
    out.print(unclipped(table))
    if st.admin_dir:
        out.print(admin_sockets_line(st.admin_dir), markup=False, soft_wrap=True)
    imports = Table(title="imports")
    for column in ("mesh", "local name", "serving now", "sources (failover order)"):
        imports.add_column(column)
    for imp in st.imports:
        sources = ", ".join(
            f"{s.mesh} ({'healthy' if s.healthy else 'unknown' if s.healthy is None else 'down'})"
            for s in imp.sources
        )
        imports.add_row(imp.mesh, imp.local, imp.current or "[red]none[/]", sources)
    out.print(unclipped(imports))
    out.print(f"{st.running}/{len(st.processes)} processes running", markup=False)


# --- call --------------------------------------------------------------------------------------


@click.command()
@click.option("--mesh", "mesh", required=True, help="Mesh of the calling workload.")
@click.option(
    "--as",
    "as_",
    required=True,
    metavar="NS/SA",
    help="Namespace/serviceAccount of the caller (or namespace/name of its workload).",
)
@click.option(
    "-X", "--request", "method", default=None, help="HTTP method (default GET, POST with -d)."
)
@click.option("-d", "--data", "data", default=None, help="Request body (TCP: a line to echo).")
@click.option("-H", "--header", "headers", multiple=True, help="Extra header 'Name: value'.")
@click.option("-i", "--include", is_flag=True, help="Print the status line and headers too.")
@click.argument("url")
@spec_inputs
@state_option
def call(
    mesh: str,
    as_: str,
    method: str | None,
    data: str | None,
    headers: tuple[str, ...],
    include: bool,
    url: str,
    spec: Path | None,
    spec_option: Path | None,
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
        runtime = _runtime(spec, spec_option, state)
        workload = runtime.workload_for(mesh, namespace, service_account)
        check_imported(runtime.summary(), mesh, url)
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
    help="Every crossing at ingress and egress, with TLS handshake failures; meshfed's own "
    "probes and rotation checks are marked (JSON: meshfed_probe).",
)
@click.option("--json", "as_json", is_flag=True, help="The raw JSON lines.")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new entries.")
@spec_inputs
@state_option
def logs(
    mesh: str | None,
    boundary: bool,
    as_json: bool,
    follow_: bool,
    spec: Path | None,
    spec_option: Path | None,
    state: Path | None,
) -> None:
    """The federation gateways' access logs (caller identity, SNI, decision)."""
    with reported(PKIError, LocalError, effect="nothing was started"):
        runtime = _runtime(spec, spec_option, state)
        summary = runtime.summary()
        files = gateway_logs(runtime.root, summary, mesh, boundary)
        hops = hop_logs(runtime.root, summary)
        entries = read_entries(files, boundary)
        marks = load_marks(runtime.paths)

    def refresh() -> None:
        marks.read(ledger_path(runtime.paths))  # probes recorded since, then their hops
        marks.read_hops(hops)

    def show(batch: list[LogEntry]) -> None:
        refresh()
        batch = marked(batch, marks, refresh)
        for entry in boundary_view(batch, summary) if boundary else batch:
            if as_json:
                doc = {"process": entry.process, "file": entry.file, **entry.doc}
                if entry.probe is not None:
                    doc["meshfed_probe"] = entry.probe
                click.echo(json.dumps(doc))
            else:
                out.print(summary_line(entry, summary), markup=False, soft_wrap=True)

    show(entries)
    if follow_:
        try:
            for batch in follow(files, boundary):
                show(batch)
        except KeyboardInterrupt:
            return


# --- down --------------------------------------------------------------------------------------


@click.command()
@spec_inputs
@state_option
def down(spec: Path | None, spec_option: Path | None, state: Path | None) -> None:
    """Stop every process of the local federation (certificates and ports are kept)."""
    with reported(PKIError, LocalError, effect="nothing was stopped"):
        runtime = _runtime(spec, spec_option, state)
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
@spec_inputs
@state_option
def stop_gateway(
    mesh: str, spec: Path | None, spec_option: Path | None, state: Path | None
) -> None:
    """Stop MESH's ingress gateway (its peers fail over to the next exporter)."""
    with reported(PKIError, LocalError, effect="nothing was stopped"):
        record = _runtime(spec, spec_option, state).stop_gateway(mesh)
    out.print(f"stopped {record.name} (pid {record.pid})", markup=False)


@lab.command("start-gateway")
@click.argument("mesh")
@spec_inputs
@state_option
def start_gateway(
    mesh: str, spec: Path | None, spec_option: Path | None, state: Path | None
) -> None:
    """Start MESH's ingress gateway again (same configuration and ports)."""
    with reported(PKIError, LocalError, effect="nothing was started"):
        record = _runtime(spec, spec_option, state).start_gateway(mesh)
    out.print(f"started {record.name} (pid {record.pid})", markup=False)


def register(group: click.Group) -> None:
    """Add the local-runtime commands to the ``meshfed`` group."""
    for command in (up, status, call, logs, down, lab):
        group.add_command(command)
