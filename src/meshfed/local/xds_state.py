"""Which xDS files are as this process last wrote or read them: digests by file identity.

Files are compared by a digest of their canonical JSON. A process that writes a file remembers
its digest and version under the file's identity (device, inode, size, times): a later
comparison in the same process (``meshfed up --watch``, one edit after another) reads and parses
only files that somebody else changed meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshfed.local.files import read_json


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def digest(doc: Any) -> str:
    """Digest of a JSON value's canonical form (key order and spacing do not count)."""
    return hashlib.sha256(_canonical(doc).encode()).hexdigest()


def version_after(version: str | None) -> str:
    try:
        return str(int(str(version)) + 1)
    except ValueError:
        return "1"


_FileId = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class FileState:
    """What one file on disk holds: its ``version_info`` and the digest of what counts."""

    version: str | None
    digest: str


_KNOWN: dict[tuple[Path, bool], tuple[_FileId, FileState]] = {}
_KNOWN_LOCK = threading.Lock()


def file_id(path: Path) -> _FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_state(path: Path, whole: bool = False) -> FileState | None:
    """The state of ``path`` (None: missing or not JSON). ``whole``: digest of the whole
    document (a bootstrap), else of its ``resources`` (an xDS or SDS file)."""
    ident = file_id(path)
    if ident is None:
        return None
    with _KNOWN_LOCK:
        known = _KNOWN.get((path, whole))
    if known is not None and known[0] == ident:
        return known[1]
    doc = read_json(path)
    if not isinstance(doc, Mapping):
        return None
    version = doc.get("version_info")
    state = FileState(
        None if version is None else str(version),
        digest(doc if whole else doc.get("resources")),
    )
    remember(path, ident, state, whole)
    return state


def remember(
    path: Path, ident: _FileId | None, state: FileState | None, whole: bool = False
) -> None:
    """Note what this process wrote to ``path`` (``ident`` or ``state`` None: forget it)."""
    with _KNOWN_LOCK:
        if ident is None or state is None:
            _KNOWN.pop((path, whole), None)
        else:
            _KNOWN[(path, whole)] = (ident, state)


def has(path: Path, want: str, whole: bool = False) -> bool:
    state = file_state(path, whole)
    return state is not None and state.digest == want
