"""File helpers of the PKI state: private directories, atomic writes, directory fsync."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TMP_PREFIX = ".tmp-"
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700


def read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def mkdir_private(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700; existing directories are left alone."""
    if path.is_dir():
        return
    mkdir_private(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file created with `mode` in the same directory, then os.replace."""
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
