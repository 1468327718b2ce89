"""The one error type of the PKI package."""

from __future__ import annotations

from pathlib import Path


class PKIError(Exception):
    """A PKI problem the user has to act on.

    The message names the file (or other source), what is wrong with it and how to fix it.
    """

    def __init__(self, source: str | Path, problem: str, fix: str | None = None) -> None:
        self.source = str(source)
        self.problem = problem
        self.fix = fix
        message = f"{self.source}: {problem}"
        if fix:
            message += f" (fix: {fix})"
        super().__init__(message)
