"""``up``, ``down`` and the lab commands: the lifecycle of a local federation's processes.

``up`` is idempotent and live: it allocates (or keeps) ports, issues (or keeps) certificates,
renders every Envoy's configuration, starts what is missing, updates running Envoys through their
watched files (never restarting one whose bootstrap is unchanged), stops what the spec no longer
has, and probes the imports (after a live change: those whose path it changed, and any that did
not pass before). Everything it starts is recorded at once in ``processes.json``; if it is
interrupted, it stops what this run started.

A re-apply is meant to be cheap (``meshfed up --watch`` runs one per saved edit): the ports our
processes hold are read from their own descriptors only, unchanged xDS files are recognised by
digest without being re-read (``xds.py``), running Envoys of one role are updated at once, and
the inotify headroom is counted only when an Envoy starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from meshfed.local import admin, dashboard
from meshfed.local.certs import identity_for
from meshfed.local.errors import LocalError
from meshfed.local.files import read_json, write_json
from meshfed.local.health import health_from_clusters
from meshfed.local.layout import (
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
    plan_probes,
    probe_key,
    probe_path,
    run_probe,
)
from meshfed.local.procs import (
    INOTIFY_FIX,
    cmdline,
    envoy_watches,
    find_envoy,
    inotify_headroom,
    processes_mentioning,
    spawn,
    start_time,
    stop,
)
from meshfed.local.state import (
    WORKLOAD_HOST,
    ProcessRecord,
    load_processes,
    save_processes,
)
from meshfed.local.summary import (
    ImportInfo,
    RuntimeSummary,
    load_summary,
    save_summary,
    summarize,
)
from meshfed.local.workloads import WorkloadSpec
from meshfed.local.xds import EnvoyFiles, Pending, ecds_stats, ecds_stats_pattern, secrets_for
from meshfed.plan.model import FederationPlan
from meshfed.render.envoy.files import process_dir, process_slug
from meshfed.render.envoy.layout import LocalLayout
from meshfed.workspace import Workspace

READY_TIMEOUT = 30.0
PROBE_TIMEOUT = 10.0
POLL = 0.005
"""How often a starting process is asked whether it is ready (each ask is one local connect)."""
ROLE_ORDER = {"ingress": 0, "egress": 1, "sidecar": 2}
"""Live updates go exporter side first, consumer side last: a route never leads nowhere."""


class Progress(Protocol):
    def phase(self, text: str, total: int | None = None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class Silent:
    """No progress display."""

    def phase(self, text: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class UpReport:
    federation: str
    state_dir: Path
    layout: LocalLayout
    summary: RuntimeSummary
    first_run: bool
    started: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    updated: dict[str, str] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    """Processes that got a newly issued certificate."""
    notes: list[str] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    elapsed: float = 0.0
    dashboard: str | None = None
    """The dashboard's URL."""

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.probes)


