"""Go-style durations, as Istio writes them: ``87600h``, ``1h30m``, ``90s``, ``250ms``."""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction

_NANOS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$"
MAX_DURATION = timedelta(days=36500)
"""Longest duration meshfed reads: 100 years (a certificate must end before year 9999)."""


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration; raise ValueError with the accepted form on anything else.

    Exact (no floating point) and bounded: more than :data:`MAX_DURATION` is refused before
    it can overflow anything.
    """
    pos = 0
    nanos = Fraction(0)
    if not text:
        raise ValueError("empty duration")
    if len(text) > 64:
        raise ValueError(f"{text[:20]!r}... ({len(text)} characters) is not a duration")
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        nanos += Fraction(match.group(1)) * _NANOS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration like 24h, 90m, 30s or 1h30m")
    if nanos > MAX_DURATION // timedelta(microseconds=1) * 1000:
        raise ValueError(f"{text!r} is longer than 100 years ({MAX_DURATION.days * 24}h)")
    return timedelta(microseconds=int(nanos / 1000))


def format_duration(value: timedelta) -> str:
    """Format as Go/Istio would accept: whole seconds (``3600s``) or milliseconds."""
    ms = round(value.total_seconds() * 1000)
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"
