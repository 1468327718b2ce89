"""What an audit finds: severities, locations, findings, and the outcome of each check."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal


class Severity(Enum):
    """How bad a finding is, from ``info`` (a note) to ``critical`` (the boundary is open)."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank >= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank > other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank <= other.rank

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank < other.rank

    @classmethod
    def parse(cls, text: str) -> Severity:
        return cls(text.lower())


_RANK = {s: i for i, s in enumerate(Severity)}
SEVERITY_NAMES = tuple(s.value for s in Severity)


@dataclass(frozen=True)
class Location:
    """Where a finding is: an object (kind/namespace/name) and/or a file and line."""

    file: str | None = None
    line: int | None = None
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    detail: str | None = None
    """A field or item inside the object, e.g. ``spec.servers[0].hosts[1]``."""

    @property
    def object_ref(self) -> str:
        parts = [p for p in (self.kind, self.namespace, self.name) if p]
        return "/".join(parts)

    @property
    def where(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def describe(self) -> str:
        """``Kind/ns/name (file:line)``, or whichever part is known."""
        ref, where = self.object_ref, self.where
        if ref and where:
            return f"{ref} ({where})"
        return ref or where or "(federation)"


@dataclass(frozen=True)
class Finding:
    """One problem: what is wrong, where, why it matters and how to fix it."""

    check: str
    severity: Severity
    message: str
    location: Location
    why: str
    fix: str


Status = Literal["pass", "fail", "not assessed"]


@dataclass(frozen=True)
class CheckInfo:
    """A check's catalogue entry: what concept it tests and the controls it evidences."""

    id: str
    title: str
    severity: Severity
    """The most severe finding the check can produce."""
    why: str
    fix: str
    controls: tuple[str, ...]


@dataclass(frozen=True)
class CheckResult:
    info: CheckInfo
    status: Status
    findings: tuple[Finding, ...] = ()
    note: str | None = None
    """Why the check was not assessed, or what it could not see."""


@dataclass(frozen=True)
class Report:
    """The outcome of one audit."""

    target: str
    mode: Literal["spec", "manifests"]
    generated: str
    """ISO 8601 time the audit ran (its notion of 'now')."""
    results: tuple[CheckResult, ...]
    options: dict[str, str] = field(default_factory=dict)

    @property
    def findings(self) -> list[Finding]:
        """Every finding, most severe first, then by check and location."""
        found = [f for r in self.results for f in r.findings]
        return sorted(
            found, key=lambda f: (-f.severity.rank, f.check, f.location.describe(), f.message)
        )

    def at_or_above(self, threshold: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity >= threshold]

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in reversed(Severity)}
        for f in self.findings:
            counts[f.severity.value] += 1
        return counts
