"""``meshfed up --watch``: apply every saved edit of the spec, in this process, until stopped.

Each edit is applied as a new run of ``up`` would (validate, plan, render, write only the changed
xDS files, start and stop processes) and reported in one line (``edit_line``). A bad edit prints
the same errors as ``up`` and changes nothing: the federation keeps running on the last good spec.

A stop signal (Ctrl-C, SIGTERM, SIGHUP) between edits ends the watch; the federation keeps
running. During an edit the first one lets the edit finish and the watch ends after it; a second
one aborts the edit (``KeyboardInterrupt`` out of ``watch_edits``: the runtime has stopped what
the edit started, as for an interrupted ``up``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType

from meshfed.interrupts import Interrupted, restore, take
from meshfed.local import dashboard
from meshfed.local.errors import LocalError
from meshfed.local.report import UpReport
from meshfed.local.runtime import Runtime
from meshfed.local.watch import FileWatcher
from meshfed.pki.errors import PKIError
from meshfed.plan.diff import SecurityChange, security_diff
from meshfed.plan.model import FederationPlan
from meshfed.spec.errors import SpecError
from meshfed.workspace import Workspace, open_workspace

__all__ = ["StopSignals", "edit_line", "watch_edits"]

Say = Callable[[str], None]


class StopSignals:
    """The stop signals while watching. Between edits they end the watch (``requested``, and the
    watcher wakes up through ``fd``, a ``signal.set_wakeup_fd`` pipe: nothing is raised in the
    middle of printing). During an edit the first one lets the edit finish, and the watch ends
    after it; a second one aborts the edit (``Interrupted``; the runtime holds the signals while
    it records a process it started and hands them on here afterwards).
    """

    def __init__(self, say: Say) -> None:
        self.say = say
        self.applying = False
        self.requested = False
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = take(self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Decided first thing: a second signal may come while this handler is still saying
        # something, and its handler then runs in the middle of this one.
        second, self.requested = self.requested, True
        if self.applying and second:
            raise Interrupted(signum)
        if self.applying:
            self.say("stopping after this edit is applied (Ctrl-C again aborts the edit)")

    def restore(self) -> None:
        restore(self._previous)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self.fd)
        os.close(self._write_fd)


def watch_edits(watcher: FileWatcher, ws: Workspace, runtime: Runtime, out: Say, err: Say) -> None:
    """Apply every saved edit of ``ws``'s spec until a stop signal; the federation keeps
    running. ``out`` gets one line per applied edit, ``err`` the problems."""
    plan = ws.plan
    signals = StopSignals(err)
    try:
        out(
            f"watching {ws.spec_path} for edits ({watcher.how}); Ctrl-C stops watching, the "
            "federation keeps running (meshfed down stops it)"
        )
        while not signals.requested:
            if not watcher.wait(wake=signals.fd) or signals.requested:
                continue
            signals.applying = True
            plan = apply_edit(ws.spec_path, ws.state_dir, runtime, plan, out, err)
            signals.applying = False
    finally:
        signals.restore()
        watcher.close()
    out("stopped watching; the federation keeps running (meshfed down stops it)")


def apply_edit(
    spec_path: Path,
    state_dir: Path,
    runtime: Runtime,
    plan: FederationPlan,
    out: Say,
    err: Say,
) -> FederationPlan:
    """One saved edit, as a new run of ``up`` would apply it; the plan now running."""
    t0 = time.monotonic()
    stamp = datetime.now().strftime("%H:%M:%S")
    kept = "nothing was changed; the federation keeps running on the last good spec"
    try:
        ws = open_workspace(spec_path, state_dir)
    except SpecError as exc:
        for line in exc.lines:
            err(line)
        err(f"{exc.file}: {len(exc.lines)} problem(s); {kept}")
        return plan
    except (PKIError, LocalError) as exc:
        err(f"error: {exc}")
        err(kept)
        return plan
    try:
        report = runtime.up(ws)
    except LocalError as exc:
        err(f"error: {exc}")
        err(
            "the edit was not applied in full; what it started was stopped and the federation "
            "keeps running: fix the spec and save again"
        )
        return plan
    elapsed = time.monotonic() - t0
    out(edit_line(stamp, spec_path.name, elapsed, security_diff(plan, ws.plan), report))
    for p in report.probes:
        if not p.ok:
            err(f"probe failed: {p.probe.mesh} {p.probe.key}: {p.detail}")
    return ws.plan


def edit_line(
    stamp: str, name: str, elapsed: float, changes: list[SecurityChange], report: UpReport
) -> str:
    """``12:03:04 applied bank.yaml in 118 ms: <what changed> | <Envoys> | <probes>``."""
    spec = "; ".join(str(c) for c in changes[:3]) or "no security-relevant change"
    if len(changes) > 3:
        spec += f" (+{len(changes) - 3} more)"
    envoys = [
        f"{verb} {names_short(names)}"
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


def names_short(names: list[str], shown: int = 3) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f" and {len(names) - shown} more"
