"""The one error type of the bundles package."""

from __future__ import annotations


class BundleError(Exception):
    """A bundle or bundle endpoint problem the user has to act on.

    ``source`` names the peer (or file, or endpoint) the problem is about, so a message in a log
    or a condition says whose bundle was refused; ``fix`` says what to do.
    """

    def __init__(self, source: str, problem: str, fix: str | None = None) -> None:
        self.source = source
        self.problem = problem
        self.fix = fix
        message = f"{source}: {problem}"
        if fix:
            message += f" (fix: {fix})"
        super().__init__(message)
