"""Test hook: park a command at a named point, so a test can signal or kill it exactly there.

``MESHFED_TEST_HOLD=<point>`` (or ``<point>#<n>``: the n-th time the command reaches it) names
the point; on reaching it the command writes its pid to ``MESHFED_TEST_HOLD_FILE`` and waits
until that file is removed (forever if no file is named). Without the variable, ``hold`` does
nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HOLD_ENV = "MESHFED_TEST_HOLD"
_reached: dict[str, int] = {}


def hold(point: str) -> None:
    wanted = os.environ.get(HOLD_ENV)
    if not wanted or wanted.partition("#")[0] != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    nth = wanted.partition("#")[2]
    if _reached[point] != (int(nth) if nth.isdigit() else 1):
        return
    marker = os.environ.get(f"{HOLD_ENV}_FILE")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    while marker is None or Path(marker).exists():
        time.sleep(0.01)
