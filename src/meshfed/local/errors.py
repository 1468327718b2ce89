"""The one error type of the local runtime: a message a user can act on."""

from __future__ import annotations


class LocalError(Exception):
    """Something the user must fix (or look at) before the local federation can run."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. Fix: {fix}" if fix else problem)
