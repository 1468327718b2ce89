"""HTTP paths a consumer may call: exact, or a prefix when the spec writes a trailing ``*``.

The one place that says what such a path may be. Authorization compares the request's path
without its query string or fragment (Istio's ``paths``, Envoy's ``url_path``), so a path that
holds a ``?`` or ``#`` could never match and is refused, here, for the spec check and for every
`PathMatch` a plan holds alike; the renderers translate what is left and check nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["PathError", "PathMatch", "parse_path"]


class PathError(ValueError):
    """A path no rule can hold: ``problem`` and ``fix`` as a spec problem words them."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


_SPACE = re.compile(r"\s")
"""Whitespace as ``str.isspace`` says (``re`` uses the same Unicode table), found in C."""


def _check(text: str) -> None:
    if not text.startswith("/") or "*" in text[:-1] or _SPACE.search(text):
        raise PathError(
            f"{text!r} is not a path: it must start with '/' and may end in '*'",
            "write e.g. /v1/tokenize or /v1/*",
        )
    if "?" in text or "#" in text:
        raise PathError(
            f"{text!r} holds a query or fragment; paths are matched without them, "
            "so this one would allow nothing",
            "write the path alone (e.g. /v1/tokenize): every query on it is then allowed",
        )


@dataclass(frozen=True)
class PathMatch:
    """An HTTP path: exact, or a prefix when the spec wrote a trailing ``*``."""

    value: str
    prefix: bool = False

    def __post_init__(self) -> None:
        _check(str(self))

    def matches(self, path: str) -> bool:
        """``path`` without its query or fragment (what authorization compares)."""
        return path.startswith(self.value) if self.prefix else path == self.value

    def __str__(self) -> str:
        return f"{self.value}*" if self.prefix else self.value


@lru_cache(maxsize=4096)
def parse_path(text: str) -> PathMatch:
    """A spec path as a `PathMatch`; PathError says what is wrong and how to fix it. (Kept
    per text: a federation of a thousand exports names the same few paths thousands of times,
    and a `PathMatch` is immutable.)"""
    _check(text)
    return PathMatch(text[:-1], prefix=True) if text.endswith("*") else PathMatch(text)
