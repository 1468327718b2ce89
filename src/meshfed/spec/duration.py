"""Go-style durations, as Istio writes them: ``87600h``, ``1h30m``, ``90s``, ``250ms``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$"


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration; raise ValueError with the accepted form on anything else."""
    pos = 0
    seconds = 0.0
    if not text:
        raise ValueError("empty duration")
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration like 24h, 90m, 30s or 1h30m")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Format as Go/Istio would accept: whole seconds (``3600s``) or milliseconds."""
    ms = round(value.total_seconds() * 1000)
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"
