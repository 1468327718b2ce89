"""The signals that stop a command, all handled as Ctrl-C.

``timeout``, systemd and CI stop a process with SIGTERM, a closed terminal sends SIGHUP, a user
presses Ctrl-C (SIGINT). meshfed treats the three alike: each raises ``Interrupted`` (a
``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` that cleans up after Ctrl-C cleans
up after the others too), and a command that ends on one exits with ``128 + signal``, as a shell
reports a process ended by that signal.

A signal whose handler is ``SIG_IGN`` when meshfed starts stays ignored (``nohup`` ignores
SIGHUP; a background job of a non-interactive shell inherits an ignored SIGINT).

``stopping()`` is for a command that runs until stopped (``trust serve``, ``trust fetch
--follow``): the first signal sets its `StopRequest` and the command winds down by itself.

``deferred()`` holds the three signals over a few lines that must not be cut in half (a process
started but not yet recorded); the first one that came is handled when the block ends. Handlers
are Python-level: Python runs them in the main thread only, whatever thread the kernel chose.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
NAMES: dict[int, str] = {
    signal.SIGINT: "Ctrl-C",
    signal.SIGTERM: "SIGTERM",
    signal.SIGHUP: "SIGHUP",
}

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (SIGINT, SIGTERM or SIGHUP)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(exc: BaseException) -> int:
    """``128 + signal`` for an interrupt (130 for a plain KeyboardInterrupt)."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


def signal_name(exc: BaseException) -> str:
    return NAMES.get(exc.signum, str(exc)) if isinstance(exc, Interrupted) else "Ctrl-C"


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def take(handler: Handler) -> dict[int, Handler]:
    """Install ``handler`` for the stop signals that are not ignored; the handlers that were in
    place, for ``restore``. The caller runs in the main thread (Python allows signal handlers
    only there)."""
    previous: dict[int, Handler] = {}
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current == signal.SIG_IGN or current is None:
            continue
        previous[sig] = signal.signal(sig, handler)
    return previous


def install() -> dict[int, Handler]:
    """Make SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` (those not ignored); the handlers
    that were in place, for ``restore``. Outside the main thread: nothing."""
    return take(raise_interrupted) if _main_thread() else {}


def restore(previous: dict[int, Handler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold the stop signals until the block is done, then hand the first one that came to the
    handler that was in place (ours raises ``Interrupted``): no half-recorded state."""
    if not _main_thread():
        yield
        return
    hit: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        hit.append(signum)

    previous = take(hold)
    try:
        yield
    finally:
        restore(previous)
    if hit:
        _deliver(hit[0], previous.get(hit[0]))


class StopRequest:
    """Whether a stop signal asked a long-running command to end, and which ones came.

    Set by a signal handler, so it takes no lock: a handler runs in the middle of whatever the
    main thread was doing, and ``threading.Event.set`` there can wait forever for the lock the
    interrupted ``Event.wait`` holds (seen: ``trust serve`` hung on SIGTERM now and then).
    ``wait`` polls instead; ``time.sleep`` goes on after a handler that does not raise."""

    POLL = 0.05

    def __init__(self) -> None:
        self.signals: list[int] = []

    def is_set(self) -> bool:
        return bool(self.signals)

    def wait(self, timeout: float | None = None) -> bool:
        """Until a stop signal came (True) or ``timeout`` seconds passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.signals:
            left = self.POLL if deadline is None else min(self.POLL, deadline - time.monotonic())
            if left <= 0:
                break
            time.sleep(left)
        return self.is_set()

    def describe(self) -> str:
        return ", ".join(NAMES.get(s, f"signal {s}") for s in self.signals)


@contextlib.contextmanager
def stopping() -> Iterator[StopRequest]:
    """For a command whose normal end is a stop signal (a server, a follower): while the block
    runs, the first stop signal sets the yielded `StopRequest` (the command winds down by
    itself, its work in hand finished); a second one raises ``Interrupted``, for when winding
    down takes too long. The same signals as everywhere (``STOP_SIGNALS``, those not ignored).
    Outside the main thread: nothing is installed."""
    request = StopRequest()
    if not _main_thread():
        yield request
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if request.signals:
            raise Interrupted(signum)
        request.signals.append(signum)

    previous = take(handle)
    try:
        yield request
    finally:
        restore(previous)


def _deliver(signum: int, handler: Handler) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL and signum == signal.SIGINT:
        raise KeyboardInterrupt
    elif handler == signal.SIG_DFL:
        raise Interrupted(signum)


def uninterrupted(work: Callable[[], object]) -> None:
    """Run ``work`` (idempotent cleanup) to its end even if a stop signal comes just before
    or after its deferred block: it is done again then, and that signal is dropped (the caller
    is already on its way out)."""
    while True:
        try:
            with deferred():
                work()
            return
        except KeyboardInterrupt:
            continue
