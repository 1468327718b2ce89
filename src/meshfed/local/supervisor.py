"""The runtime's processes: which are recorded, how each starts, when it is ready, how it stops.

Everything started is recorded in ``processes.json`` at once (a stop signal is held meanwhile,
``interrupts.deferred``), and remembered as started by this command: if the command is
interrupted or fails, ``stop_started`` stops exactly those. Leftovers of a command that died
anyway are found by their command line naming the runtime's files.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from meshfed.interrupts import deferred, uninterrupted
from meshfed.local import admin, dashboard
from meshfed.local.admin import ecds_stats, ecds_stats_pattern
from meshfed.local.errors import LocalError
from meshfed.local.files import read_json
from meshfed.local.paths import RuntimePaths
from meshfed.local.procs import (
    INOTIFY_FIX,
    cmdline,
    inotify_headroom,
    processes_mentioning,
    spawn,
    start_time,
    stop,
)
from meshfed.local.state import Kind, ProcessRecord, load_processes, save_processes
from meshfed.render.envoy.files import process_dir, process_slug

READY_TIMEOUT = 30.0
POLL = 0.005
"""How often a starting process is asked whether it is ready (each ask is one local connect)."""


def envoy_argv(envoy: Path, bootstrap: Path) -> list[str]:
    """How meshfed runs an Envoy (the benchmarks run theirs the same way)."""
    return [
        str(envoy),
        "-c",
        str(bootstrap),
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


class Supervisor:
    """The processes of one runtime directory, as ``processes.json`` records them."""

    def __init__(self, paths: RuntimePaths) -> None:
        self.paths = paths
        self.records: dict[str, ProcessRecord] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self.started_now: list[str] = []
        """Processes this command started (stopped again if it is interrupted)."""
        self._written: tuple[int, int, int, int] | None = None
        """Identity of ``processes.json`` as this object last wrote it (None: unknown)."""

    @property
    def root(self) -> Path:
        return self.paths.root

    # --- records

    def load(self) -> None:
        self.records = load_processes(self.paths)

    def save(self) -> None:
        save_processes(self.paths, self.records)
        self._written = _file_identity(self.paths.processes)

    def records_untouched(self) -> bool:
        """``processes.json`` is as this object last wrote it: no other command changed the
        runtime since (an ``up --watch`` between two edits)."""
        return self._written is not None and _file_identity(self.paths.processes) == self._written

    def running(self, kind: str | None = None) -> set[str]:
        return {n for n, r in self.records.items() if r.alive and kind in (None, r.kind)}

    def forget(self, name: str) -> None:
        self.records.pop(name, None)
        self._children.pop(name, None)

    def leftovers(self) -> list[int]:
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

    def stop_records(self, names: Iterable[str]) -> list[str]:
        chosen = [self.records[n] for n in names if n in self.records]
        stop([(r.pid, r.start_time) for r in chosen])
        for r in chosen:
            self.forget(r.name)
        self.save()
        return [r.name for r in chosen]

    def stop_started(self) -> None:
        """Stop what this command started (after an interrupt or a failure); a stop signal
        that comes meanwhile does not cut it short."""
        uninterrupted(lambda: self.stop_records(list(self.started_now)))

    def stop_leftovers(self) -> list[int]:
        leftovers = self.leftovers()
        if leftovers:
            stop([(pid, st) for pid in leftovers if (st := start_time(pid)) is not None])
        return leftovers

    def cleanup_stale(self) -> list[str]:
        notes = []
        # Leftovers come from a command that died between starting a process and recording it.
        # When the records are still as this object wrote them, no other command ran since, and
        # the scan of every process's command line is skipped.
        scan = not self.records_untouched()
        for name, record in sorted(self.records.items()):
            if not record.alive:
                notes.append(f"{name}: recorded pid {record.pid} is gone; cleaned up")
                self.forget(name)
        leftovers = self.stop_leftovers() if scan else []
        if leftovers:
            notes.append(
                "stopped leftover processes of an earlier run: pid "
                + ", ".join(str(p) for p in leftovers)
            )
        self.save()
        return notes

    # --- starting

    def start(self, name: str, kind: Kind, argv: list[str], log: Path) -> None:
        """Start ``argv`` as process ``name`` and record it before anything else can happen."""
        with deferred():  # a process is never started without being recorded
            proc, started = spawn(argv, log)
            self._children[name] = proc
            self.records[name] = ProcessRecord(
                name=name,
                kind=kind,
                pid=started.pid,
                start_time=started.start_time,
                started_at=time.time(),
            )
            self.started_now.append(name)
            self.save()

    def envoy_argv(self, envoy: Path, name: str) -> list[str]:
        return envoy_argv(envoy, process_dir(self.root, name) / "bootstrap.json")

    def start_envoy(self, envoy: Path, name: str) -> None:
        log = self.paths.logs / f"{process_slug(name)}.log"
        self.start(name, "envoy", self.envoy_argv(envoy, name), log)

    def check_inotify(self, needed: int) -> None:
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

    # --- readiness

    def wait_ready(
        self,
        admin_sockets: dict[str, str],
        timeout: float = READY_TIMEOUT,
        advance: Callable[[], None] = lambda: None,
    ) -> None:
        """Wait until every named Envoy answers /ready on its admin socket; a clear error if one
        exits or hangs."""
        waiting = dict(admin_sockets)
        deadline = time.monotonic() + timeout
        while waiting:
            for name, sock in list(waiting.items()):
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
                        f"Envoy {name} exited while starting:\n{self.log_tail(name)}",
                        f"see {log}",
                    )
                if admin.ready(sock):
                    del waiting[name]
                    advance()
            if waiting and time.monotonic() > deadline:
                names = ", ".join(sorted(waiting))
                raise LocalError(
                    f"Envoy {names} not ready after {timeout:.0f} s",
                    f"see the logs in {self.paths.logs}",
                )
            if waiting:
                time.sleep(POLL)

    def wait_ports(
        self, name: str, ports: list[int], connectable: Callable[[int], bool], timeout: float = 10.0
    ) -> None:
        """Until process ``name`` accepts connections on every port."""
        waiting = list(ports)
        deadline = time.monotonic() + timeout
        while waiting:
            if not self.records[name].alive:
                raise LocalError(
                    f"the workload host exited:\n{self.log_tail('workloads')}",
                    f"see {self.paths.logs / 'workloads.log'}",
                )
            waiting = [p for p in waiting if not connectable(p)]
            if waiting and time.monotonic() > deadline:
                raise LocalError(
                    f"workloads not listening on port(s) {waiting}:\n{self.log_tail('workloads')}",
                    "free those ports, or remove layout.json in the state directory",
                )
            if waiting:
                time.sleep(POLL)

    def log_tail(self, name: str, lines: int = 8) -> str:
        try:
            text = (self.paths.logs / f"{process_slug(name)}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("  " + line for line in text.splitlines()[-lines:])

    def check_accepted(self, name: str, admin_socket: str) -> None:
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
            got = admin.stats(admin_socket, pattern)
            if ecds_pattern is not None:
                ecds = ecds_stats(admin.stats(admin_socket, ecds_pattern), "version_text")
                got.update({f"ecds {n}": v for n, v in ecds.items()})
            if all(got.get(k) == v for k, v in want.items()):
                return
            time.sleep(0.01)
        tail = self.log_tail(name)
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


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _version(path: Path) -> str:
    doc = read_json(path)
    return str(doc.get("version_info")) if isinstance(doc, dict) else "?"
