"""``up``, ``down`` and the lab commands: the lifecycle of a local federation's processes.

``up`` is idempotent and live: it allocates (or keeps) ports, issues (or keeps) certificates,
renders every Envoy's configuration, starts what is missing, updates running Envoys through their
watched files (never restarting one whose bootstrap is unchanged), stops what the spec no longer
has, and probes the imports (after a live change: those whose path it changed, and any that did
not pass before). Everything it starts is recorded at once in ``processes.json``; if it is
interrupted (Ctrl-C, SIGTERM, SIGHUP) or fails, it stops what this run started
(``supervisor.py``).

A re-apply is meant to be cheap (``meshfed up --watch`` runs one per saved edit): the ports our
processes hold are read from their own descriptors only, unchanged xDS files are recognised by
digest without being re-read (``xds.py``), running Envoys of one role are updated at once, and
the inotify headroom is counted only when an Envoy starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from meshfed.holds import hold
from meshfed.local import adminsock, dashboard
from meshfed.local.certs import identity_for
from meshfed.local.errors import LocalError
from meshfed.local.fdlimit import raise_open_files
from meshfed.local.files import read_json, write_json
from meshfed.local.health import await_first_choice
from meshfed.local.layout import (
    admin_sockets,
    all_ports,
    allocate_layout,
    check_ingresses,
    layout_from_json,
    layout_to_json,
)
from meshfed.local.paths import RuntimePaths
from meshfed.local.ports import LOOPBACK, describe_holder, port_free, ports_held_by
from meshfed.local.probe import (
    Hop,
    Probe,
    ProbeResult,
    partner_sources,
    plan_probes,
    probe_key,
    probe_path,
    run_probe,
)
from meshfed.local.prober import ProbeLedger
from meshfed.local.procs import envoy_watches, find_envoy
from meshfed.local.report import Progress, Silent, UpReport
from meshfed.local.state import WORKLOAD_HOST, ProcessRecord, load_processes
from meshfed.local.summary import RuntimeSummary, load_summary, save_summary, summarize
from meshfed.local.supervisor import Supervisor
from meshfed.local.workloads import WorkloadSpec
from meshfed.local.xds import EnvoyFiles, Pending, secrets_for
from meshfed.plan.model import FederationPlan
from meshfed.render.envoy.files import process_dir
from meshfed.render.envoy.layout import LocalLayout
from meshfed.workspace import Workspace

__all__ = ["Progress", "Runtime", "Silent", "UpReport"]

PROBE_TIMEOUT = 10.0
ROLE_ORDER = {"ingress": 0, "egress": 1, "sidecar": 2}
"""Live updates go exporter side first, consumer side last: a route never leads nowhere."""


class Runtime:
    """The local runtime in one state directory."""

    def __init__(self, state_dir: Path, progress: Progress | None = None) -> None:
        self.paths = RuntimePaths(state_dir.resolve())
        self.progress: Progress = progress or Silent()
        self.sup = Supervisor(self.paths)

    @property
    def root(self) -> Path:
        return self.paths.root

    @property
    def records(self) -> dict[str, ProcessRecord]:
        return self.sup.records

    # --- the workload host and the dashboard

    def _workload_specs(self, plan: FederationPlan, layout: LocalLayout) -> list[WorkloadSpec]:
        return [
            WorkloadSpec(
                mesh=m.name,
                workload=w.ref,
                protocol=w.protocol,
                port=layout.meshes[m.name].sidecars[w.ref].app_port,
                spiffe_id=w.spiffe_id,
                ingress_id=m.ingress.spiffe_id,
            )
            for m in plan.meshes
            for w in m.workloads
        ]

    def _ensure_workload_host(self, specs: list[WorkloadSpec], report: UpReport) -> None:
        config = {"workloads": [s.to_json() for s in specs]}
        changed = read_json(self.paths.workloads) != config
        if changed:
            write_json(self.paths.workloads, config)
        record = self.records.get(WORKLOAD_HOST)
        if record is not None and record.alive:
            if changed:
                os.kill(record.pid, signal.SIGHUP)
                report.updated[WORKLOAD_HOST] = "workloads"
            else:
                report.unchanged.append(WORKLOAD_HOST)
        else:
            argv = [sys.executable, "-m", "meshfed.local.workloads", str(self.paths.workloads)]
            self.sup.start(WORKLOAD_HOST, "workloads", argv, self.paths.logs / "workloads.log")
            report.started.append(WORKLOAD_HOST)
        self.sup.wait_ports(WORKLOAD_HOST, [s.port for s in specs], _connectable)

    def _ensure_dashboard(self, reserved: set[int], report: UpReport) -> None:
        """Start the dashboard unless it runs (it reloads the picture itself on a new ``up``)."""
        record = self.records.get(dashboard.DASHBOARD)
        if record is not None and record.alive:
            report.unchanged.append(dashboard.DASHBOARD)
        else:
            config = dashboard.prepare(self.paths, reserved)
            self.sup.start(
                dashboard.DASHBOARD,
                "dashboard",
                dashboard.argv(config),
                dashboard.log_path(self.paths),
            )
            report.started.append(dashboard.DASHBOARD)
            dashboard.wait_listening(self.paths, lambda: self.records[dashboard.DASHBOARD].alive)
        report.dashboard = dashboard.url(self.paths)

    # --- up

    def up(self, ws: Workspace) -> UpReport:
        t0 = time.monotonic()
        self.sup.started_now = []
        with self.paths.locked():
            self.sup.load()
            first_run = not self.sup.running()
            try:
                report = self._up(ws, first_run)
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM, SIGHUP) or failed: stop what this run started,
                # keep the rest.
                self.sup.stop_started()
                raise
        report.elapsed = time.monotonic() - t0
        return report

    def _up(self, ws: Workspace, first_run: bool) -> UpReport:
        plan = ws.plan
        self.progress.phase("checking state and ports")
        envoy = find_envoy()
        notes = self.sup.cleanup_stale()
        notes += raise_open_files(
            max((m.limits.descriptors_needed for m in plan.meshes), default=0)
        )
        # Only our recorded processes' descriptors are read, not every process's on the host.
        own_ports = ports_held_by(r.pid for r in self.records.values() if r.alive)
        check_ingresses(plan, own_ports)
        previous = layout_from_json(read_json(self.paths.layout))
        layout, moved = allocate_layout(
            plan, previous, own_ports, adminsock.choose_dir(self.paths.root)
        )
        write_json(self.paths.layout, layout_to_json(layout))
        processes = ws.envoy(layout, self.root)
        summary = summarize(plan, ws.spec_path.resolve(), processes)
        report = UpReport(plan.name, ws.state_dir, layout, summary, first_run, notes=notes + moved)

        # Certificates and files.
        self.progress.phase("certificates", len(processes))
        now = datetime.now(UTC)
        wanted: dict[str, tuple[EnvoyFiles, Pending]] = {}
        for process in processes:
            files = EnvoyFiles(self.root, process)
            identity = None
            if process.spiffe_id is not None:
                ident = identity_for(
                    ws.pki.meshes[process.mesh],
                    process.spiffe_id,
                    plan.workload_ttl,
                    now,
                    files.kept_default_secret(),
                )
                if ident.issued:
                    report.certificates.append(process.name)
                identity = (ident.chain_pem, ident.key_pem)
            wanted[process.name] = (files, files.diff(secrets_for(process, identity)))
            self.progress.advance()

        # The workload host first: sidecars forward to it.
        self.progress.phase("workloads")
        self._ensure_workload_host(self._workload_specs(plan, layout), report)
        self._ensure_dashboard(all_ports(layout) | {m.ingress.port for m in plan.meshes}, report)
        hold("up:workloads")

        # New Envoys (and those whose bootstrap changed) start from their files.
        running = self.sup.running("envoy")
        to_start = [n for n in wanted if n not in running]
        to_restart = [n for n in wanted if n in running and wanted[n][1].bootstrap is not None]
        self.sup.check_inotify(
            # Each ECDS file is a watched source too.
            sum(
                envoy_watches(
                    len(wanted[n][0].process.sds_names) + len(wanted[n][0].process.extensions)
                )
                for n in to_start
            )
        )
        if to_restart:
            self.sup.stop_records(to_restart)
        self.progress.phase(f"starting {len(to_start) + len(to_restart)} Envoys")
        for name in to_start + to_restart:
            files, pending = wanted[name]
            files.write_cold(pending)
            self.sup.start_envoy(envoy, name)
        hold("up:envoys")
        fresh = to_start + to_restart
        self.progress.phase("waiting for Envoys", len(fresh))
        self.sup.wait_ready(
            {n: wanted[n][0].process.admin_socket for n in fresh}, advance=self.progress.advance
        )
        for name in fresh:
            self.sup.check_accepted(name, wanted[name][0].process.admin_socket)
        report.started += to_start
        report.restarted += to_restart

        # Running Envoys: live, exporter side first; within one role, all at once.
        live = [n for n in wanted if n in running and n not in to_restart]
        report.unchanged += [n for n in live if wanted[n][1].empty]
        changed = [n for n in live if not wanted[n][1].empty]
        self.progress.phase("updating running Envoys", len(changed))
        for stage in _stages(changed, lambda n: wanted[n][0].process.role):
            for name in _each_done(stage, lambda n: _apply(wanted[n])):
                report.updated[name] = wanted[name][1].describe()
                self.progress.advance()

        # What the spec no longer has.
        gone = sorted(n for n in running if n not in wanted)
        if gone:
            self.progress.phase(f"stopping {len(gone)} Envoys")
            report.stopped += self.sup.stop_records(gone)
            for name in gone:
                shutil.rmtree(process_dir(self.root, name), ignore_errors=True)
        # Sockets no Envoy listens on any more (stopped, or moved to another directory).
        old_dir = Path(previous.admin_dir) if previous and previous.admin_dir else None
        adminsock.remove(
            admin_sockets(previous) - admin_sockets(layout),
            old_dir if old_dir != Path(layout.admin_dir) else None,
            self.root,
        )
        save_summary(self.paths, summary)

        self.progress.phase("waiting for each import's first choice")
        # What this run started or changed, as (mesh, role, workload); None: everything. A
        # reloaded workload host (SIGHUP) changed only apps whose sidecars changed with them; a
        # started one started every app.
        touched = {*report.started, *report.restarted, *report.updated}
        hops: set[Hop] | None = None
        if not first_run and WORKLOAD_HOST not in report.started:
            hops = {(p.mesh, p.role, p.workload) for p in processes if p.name in touched}
        await_first_choice(summary, self.sup.running(), hops)
        probes = plan_probes(plan, layout)
        stale = self._probes_to_run(plan, probes, hops)
        self.progress.phase("probing imports", len(stale))
        hold("up:probes")
        results = {}
        probing = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(stale)))) as pool:
            ledger = ProbeLedger(self.paths)
            for result in pool.map(
                lambda p: run_probe(p, PROBE_TIMEOUT, ledger, partners=partner_sources(plan, p)),
                stale,
            ):
                results[result.probe] = result
                self.progress.advance()
        report.probing = time.monotonic() - probing
        for probe in probes:
            report.probes.append(
                results.get(probe)
                or ProbeResult(probe, True, "passed before; nothing on its path changed", False)
            )
        write_json(
            self.paths.probes,
            {
                "version": 1,
                "passed": sorted(probe_key(r.probe) for r in report.probes if r.ok),
                # What ``status`` reports (``--check`` fails on it) until the next ``up``.
                "failed": [
                    {"mesh": r.probe.mesh, "import": r.probe.key, "detail": r.detail}
                    for r in report.probes
                    if not r.ok
                ],
            },
        )
        return report

    def _probes_to_run(
        self, plan: FederationPlan, probes: list[Probe], hops: set[Hop] | None
    ) -> list[Probe]:
        """The probes to run: all (``hops`` None), else those that did not pass last time or
        whose path has a process this run started or changed (``hops``)."""
        if hops is None:
            return probes
        doc = read_json(self.paths.probes)
        passed = set(doc.get("passed", [])) if isinstance(doc, dict) else set()
        return [p for p in probes if probe_key(p) not in passed or probe_path(plan, p) & hops]

    # --- down

    def down(self) -> list[str]:
        """Stop every process of this runtime; the names (and leftover pids) that were stopped."""
        with self.paths.locked():
            self.sup.load()
            stopped = sorted(self.sup.running())
            self.sup.stop_records(list(self.records))
            stopped += [f"pid {pid} (leftover)" for pid in self.sup.stop_leftovers()]
            self.sup.records = {}
            self.sup.save()
            layout = self.layout()
            if layout is not None:
                admin_dir = Path(layout.admin_dir) if layout.admin_dir else None
                adminsock.remove(admin_sockets(layout), admin_dir, self.root)
            return stopped

    # --- lab

    def _ingress_name(self, mesh: str) -> tuple[str, str]:
        summary = self.summary()
        summary.mesh(mesh)
        for p in summary.processes:
            if p.mesh == mesh and p.role == "ingress":
                return p.name, p.admin_socket
        raise LocalError(f"mesh {mesh} has no ingress gateway process")

    def stop_gateway(self, mesh: str) -> ProcessRecord:
        with self.paths.locked():
            self.sup.load()
            name, _ = self._ingress_name(mesh)
            record = self.records.get(name)
            if record is None or not record.alive:
                raise LocalError(
                    f"the ingress gateway of {mesh} is not running",
                    f"meshfed lab start-gateway {mesh}",
                )
            self.sup.stop_records([name])
            return record

    def start_gateway(self, mesh: str) -> ProcessRecord:
        with self.paths.locked():
            self.sup.load()
            name, admin_socket = self._ingress_name(mesh)
            record = self.records.get(name)
            if record is not None and record.alive:
                raise LocalError(
                    f"the ingress gateway of {mesh} is already running (pid {record.pid})"
                )
            if not (process_dir(self.root, name) / "bootstrap.json").is_file():
                raise LocalError(f"no configuration for {name}", "run meshfed up")
            info = self.summary().mesh(mesh)
            if not port_free(info.ingress_port, info.ingress_address):
                raise LocalError(
                    f"the ingress port {info.ingress_address}:{info.ingress_port} of {mesh} is "
                    "in use" + describe_holder(info.ingress_port),
                    "stop what listens there",
                )
            self.sup.forget(name)
            self.sup.started_now = []
            self.sup.start_envoy(find_envoy(), name)
            try:
                # The admin directory as ``up`` left it: checked again before Envoy binds there.
                adminsock.ensure_private_dir(Path(admin_socket).parent)
                self.sup.wait_ready({name: admin_socket})
                self.sup.check_accepted(name, admin_socket)
            except BaseException:
                self.sup.stop_started()
                raise
            return self.records[name]

    # --- reading

    def summary(self) -> RuntimeSummary:
        summary = load_summary(self.paths)
        if summary is None:
            raise LocalError(
                f"no local federation in {self.paths.state_dir}",
                "start it with meshfed up (or pass the --state of a running one)",
            )
        return summary

    def layout(self) -> LocalLayout | None:
        return layout_from_json(read_json(self.paths.layout))

    def processes(self) -> dict[str, ProcessRecord]:
        return load_processes(self.paths)

    def workload_for(self, mesh: str, namespace: str, service_account: str) -> str:
        """``<ns>/<name>`` of the first workload of ``mesh`` running as that service account,
        else of the workload of that name (``up`` names its probes' callers by workload, as the
        spec's ``workload: <ns>/<name>`` does)."""
        summary = self.summary()
        summary.mesh(mesh)
        ours = [w for w in summary.workloads if w.mesh == mesh]
        for w in ours:
            if w.namespace == namespace and w.service_account == service_account:
                return w.ref
        for w in ours:
            if w.ref == f"{namespace}/{service_account}":
                return w.ref
        known = sorted(f"{w.namespace}/{w.service_account}" for w in ours)
        raise LocalError(
            f"mesh {mesh} has no workload with namespace {namespace} and serviceAccount "
            f"(or name) {service_account}",
            "use one of: " + ", ".join(known),
        )


def _stages(names: Iterable[str], role: Callable[[str], str]) -> list[list[str]]:
    """``names`` in groups by role, in ``ROLE_ORDER`` (sorted within a group)."""
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(ROLE_ORDER.get(role(name), len(ROLE_ORDER)), []).append(name)
    return [sorted(groups[rank]) for rank in sorted(groups)]


def _each_done(names: list[str], work: Callable[[str], None]) -> Iterator[str]:
    """Run ``work`` on every name (in threads when there are several); yield each name when its
    work is done, in order. The first failure is raised once every started work has ended."""
    if len(names) == 1:
        work(names[0])
        yield names[0]
        return
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        for name, _ in zip(names, pool.map(work, names), strict=True):
            yield name


def _apply(item: tuple[EnvoyFiles, Pending]) -> None:
    files, pending = item
    files.apply_live(pending)


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False
