"""Watching one file (the spec of ``meshfed up --watch``) for saved edits.

Editors save in two ways: write the file in place (one ``IN_CLOSE_WRITE``), or write a new file
and rename it over the old one (``IN_MOVED_TO``; the old inode is gone). So the watch is on the
file's *directory*, filtered by name, through inotify (a small ctypes wrapper: no dependency);
and every wake-up compares the file's content with the last content reported, so a touch, a
save without changes or a burst of events reports nothing or one change.

Without inotify (no instance left: every Envoy holds a few of the per-user 128, say; or another
kernel) the file is re-stat'ed by path every ``POLL_S``. Either way the path is also re-stat'ed
every ``RECHECK_S``, which catches what no event names (a symlink's target replaced, a directory
renamed away and back, a writer that never closes the file).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import select
import struct
import time
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.05
"""Re-stat interval without inotify."""
RECHECK_S = 1.0
"""Re-stat interval with inotify (a safety net; events come first)."""
SETTLE_S = 0.03
"""A re-stat reports a content only once it is this old (an in-place save truncates first)."""
EMPTY_SETTLE_S = 1.0
"""An empty file waits longer: an in-place save truncates, then writes, and on a loaded machine
the writer can be off the CPU for more than ``SETTLE_S`` in between (seen at a load of 20)."""

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
"""A file finished writing or renamed into place; the directory itself going away."""

_EVENT = struct.Struct("=iIII")


@dataclass(frozen=True)
class Event:
    mask: int
    name: str


def parse_events(buffer: bytes) -> list[Event]:
    """``struct inotify_event`` records (``wd``, ``mask``, ``cookie``, ``len``, ``name``)."""
    events = []
    offset = 0
    while offset + _EVENT.size <= len(buffer):
        _, mask, _, length = _EVENT.unpack_from(buffer, offset)
        start = offset + _EVENT.size
        name = buffer[start : start + length].split(b"\0", 1)[0]
        events.append(Event(mask, os.fsdecode(name)))
        offset = start + length
    return events


def concerns(events: list[Event], name: str) -> bool:
    """Do ``events`` (on the watched directory) concern the file ``name``, or the directory?"""
    gone = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
    return any(e.name == name or e.mask & gone for e in events)


WOKEN = Event(0, "")
"""Not an inotify event: the wake-up descriptor became readable."""


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(fd, 512):
            pass


def _woken(wake: int | None, timeout: float) -> bool:
    """Sleep ``timeout``; True as soon as ``wake`` is readable (drained then)."""
    if wake is None:
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([wake], [], [], max(0.0, timeout))
    if ready:
        _drain(wake)
        return True
    return False


class Inotify:
    """One inotify instance watching one directory; ``None`` from ``open`` if unavailable."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, directory: Path, mask: int = WATCH_MASK) -> Inotify | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)  # this process's libc
            init = libc.inotify_init1
            add = libc.inotify_add_watch
        except (OSError, AttributeError):
            return None
        init.argtypes = [ctypes.c_int]
        add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = int(init(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            return None  # EMFILE: the per-user instance limit is reached
        if int(add(fd, os.fsencode(directory), mask)) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def wait(self, timeout: float, wake: int | None = None) -> list[Event] | None:
        """Events that came within ``timeout`` (empty: none; ``[WOKEN]``: ``wake`` became
        readable first); None when the watch is gone."""
        fds = [self.fd] if wake is None else [self.fd, wake]
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if wake is not None and wake in ready:
            _drain(wake)
            return [WOKEN]
        if not ready:
            return []
        events: list[Event] = []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            events += parse_events(chunk)
        if any(e.mask & IN_IGNORED for e in events):
            return None
        return events

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass(frozen=True)
class Seen:
    """What a file looked like: its identity (cheap to compare) and a digest of its content."""

    identity: tuple[int, int, int, int] | None
    digest: str | None


def look(path: Path) -> Seen:
    """The file now (``Seen(None, None)``: missing or unreadable)."""
    try:
        st = os.stat(path)
        data = path.read_bytes()
    except OSError:
        return Seen(None, None)
    return Seen((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), _digest(data))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileWatcher:
    """Reports each new content of ``path``: ``wait()`` returns once it differs from the last
    content reported (or the content when the watcher was made)."""

    def __init__(self, path: Path, poll: float = POLL_S, recheck: float = RECHECK_S) -> None:
        self.path = path
        self.poll = poll
        self.recheck = recheck
        self.last = look(path)
        self.inotify = Inotify.open(path.absolute().parent)

    @property
    def how(self) -> str:
        if self.inotify is not None:
            return "inotify"
        return f"a re-stat every {self.poll * 1000:.0f} ms"

    def changed(self, written: bool = False) -> bool:
        """Whether the content differs from the last reported; if so, it is now the last.
        ``written``: an event said the file was written (its identity alone may not show it:
        two saves of the same size within one timestamp tick)."""
        ident = _identity(self.path)
        unchanged = self.last.identity is not None and ident == self.last.identity
        if unchanged and not written:
            return False
        if not written and ident is not None:
            age = time.time_ns() - ident[2]
            settle = EMPTY_SETTLE_S if ident[1] == 0 else SETTLE_S
            if age < settle * 1e9:
                # Seen by a re-stat while it is being written (truncated, half written): the
                # next look decides. An inotify event comes when the writer closed the file.
                return False
        now = look(self.path)
        if now.digest is None:
            return False  # missing (an editor between delete and create): wait for it
        if now.digest == self.last.digest:
            self.last = now
            return False
        self.last = now
        return True

    def wait(self, timeout: float | None = None, wake: int | None = None) -> bool:
        """Block until the file's content changed (True), ``timeout`` passed, or the file
        descriptor ``wake`` became readable (False; what is in it is read and dropped: a
        ``signal.set_wakeup_fd`` pipe, say)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.recheck if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return self.changed()
            if self.inotify is None:
                if _woken(wake, min(self.poll, left)):
                    return False
                if self.changed():
                    return True
                continue
            events = self.inotify.wait(min(self.recheck, left), wake)
            if events is None:  # the directory went away: re-stat by path from now on
                self.close()
                written = True
            elif events and events[0] is WOKEN:
                return False
            elif events:
                if not concerns(events, self.path.name):
                    continue
                written = True
            else:
                written = False  # the periodic re-stat
            if self.changed(written):
                return True

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None
