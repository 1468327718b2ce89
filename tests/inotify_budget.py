"""The suite's inotify budget: ``./dev demo`` then ``./dev test`` (the README's order) passes on a
machine at the kernel's default ``fs.inotify.max_user_instances`` of 128.

Every Envoy of a local federation holds one inotify instance per file source it watches: LDS,
CDS, and each SDS secret and ECDS filter configuration a listener or cluster uses (Envoy's
filesystem subscription makes a watcher of its own for each, ``watched_directory`` or not; they
cannot be shared). The instances are counted per user, across all of the user's processes. The
bank demo holds 45 of them (12 Envoys: 24 for LDS and CDS, 21 for secrets; 47 by the runtime's
estimate, ``procs.envoy_watches``, which also counts two secrets of web's ingress that no
listener uses). What is left at 128 is 81 by that estimate; ``HEADROOM`` of it is kept for the
user's other programs (an editor, a desktop), and the suite may use the rest: ``BUDGET``.

One federation of the suite needs as much as the demo, so two at once would not fit: no test
runs a federation while another runs (a module whose fixture keeps a federation running has no
test that starts a second one; ``test_rotation_alone.py``).

A thread samples, once a second, the instances held by this session's processes: this one and
those whose command line names the session's base temporary directory (every Envoy, workload
host and ``meshfed`` subprocess of the suite does); at the end the peak must be within the
budget.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_helpers import TEST_ADMIN
from meshfed.examples import example_path
from meshfed.local.layout import allocate_layout
from meshfed.local.procs import envoy_watches, start_time
from meshfed.workspace import open_workspace

DEFAULT_LIMIT = 128
HEADROOM = 20
INTERVAL = 1.0
RECOUNT = 5.0
"""A process's instances are counted again after this long (an Envoy's change rarely)."""


def demo_instances(base: Path) -> int:
    """What ``./dev demo`` (the bank example) needs, by the runtime's own estimate."""
    ws = open_workspace(example_path("bank"), base)
    layout, _ = allocate_layout(ws.plan, None, set(), TEST_ADMIN)
    processes = ws.envoy(layout, base / "local")
    return sum(envoy_watches(len(p.sds_names) + len(p.extensions)) for p in processes)


def _inotify_fds(pid: int) -> int:
    count = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            continue
    return count


class Sampler(threading.Thread):
    def __init__(self, marker: str) -> None:
        super().__init__(daemon=True, name="inotify-budget")
        self.marker = marker.encode()
        self.peak = 0
        self.peak_test = ""
        self.current = ""
        self._stop_event = threading.Event()
        self._cache: dict[tuple[int, int], tuple[float, int]] = {}

    def held(self) -> int:
        me = os.getpid()
        total = 0
        now = time.monotonic()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if pid != me and self.marker not in cmdline:
                continue
            key = (pid, start_time(pid) or -1)
            cached = self._cache.get(key)
            if cached is None or now - cached[0] > RECOUNT:
                cached = (now, _inotify_fds(pid))
                self._cache[key] = cached
            total += cached[1]
        return total

    def run(self) -> None:
        while not self._stop_event.wait(INTERVAL):
            held = self.held()
            if held > self.peak:
                self.peak, self.peak_test = held, self.current

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


_sampler: Sampler | None = None
_result: str | None = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    if _sampler is not None:
        _sampler.current = item.nodeid
    yield


@pytest.fixture(scope="session", autouse=True)
def inotify_budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    global _sampler
    if not Path("/proc/self/fd").is_dir():
        yield
        return
    base = tmp_path_factory.getbasetemp()
    demo = demo_instances(tmp_path_factory.mktemp("inotify-demo"))
    budget = DEFAULT_LIMIT - demo - HEADROOM
    _sampler = Sampler(str(base) + os.sep)
    _sampler.start()
    try:
        yield
    finally:
        sampler, _sampler = _sampler, None
        sampler.stop()
    global _result
    _result = (
        f"inotify: this session held at most {sampler.peak} instances at once "
        f"({sampler.peak_test or 'no test'}); budget {budget} = {DEFAULT_LIMIT} - {demo} "
        f"(./dev demo) - {HEADROOM} (other programs)"
    )
    if sampler.peak > budget:
        pytest.fail(
            f"the suite held {sampler.peak} inotify instances at once (during "
            f"{sampler.peak_test}): with ./dev demo running ({demo}) that leaves less than "
            f"{HEADROOM} of the default {DEFAULT_LIMIT} (fs.inotify.max_user_instances) for "
            f"the user's other programs; the budget is {budget}. Run one federation at a time."
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _result is not None:
        terminalreporter.write_line(_result)
