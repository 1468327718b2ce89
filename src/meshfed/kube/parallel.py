"""Several requests at once, on threads kept between calls.

A controller reconcile works on ten clusters at once, and on each, several requests at once:
about seventy such fan-outs per reconcile. Starting a thread waits until the new thread runs,
which on a loaded machine takes a scheduling slice (measured: 30 ms a thread at a load of 20
on 2 cores, a second per reconcile). So the threads stay: one set per nesting level (a
fan-out inside a fan-out gets the next level's threads, so a task never waits for work queued
behind itself), at most ``LEVEL_THREADS`` each, and each ends after ``IDLE`` seconds without
work (an idle controller holds none).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

IDLE = 30.0
LEVEL_THREADS = 32

T = TypeVar("T")
U = TypeVar("U")

_local = threading.local()


class _Level:
    """The threads that run the tasks of fan-outs at one nesting level."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = 0
        self.idle = 0
        self.queued = 0

    def submit(self, task: Callable[[], None]) -> None:
        with self.lock:
            self.tasks.put(task)
            self.queued += 1
            spawn = self.queued > self.idle and self.threads < LEVEL_THREADS
            if spawn:
                self.threads += 1
        if spawn:
            threading.Thread(target=self._serve, name=f"fan-out-{self.depth}", daemon=True).start()

    def _serve(self) -> None:
        _local.depth = self.depth + 1
        while True:
            with self.lock:
                self.idle += 1
            try:
                task = self.tasks.get(timeout=IDLE)
            except queue.Empty:
                with self.lock:
                    if self.queued > 0:  # put just now: this thread was counted on
                        self.idle -= 1
                        continue
                    self.idle -= 1
                    self.threads -= 1
                    return
            with self.lock:
                self.idle -= 1
                self.queued -= 1
            task()


_levels: dict[int, _Level] = {}
_levels_lock = threading.Lock()


def _level(depth: int) -> _Level:
    with _levels_lock:
        found = _levels.get(depth)
        if found is None:
            found = _levels[depth] = _Level(depth)
        return found


def in_parallel(fn: Callable[[U], T], items: list[U], workers: int) -> list[T]:
    """``fn`` over ``items``, ``workers`` at a time (1: one after the other), results in order;
    every call has ended when it returns, and the first exception (in order) is raised."""
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    level = _level(getattr(_local, "depth", 0))
    gate = threading.Semaphore(workers)
    finished = threading.Semaphore(0)
    results: list[Any] = [None] * len(items)
    errors: list[BaseException | None] = [None] * len(items)

    def task(k: int, item: U) -> None:
        try:
            results[k] = fn(item)
        except BaseException as exc:  # raised in the caller's thread, below
            errors[k] = exc
        finally:
            gate.release()
            finished.release()

    for k, item in enumerate(items):
        gate.acquire()
        level.submit(partial(task, k, item))
    for _ in items:
        finished.acquire()
    for error in errors:
        if error is not None:
            raise error
    return results


__all__ = ["in_parallel"]
