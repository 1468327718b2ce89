"""What ``up`` reports (``UpReport``) and how it shows progress while it works (``Progress``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from meshfed.local.probe import ProbeResult
from meshfed.local.summary import RuntimeSummary
from meshfed.render.envoy.layout import LocalLayout


class Progress(Protocol):
    def phase(self, text: str, total: int | None = None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class Silent:
    """No progress display."""

    def phase(self, text: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class UpReport:
    federation: str
    state_dir: Path
    layout: LocalLayout
    summary: RuntimeSummary
    first_run: bool
    started: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    updated: dict[str, str] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    """Processes that got a newly issued certificate."""
    notes: list[str] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    elapsed: float = 0.0
    probing: float = 0.0
    """Of ``elapsed``, the seconds spent probing imports (a probe that fails retries for
    ``PROBE_TIMEOUT``, unless every partner serving its import keeps refusing connections)."""
    dashboard: str | None = None
    """The dashboard's URL."""

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.probes)
