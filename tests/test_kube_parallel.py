"""Fan-outs on kept threads (``kube/parallel.py``): results in order, never more at once than
asked, a fan-out inside a fan-out never waits for itself, every call ended before the first
error is raised, and idle threads end."""

from __future__ import annotations

import threading
import time

import pytest

from meshfed.kube import parallel
from meshfed.kube.parallel import in_parallel


def test_results_in_order_and_at_most_workers_at_once() -> None:
    running, most = [0], [0]
    lock = threading.Lock()
    together = threading.Barrier(4, timeout=30)

    def work(n: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if n < 4:
            together.wait()  # the first four run at once (else this times out)
        with lock:
            running[0] -= 1
        return n * n

    assert in_parallel(work, list(range(20)), 4) == [n * n for n in range(20)]
    assert most[0] <= 4


def test_a_fan_out_inside_a_fan_out_gets_threads_of_its_own() -> None:
    # More outer tasks than a level has threads, each waiting on an inner fan-out.
    outer = parallel.LEVEL_THREADS + 8

    def inner(n: int) -> list[int]:
        return in_parallel(lambda k: n + k, [0, 1, 2], 3)

    assert in_parallel(inner, list(range(outer)), outer) == [
        [n, n + 1, n + 2] for n in range(outer)
    ]


def test_every_call_ends_before_the_first_error_is_raised() -> None:
    ended: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> int:
        if n in (3, 5):
            raise ValueError(f"item {n}")
        time.sleep(0.01)
        with lock:
            ended.append(n)
        return n

    with pytest.raises(ValueError, match="item 3"):
        in_parallel(work, list(range(10)), 4)
    assert sorted(ended) == [0, 1, 2, 4, 6, 7, 8, 9]


def test_idle_threads_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "IDLE", 0.05)
    monkeypatch.setattr(parallel, "_levels", {})
    in_parallel(lambda n: n, list(range(8)), 8)
    level = parallel._levels[0]
    deadline = time.monotonic() + 30
    while level.threads and time.monotonic() < deadline:
        time.sleep(0.02)
    assert level.threads == 0
    assert in_parallel(lambda n: n + 1, [1, 2], 2) == [2, 3]  # and new ones start again