class Runtime:
    """The local runtime in one state directory."""

    def __init__(self, state_dir: Path, progress: Progress | None = None) -> None:
        self.paths = RuntimePaths(state_dir.resolve())
        self.progress: Progress = progress or Silent()
        self.records: dict[str, ProcessRecord] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._started_now: list[str] = []
        """Processes this command started (stopped again if it is interrupted)."""
        self._written: tuple[int, int, int, int] | None = None
        """Identity of ``processes.json`` as this object last wrote it (None: unknown)."""

    @property
    def root(self) -> Path:
        return self.paths.root

    # --- records

    def _load(self) -> None:
        self.records = load_processes(self.paths)

    def _save(self) -> None:
        save_processes(self.paths, self.records)
        self._written = _file_identity(self.paths.processes)

    def _records_untouched(self) -> bool:
        """``processes.json`` is as this object last wrote it: no other command changed the
        runtime since (an ``up --watch`` between two edits)."""
        return self._written is not None and _file_identity(self.paths.processes) == self._written

    def _forget(self, name: str) -> None:
        self.records.pop(name, None)
        self._children.pop(name, None)

    def _leftovers(self) -> list[int]:
        """Our kind of process naming this runtime's files, but not (or no longer) recorded."""
        known = {r.pid for r in self.records.values() if r.alive}
        found = []
        for pid in processes_mentioning(self.root):
            argv = cmdline(pid)
            envoy = bool(argv) and Path(argv[0]).name == "envoy"
            host = "meshfed.local.workloads" in argv or dashboard.is_dashboard(argv)
            if (envoy or host) and pid not in known:
                found.append(pid)
        return found

    def _stop_records(self, names: Iterable[str]) -> list[str]:
        chosen = [self.records[n] for n in names if n in self.records]
        stop([(r.pid, r.start_time) for r in chosen])
        for r in chosen:
            self._forget(r.name)
        self._save()
        return [r.name for r in chosen]

    def _cleanup_stale(self) -> list[str]:
        notes = []
        # Leftovers come from a command that died between starting a process and recording it.
        # When the records are still as this object wrote them, no other command ran since, and
        # the scan of every process's command line is skipped.
        scan = not self._records_untouched()
        for name, record in sorted(self.records.items()):
            if not record.alive:
                notes.append(f"{name}: recorded pid {record.pid} is gone; cleaned up")
                self._forget(name)
        leftovers = self._leftovers() if scan else []
        if leftovers:
            stop([(pid, st) for pid in leftovers if (st := start_time(pid)) is not None])
            notes.append(
                "stopped leftover processes of an earlier run: pid "
                + ", ".join(str(p) for p in leftovers)
            )
        self._save()
        return notes

    # --- processes

    def _envoy_argv(self, envoy: Path, name: str) -> list[str]:
        base = process_dir(self.root, name)
        return [
            str(envoy),
            "-c",
            str(base / "bootstrap.json"),
            "--concurrency",
            "1",
            # No hot restart: no shared memory or domain socket (so no --base-id to keep unique
            # on this host), and Envoy does not set PR_SET_PDEATHSIG: with hot restart it gets
            # SIGTERM as soon as the `meshfed up` that started it exits.
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "--file-flush-interval-msec",
            "100",
            "--drain-time-s",
            "5",
        ]

    def _spawn_envoy(self, envoy: Path, name: str) -> None:
        log = self.paths.logs / f"{process_slug(name)}.log"
        with _deferred_interrupt():  # a process is never started without being recorded
            proc, started = spawn(self._envoy_argv(envoy, name), log)
            self._children[name] = proc
            self.records[name] = ProcessRecord(
                name=name,
                kind="envoy",
                pid=started.pid,
                start_time=started.start_time,
                started_at=time.time(),
            )
            self._started_now.append(name)
            self._save()

    def _wait_ready(self, admin_ports: dict[str, int], timeout: float = READY_TIMEOUT) -> None:
        """Wait until every named Envoy answers /ready; a clear error if one exits or hangs."""
        waiting = dict(admin_ports)
        deadline = time.monotonic() + timeout
        while waiting:
            for name, port in list(waiting.items()):
                record = self.records[name]
                if not record.alive:
                    log = self.paths.logs / f"{process_slug(name)}.log"
                    if "inotify" in log.read_text(errors="replace"):
                        raise LocalError(
                            f"Envoy {name} could not watch its config files: the per-user "
                            "limit of inotify instances is exhausted",
                            INOTIFY_FIX,
                        )
                    raise LocalError(
                        f"Envoy {name} exited while starting:\n{self._log_tail(name)}",
                        f"see {log}",
                    )
                if admin.ready(port):
                    del waiting[name]
                    self.progress.advance()
            if waiting and time.monotonic() > deadline:
                names = ", ".join(sorted(waiting))
                raise LocalError(
                    f"Envoy {names} not ready after {timeout:.0f} s",
                    f"see the logs in {self.paths.logs}",
                )
            if waiting:
                time.sleep(POLL)

    def _check_inotify(self, needed: int) -> None:
        if needed == 0:
            return  # nothing new starts: no need to count the user's instances
        headroom = inotify_headroom()
        if headroom is None:
            return
        used, limit = headroom
        if used + needed > limit:
            raise LocalError(
                f"starting these Envoys needs {needed} inotify instances (they watch their "
                f"config files), but this user holds {used} of at most {limit} "
                "(fs.inotify.max_user_instances)",
                INOTIFY_FIX,
            )

    def _log_tail(self, name: str, lines: int = 8) -> str:
        try:
            text = (self.paths.logs / f"{process_slug(name)}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("  " + line for line in text.splitlines()[-lines:])

    def _check_accepted(self, name: str, admin_port: int) -> None:
        """After start: Envoy runs the configuration on disk (it rejected nothing)."""
        base = process_dir(self.root, name)
        want = {
            "cluster_manager.cds.version_text": _version(base / "cds" / "cds.json"),
            "listener_manager.lds.version_text": _version(base / "lds" / "lds.json"),
            "listener_manager.total_listeners_warming": "0",
        }
        pattern = (
            r"^(cluster_manager\.cds\.version_text"
            r"|listener_manager\.(lds\.version_text|total_listeners_warming))$"
        )
        # And every ECDS filter configuration (one Envoy rejected leaves its filter failing
        # closed, so the federation would run but refuse that export's callers).
        ecds_want = {f.stem: _version(f) for f in sorted(base.glob("ecds/*.json"))}
        want.update({f"ecds {n}": v for n, v in ecds_want.items()})
        ecds_pattern = ecds_stats_pattern(ecds_want) if ecds_want else None
        deadline = time.monotonic() + 5.0
        got: dict[str, str] = {}
        while time.monotonic() < deadline:
            got = admin.stats(admin_port, pattern)
            if ecds_pattern is not None:
                ecds = ecds_stats(admin.stats(admin_port, ecds_pattern), "version_text")
                got.update({f"ecds {n}": v for n, v in ecds.items()})
            if all(got.get(k) == v for k, v in want.items()):
                return
            time.sleep(0.01)
        tail = self._log_tail(name)
        if "already in use" in tail:
            raise LocalError(
                f"Envoy {name} could not bind a listener: another process took the port:\n{tail}",
                "run meshfed up again (it moves allocated ports that are taken; a mesh ingress "
                "port must be freed or changed in the spec)",
            )
        raise LocalError(
            f"Envoy {name} did not accept its configuration (wanted {want}, runs {got}):\n{tail}",
            "this is a bug in the Envoy translation; please report it with the log",
        )

    # --- the workload host

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
            with _deferred_interrupt():
                proc, started = spawn(argv, self.paths.logs / "workloads.log")
                self._children[WORKLOAD_HOST] = proc
                self.records[WORKLOAD_HOST] = ProcessRecord(
                    WORKLOAD_HOST, "workloads", started.pid, started.start_time, time.time()
                )
                self._started_now.append(WORKLOAD_HOST)
                self._save()
            report.started.append(WORKLOAD_HOST)
        self._wait_ports(WORKLOAD_HOST, [s.port for s in specs])

    def _wait_ports(self, name: str, ports: list[int], timeout: float = 10.0) -> None:
        waiting = list(ports)
        deadline = time.monotonic() + timeout
        while waiting:
            if not self.records[name].alive:
                raise LocalError(
                    f"the workload host exited:\n{self._log_tail('workloads')}",
                    f"see {self.paths.logs / 'workloads.log'}",
                )
            waiting = [p for p in waiting if not _connectable(p)]
            if waiting and time.monotonic() > deadline:
                raise LocalError(
                    f"workloads not listening on port(s) {waiting}:\n{self._log_tail('workloads')}",
                    "free those ports, or remove layout.json in the state directory",
                )
            if waiting:
                time.sleep(POLL)

    def _await_first_choice(
        self, summary: RuntimeSummary, hops: set[Hop] | None, timeout: float = 5.0
    ) -> None:
        """Wait until each import is served by its first source whose ingress runs here.

        All Envoys start at once, so an egress can health-check an ingress before it listens;
        a call made then goes to the failover target and its connection stays pinned there for
        the sidecar's connection lifetime. Probes and the user's first calls come after this.
        ``hops``: the processes this run started or changed (None: all); an import whose
        egress and sources' ingresses are all unchanged is left alone. One ``/clusters`` read
        per egress gateway and round serves every import of its mesh.
        """

        egress_admin = {p.mesh: p.admin_port for p in summary.processes if p.role == "egress"}
        ingress_names = {p.mesh: p.name for p in summary.processes if p.role == "ingress"}
        running = {n for n, r in self.records.items() if r.alive}
        waiting: dict[int, list[tuple[ImportInfo, str]]] = {}
        for imp in summary.imports:
            path = {(s.mesh, "ingress", None) for s in imp.sources} | {(imp.mesh, "egress", None)}
            if hops is not None and not path & hops:
                continue
            serving = [s for s in imp.sources if ingress_names.get(s.mesh) in running]
            port = egress_admin.get(imp.mesh)
            if port is None or not serving or imp.egress_cluster is None:
                continue
            first = min(serving, key=lambda s: s.priority).mesh
            waiting.setdefault(port, []).append((imp, first))
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for port, imports in list(waiting.items()):
                try:
                    clusters = admin.clusters(port, timeout=1.0)
                except (admin.AdminError, ValueError):
                    clusters = []
                left = [(i, f) for i, f in imports if health_from_clusters(i, clusters)[0] != f]
                if left:
                    waiting[port] = left
                else:
                    del waiting[port]
            if waiting:
                time.sleep(0.02)

    def _ensure_dashboard(self, reserved: set[int], report: UpReport) -> None:
        """Start the dashboard unless it runs (it reloads the picture itself on a new ``up``)."""
        record = self.records.get(dashboard.DASHBOARD)
        if record is not None and record.alive:
            report.unchanged.append(dashboard.DASHBOARD)
        else:
            config = dashboard.prepare(self.paths, reserved)
            with _deferred_interrupt():
                proc, started = spawn(dashboard.argv(config), dashboard.log_path(self.paths))
                self._children[dashboard.DASHBOARD] = proc
                self.records[dashboard.DASHBOARD] = ProcessRecord(
                    dashboard.DASHBOARD, "dashboard", started.pid, started.start_time, time.time()
                )
                self._started_now.append(dashboard.DASHBOARD)
                self._save()
            report.started.append(dashboard.DASHBOARD)
            dashboard.wait_listening(self.paths, lambda: self.records[dashboard.DASHBOARD].alive)
        report.dashboard = dashboard.url(self.paths)

    # --- up

    def up(self, ws: Workspace) -> UpReport:
        t0 = time.monotonic()
        self._started_now = []
        with self.paths.locked():
            self._load()
            first_run = not any(r.alive for r in self.records.values())
            try:
                report = self._up(ws, first_run)
            except BaseException:
                # Interrupted (Ctrl-C) or failed: stop what this run started, keep the rest.
                with _deferred_interrupt():
                    self._stop_records(self._started_now)
                raise
        report.elapsed = time.monotonic() - t0
        return report

    def _up(self, ws: Workspace, first_run: bool) -> UpReport:
        plan = ws.plan
        self.progress.phase("checking state and ports")
        envoy = find_envoy()
        notes = self._cleanup_stale()
        # Only our recorded processes' descriptors are read, not every process's on the host.
        own_ports = ports_held_by(r.pid for r in self.records.values() if r.alive)
        check_ingresses(plan, own_ports)
        previous = layout_from_json(read_json(self.paths.layout))
        layout, moved = allocate_layout(plan, previous, own_ports)
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

        # New Envoys (and those whose bootstrap changed) start from their files.
        running = {n for n, r in self.records.items() if r.alive and r.kind == "envoy"}
        to_start = [n for n in wanted if n not in running]
        to_restart = [n for n in wanted if n in running and wanted[n][1].bootstrap is not None]
        self._check_inotify(
            # Each ECDS file is a watched source too.
            sum(
                envoy_watches(
                    len(wanted[n][0].process.sds_names) + len(wanted[n][0].process.extensions)
                )
                for n in to_start
            )
        )
        if to_restart:
            self._stop_records(to_restart)
        self.progress.phase(f"starting {len(to_start) + len(to_restart)} Envoys")
        for name in to_start + to_restart:
            files, pending = wanted[name]
            files.write_cold(pending)
            self._spawn_envoy(envoy, name)
        fresh = to_start + to_restart
        self.progress.phase("waiting for Envoys", len(fresh))
        self._wait_ready({n: wanted[n][0].process.admin_port for n in fresh})
        for name in fresh:
            self._check_accepted(name, wanted[name][0].process.admin_port)
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
            report.stopped += self._stop_records(gone)
            for name in gone:
                shutil.rmtree(process_dir(self.root, name), ignore_errors=True)
        save_summary(self.paths, summary)

        self.progress.phase("waiting for each import's first choice")
        # What this run started or changed, as (mesh, role, workload); None: everything. A
        # reloaded workload host (SIGHUP) changed only apps whose sidecars changed with them; a
        # started one started every app.
        touched = {*report.started, *report.restarted, *report.updated}
        hops: set[Hop] | None = None
        if not first_run and WORKLOAD_HOST not in report.started:
            hops = {(p.mesh, p.role, p.workload) for p in processes if p.name in touched}
        self._await_first_choice(summary, hops)
        probes = plan_probes(plan, layout)
        stale = self._probes_to_run(plan, probes, hops)
        self.progress.phase("probing imports", len(stale))
        results = {}
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(stale)))) as pool:
            for result in pool.map(lambda p: run_probe(p, PROBE_TIMEOUT), stale):
                results[result.probe] = result
                self.progress.advance()
        for probe in probes:
            report.probes.append(
                results.get(probe)
                or ProbeResult(probe, True, "passed before; nothing on its path changed", False)
            )
        write_json(
            self.paths.probes,
            {"version": 1, "passed": sorted(probe_key(r.probe) for r in report.probes if r.ok)},
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
            self._load()
            stopped = [n for n, r in sorted(self.records.items()) if r.alive]
            self._stop_records(list(self.records))
            leftovers = self._leftovers()
            if leftovers:
                stop([(pid, st) for pid in leftovers if (st := start_time(pid)) is not None])
                stopped += [f"pid {pid} (leftover)" for pid in leftovers]
            self.records = {}
            self._save()
            return stopped

    # --- lab

    def _ingress_name(self, mesh: str) -> tuple[str, int]:
        summary = self.summary()
        summary.mesh(mesh)
        for p in summary.processes:
            if p.mesh == mesh and p.role == "ingress":
                return p.name, p.admin_port
        raise LocalError(f"mesh {mesh} has no ingress gateway process")

    def stop_gateway(self, mesh: str) -> ProcessRecord:
        with self.paths.locked():
            self._load()
            name, _ = self._ingress_name(mesh)
            record = self.records.get(name)
            if record is None or not record.alive:
                raise LocalError(
                    f"the ingress gateway of {mesh} is not running",
                    f"meshfed lab start-gateway {mesh}",
                )
            self._stop_records([name])
            return record

    def start_gateway(self, mesh: str) -> ProcessRecord:
        with self.paths.locked():
            self._load()
            name, admin_port = self._ingress_name(mesh)
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
            self._forget(name)
            self._spawn_envoy(find_envoy(), name)
            try:
                self._wait_ready({name: admin_port})
                self._check_accepted(name, admin_port)
            except BaseException:
                self._stop_records([name])
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
        """``<ns>/<name>`` of the first workload of ``mesh`` running as that service account."""
        summary = self.summary()
        summary.mesh(mesh)
        for w in summary.workloads:
            if w.mesh == mesh and w.namespace == namespace and w.service_account == service_account:
                return w.ref
        known = sorted(
            f"{w.namespace}/{w.service_account}" for w in summary.workloads if w.mesh == mesh
        )
        raise LocalError(
            f"mesh {mesh} has no workload with namespace {namespace} and serviceAccount "
            f"{service_account}",
            "use one of: " + ", ".join(known),
        )


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block is done, then hand it to the handler that was in
    place (Python's raises KeyboardInterrupt): no half-recorded state."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[object] = []
    previous = signal.signal(signal.SIGINT, lambda *args: hit.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if hit:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


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


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False


def _version(path: Path) -> str:
    doc = read_json(path)
    return str(doc.get("version_info")) if isinstance(doc, dict) else "?"
