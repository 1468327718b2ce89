"""Errors from clusters, each naming where it happened."""

from __future__ import annotations

from dataclasses import dataclass


class KubeError(Exception):
    """A request to a cluster failed: unreachable, refused (RBAC), invalid or conflicting."""

    def __init__(
        self, message: str, *, status: int | None = None, reason: str = "", causes: str = ""
    ) -> None:
        self.message = message
        self.status = status
        self.reason = reason
        self.causes = causes
        super().__init__(message + (f" ({causes})" if causes else ""))

    @property
    def not_found(self) -> bool:
        return self.status == 404


@dataclass(frozen=True, order=True)
class Refusal:
    """One object a cluster refused (or could not be asked about)."""

    cluster: str
    object: str
    reason: str

    def __str__(self) -> str:
        return f"cluster {self.cluster}: {self.object}: {self.reason}"


class ApplyRefused(Exception):
    """The server-side dry-run failed somewhere: nothing was written anywhere."""

    def __init__(self, refusals: list[Refusal], notes: list[str] | None = None) -> None:
        self.refusals = sorted(refusals)
        self.notes = list(notes or [])
        """What the dry-run found besides the refusals (e.g. a namespace it would create)."""
        count = len(self.refusals)
        lines = [f"{count} object(s) refused; nothing was written to any cluster:"]
        lines += [f"  {r}" for r in self.refusals]
        if self.notes:
            lines.append("Otherwise the dry-run found:")
            lines += [f"  {n}" for n in self.notes]
        super().__init__("\n".join(lines))
