"""The signals that stop a command, all handled as Ctrl-C.

``timeout``, systemd and CI stop a process with SIGTERM, a closed terminal sends SIGHUP, a user
presses Ctrl-C (SIGINT). meshfed treats the three alike: each raises ``Interrupted`` (a
``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` that cleans up after Ctrl-C cleans
up after the others too), and a command that ends on one exits with ``128 + signal``, as a shell
reports a process ended by that signal.

A signal whose handler is ``SIG_IGN`` when meshfed starts stays ignored (``nohup`` ignores
SIGHUP; a background job of a non-interactive shell inherits an ignored SIGINT).

``deferred()`` holds the three signals over a few lines that must not be cut in half (a process
started but not yet recorded); the first one that came is handled when the block ends. Handlers
are Python-level: Python runs them in the main thread only, whatever thread the kernel chose.
"""

from __future__ import annotations

import contextlib
import signal
import threading
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


def install() -> dict[int, Handler]:
    """Make SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` (those not ignored); the handlers
    that were in place, for ``restore``. Outside the main thread: nothing (Python allows
    signal handlers only there)."""
    if not _main_thread():
        return {}
    previous: dict[int, Handler] = {}
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current == signal.SIG_IGN or current is None:
            continue
        previous[sig] = signal.signal(sig, raise_interrupted)
    return previous


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

    previous: dict[int, Handler] = {}
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current == signal.SIG_IGN or current is None:
            continue
        previous[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        restore(previous)
    if hit:
        _deliver(hit[0], previous.get(hit[0]))


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
