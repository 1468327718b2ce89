"""Atomic file writes: a temporary file in the same directory, then ``os.rename``.

Envoy's watched directories react only to a rename into them, and a reader never sees half a file.
Files are created with their final mode from the first byte (SDS files hold private keys).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from meshfed.local.paths import mkdir_private

TMP_PREFIX = ".tmp-"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    mkdir_private(path.parent)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, doc: Any, mode: int = 0o644) -> None:
    # Compact: indentation sends json.dumps to its pure-Python encoder (9x slower on a large
    # listener, measured by bench/edit_latency.py).
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    write_atomic(path, (text + "\n").encode(), mode)


def read_json(path: Path) -> Any:
    """The JSON document at ``path``, or None if the file is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None
