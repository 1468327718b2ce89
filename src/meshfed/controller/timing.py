"""Where a reconcile's time goes: named phases, one log line per reconcile.

``Phases.mark(name)`` books the time since the previous mark (or the start) to ``name``; a
name marked twice adds up. The reconcile passes ``mark`` down to the rollout (which does not
know this module), so one line tells debounce, discovery, planning, rendering, dry-runs,
writes, the stored state and the status apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Phases:
    clock: Callable[[], float] = time.monotonic
    spent: dict[str, float] = field(default_factory=dict)
    """Seconds per phase, in the order each was first marked."""
    _last: float = field(init=False)
    _start: float = field(init=False)

    def __post_init__(self) -> None:
        self._start = self._last = self.clock()

    def mark(self, name: str) -> None:
        """The time since the previous mark was spent on ``name``."""
        now = self.clock()
        self.spent[name] = self.spent.get(name, 0.0) + (now - self._last)
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self._start

    def summary(self, least: float = 0.0005) -> str:
        """``name 12 ms, ...`` of the phases that took at least ``least`` seconds."""
        parts = [f"{n} {s * 1000:.0f} ms" for n, s in self.spent.items() if s >= least]
        return ", ".join(parts) or "nothing measurable"


def no_mark(_name: str) -> None:
    """A ``mark`` that books nothing."""


__all__ = ["Phases", "no_mark"]
