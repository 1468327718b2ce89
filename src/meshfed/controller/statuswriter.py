"""A Federation's status, written from a thread of its own: the reconciles never wait for it.

Writing the status is a request on the whole Federation object: at a thousand exports the
API server decodes, validates and stores about half a megabyte for it (measured on v1.32 on a
loaded 2-core machine: 2-3 s for a status of a few bytes, against 0.2-0.4 s to read the
object), on the management cluster, which may be a mesh's cluster too. So:

- the latest status handed over wins; one not written yet is replaced, never queued;
- a status that says something new (``substance`` differs: a condition's status or reason,
  the observed generation, an address, an import's exporter, a certificate) is written at
  once;
- one that differs from the last written only in ``lastReconcile`` and the messages of
  conditions that did not change (what the last reconcile wrote, say) waits up to ``settle``
  seconds, so a burst of changes costs one write;
- a write that fails is tried again after ``RETRY`` seconds (or with the next status).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from meshfed.kube.errors import KubeError

Obj = dict[str, Any]
SETTLE = 5.0
RETRY = 2.0


def substance(status: Obj) -> Any:
    """What a person reads in a status, without what changes with every reconcile: the
    time of the last reconcile and the messages of conditions (their status and reason
    stay)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            if "type" in value and "status" in value and "reason" in value:  # a condition
                return {k: strip(v) for k, v in value.items() if k != "message"}
            return {k: strip(v) for k, v in value.items() if k != "lastReconcile"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(status)


def urgent(last: Obj | None, status: Obj) -> bool:
    """Whether ``status`` says something ``last`` (the one written last) does not."""
    return last is None or substance(last) != substance(status)


class StatusWriter:
    """Writes the latest status handed to ``submit`` with ``write`` (see the module)."""

    def __init__(
        self,
        write: Callable[[Obj], None],
        log: Callable[[str], None] = lambda _l: None,
        settle: float = SETTLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._log = log
        self.settle = settle
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: Obj | None = None
        self._due = 0.0
        """When the pending status is written (clock time)."""
        self.last: Obj | None = None
        self._last_substance: Any = None
        """The status written last."""
        self._closed = False
        self._writing = False
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
        self._thread.start()

    def submit(self, status: Obj) -> None:
        """Hand over the status to write (returns at once)."""
        with self._cond:
            idle = self._pending is None and not self._writing
            if idle and status == self.last:
                return  # what is there already
            now = self._clock()
            if self.last is None or substance(status) != self._last_substance:
                due = now
            elif self._pending is not None:
                due = self._due  # no later than the one it replaces
            else:
                due = now + self.settle
            if self._pending is not None:
                due = min(due, self._due)
            self._pending, self._due = status, due
            self._cond.notify_all()

    def _next(self) -> Obj | None:
        """The status to write now (None: closed with nothing left)."""
        with self._cond:
            while True:
                if self._pending is not None:
                    wait = self._due - self._clock()
                    if wait <= 0 or self._closed:
                        found, self._pending = self._pending, None
                        self._writing = True
                        return found
                    self._cond.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _run(self) -> None:
        while (status := self._next()) is not None:
            try:
                self._write(status)
            except KubeError as exc:
                self._log(f"status not written: {exc}; trying again")
                with self._cond:
                    self._writing = False
                    if self._pending is None and not self._closed:
                        self._pending, self._due = status, self._clock() + RETRY
                    self._cond.notify_all()
                continue
            with self._cond:
                self._writing = False
                self.last, self._last_substance = status, substance(status)
                self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Write what is pending now; True once nothing is pending or being written (within
        ``timeout`` seconds)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._writing:
                if self._pending is not None and self._due > self._clock():
                    self._due = self._clock()  # now (a retry too)
                    self._cond.notify_all()
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending (within ``timeout``), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)


__all__ = ["SETTLE", "StatusWriter", "substance", "urgent"]
