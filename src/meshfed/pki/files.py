"""File helpers of the PKI state: private directories, atomic writes, directory fsync."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from meshfed.pki.errors import PKIError

TMP_PREFIX = ".tmp-"
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700


def read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


MAX_INPUT_BYTES = 1 << 20
"""Largest CSR or certificate bundle read from another party (``pki sign``, ``pki import``): a
CSR is about 0.5 KB, a certificate with its root about 2 KB."""


def read_input(path: Path, what: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """A file another party handed over: read at most ``limit`` bytes, so that ``/dev/zero`` or
    a huge file is a clear error, never a MemoryError; unreadable is a PKIError too."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise PKIError(path, f"cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise PKIError(
            path,
            f"more than {limit:,} bytes: not a {what}",
            f"check that this is the {what} you were given",
        )
    return data


def mkdir_private(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700; existing directories are left alone."""
    if path.is_dir():
        return
    mkdir_private(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)


def write_atomic(path: Path, data: bytes, mode: int, *, durable: bool = True) -> None:
    """Write via a temporary file created with `mode` in the same directory, then os.replace.
    ``durable``: synced to disk, the file and its directory (False: a scratch copy of state
    kept elsewhere, e.g. the controller's checkout of its Secret)."""
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
