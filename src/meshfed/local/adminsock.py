"""Where each local Envoy's admin endpoint listens: a unix socket, mode 0600, in a 0700 directory.

An Envoy's admin endpoint stops it (``POST /quitquitquit``), rewrites its runtime
(``/runtime_modify``: connection caps, for one), changes its log levels and prints its whole
configuration (``/config_dump``), with no authentication at all. On loopback TCP every process of
the machine reaches it; on a unix socket only the user who runs the federation does: the socket
is 0600 (Envoy's ``pipe.mode``) and lies in a directory only that user may enter (checked and
tightened here before any Envoy starts, so the moment between Envoy's ``bind`` and its ``chmod``
exposes nothing either).

The directory is ``STATE/local/admin/``. A unix socket's path holds at most 107 bytes (Linux's
``sun_path`` is 108 with the terminating NUL; Envoy 1.40 refuses 108 characters): for a state
directory too deep for that, the sockets go to a directory of this federation's own under
``$XDG_RUNTIME_DIR/meshfed/`` (the user's private runtime directory) or else
``/tmp/meshfed-<uid>/``, named by a hash of the state directory, each level created 0700 and
checked to be a directory (not a symlink) owned by this user. ``layout.json`` records every
socket's path, so ``status``, ``down`` and the dashboard find them whatever was chosen.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from meshfed.local.errors import LocalError

MAX_PATH = 107
"""Bytes a unix socket's path may hold (``sun_path`` less its terminating NUL)."""
SOCKET_MODE = 0o600
DIR_MODE = 0o700
_HASHED = 16
"""Hex digits of a hashed name (a socket's, or a fallback directory's)."""
_LONGEST_NAME = len(f"/{'0' * _HASHED}.sock")
"""What a socket's hashed name adds to its directory's path."""


def _fits(path: Path | str) -> bool:
    return len(os.fsencode(path)) <= MAX_PATH


def _hashed(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASHED]


def socket_name(directory: Path, process: str) -> str:
    """The socket of ``process`` (``payments/ingress``) in ``directory``: named after it
    (``payments_ingress.sock``) when that fits, else after a hash of the name."""
    readable = directory / (process.replace("/", "_") + ".sock")
    if _fits(readable):
        return str(readable)
    return str(directory / f"{_hashed(process)}.sock")


def _fits_hashed(directory: Path) -> bool:
    return len(os.fsencode(directory)) + _LONGEST_NAME <= MAX_PATH


def fallback_bases(env: Mapping[str, str], uid: int) -> list[tuple[Path, list[Path]]]:
    """Where a deep state directory's sockets may go, in order: (the existing base that must be
    the user's own, the levels meshfed creates below it)."""
    bases: list[tuple[Path, list[Path]]] = []
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        bases.append((Path(runtime), [Path(runtime) / "meshfed"]))
    bases.append((Path("/tmp"), [Path(f"/tmp/meshfed-{uid}")]))
    return bases


def choose_dir(
    local_root: Path, env: Mapping[str, str] | None = None, uid: int | None = None
) -> Path:
    """The private directory of this runtime's admin sockets, created and checked.

    ``local_root``: ``STATE/local`` (absolute). Raises ``LocalError`` if no candidate is a
    directory only this user can enter.
    """
    env = os.environ if env is None else env
    uid = os.geteuid() if uid is None else uid
    own = local_root / "admin"
    if _fits_hashed(own):
        ensure_private_dir(own, uid)
        return own
    name = _hashed(str(local_root))
    problems: list[str] = []
    for base, levels in fallback_bases(env, uid):
        target = levels[-1] / name
        if not _fits_hashed(target):
            problems.append(f"{target}: too long for a unix socket's path")
            continue
        if base != Path("/tmp") and not _owned_directory(base, uid):
            problems.append(f"{base}: not a directory of this user's own")
            continue
        try:
            for level in [*levels, target]:
                ensure_private_dir(level, uid)
        except LocalError as exc:
            problems.append(exc.problem)
            continue
        return target
    raise LocalError(
        f"no private directory for the Envoys' admin sockets: {own} is too long for a unix "
        "socket's path (at most 107 bytes), and " + "; ".join(problems),
        "use a shorter --state path, or remove what is in the way (it is not meshfed's: "
        "someone else may be waiting for this federation's admin sockets)",
    )


def _owned_directory(path: Path, uid: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022


def ensure_private_dir(path: Path, uid: int | None = None) -> None:
    """``path`` exists as a directory (not a symlink) owned by ``uid`` with mode 0700: created
    so, or an existing one of the user's own tightened to it; anything else is a ``LocalError``.
    """
    uid = os.geteuid() if uid is None else uid
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)
    try:
        # O_NOFOLLOW: a symlink planted at the path is refused, never followed.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        kind = "a symlink" if os.path.islink(path) else "not a directory"
        raise LocalError(
            f"{path} is {kind} ({exc.strerror}): not a private directory for admin sockets",
            f"remove {path} (meshfed creates it itself, mode 0700)",
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != uid:
            raise LocalError(
                f"{path} belongs to uid {st.st_uid}, not to this user (uid {uid}): "
                "not a private directory for admin sockets",
                f"remove {path} (meshfed creates it itself, mode 0700)",
            )
        if stat.S_IMODE(st.st_mode) != DIR_MODE:
            os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


def remove(sockets: Iterable[str], directory: Path | None, local_root: Path) -> None:
    """After the Envoys stopped: their sockets (Envoy leaves its socket file behind), and the
    directory, if it is a fallback one (the base directories stay)."""
    for sock in sockets:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(sock).st_mode):
                os.unlink(sock)
    if directory is not None and not directory.is_relative_to(local_root):
        with contextlib.suppress(OSError):
            directory.rmdir()
