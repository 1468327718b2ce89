"""Loopback ports: is one free, who holds it, and a source of free ones.

Allocated ports come from a range below the kernel's ephemeral range, so an outgoing connection's
source port never takes a port between allocation and the moment Envoy binds it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import random
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

from meshfed.local.errors import LocalError

LOOPBACK = "127.0.0.1"
DEFAULT_RANGE = (20000, 32000)


def is_loopback(address: str) -> bool:
    """True for an IPv4 address in 127.0.0.0/8."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 4 and ip.is_loopback


def port_free(port: int, address: str = LOOPBACK) -> bool:
    """True if nothing listens on ``address:port`` (a wildcard listener counts as taken).

    SO_REUSEADDR: like Envoy's listeners, ignore connections lingering in TIME_WAIT.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


class PortAllocator:
    """Hands out free loopback ports from a range, never one in ``reserved`` or one in use."""

    def __init__(
        self,
        reserved: Iterable[int] = (),
        port_range: tuple[int, int] = DEFAULT_RANGE,
        address: str = LOOPBACK,
        rng: random.Random | None = None,
    ) -> None:
        self.reserved = set(reserved)
        self.low, self.high = port_range
        self.address = address
        # A random starting point: two federations allocating at once rarely pick the same ports.
        self._next = (rng or random.Random()).randrange(self.low, self.high)

    def reserve(self, port: int) -> None:
        self.reserved.add(port)

    def allocate(self) -> int:
        span = self.high - self.low
        for _ in range(span):
            port = self._next
            self._next = self.low + (self._next + 1 - self.low) % span
            if port in self.reserved:
                continue
            if port_free(port, self.address):
                self.reserved.add(port)
                return port
        raise LocalError(
            f"no free loopback port left in {self.low}-{self.high - 1}",
            "stop other local federations (meshfed down) or free some ports",
        )


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN = 10
_NLMSG_HEADER = struct.Struct("=IHHII")
_INODE_OFFSET = 4 + 48 + 16
"""In ``struct inet_diag_msg``: family/state/timer/retrans, ``inet_diag_sockid``, then
expires, rqueue, wqueue and uid before the inode."""


def _diag_listening(family: int) -> dict[int, int]:
    """Socket inode -> port of the listening TCP sockets of ``family``, asked of the kernel
    through ``NETLINK_SOCK_DIAG`` (it filters by state itself: connections are never listed)."""
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN) + bytes(48)
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
    )
    found: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as s:
        s.settimeout(2.0)
        s.sendto(header + request, (0, 0))
        while True:
            data = s.recv(1 << 16)
            offset = 0
            while offset + _NLMSG_HEADER.size <= len(data):
                length, kind = _NLMSG_HEADER.unpack_from(data, offset)[:2]
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR or length < _NLMSG_HEADER.size:
                    raise OSError("sock_diag: the kernel refused the request")
                body = offset + _NLMSG_HEADER.size
                (port,) = struct.unpack_from("!H", data, body + 4)
                (inode,) = struct.unpack_from("=I", data, body + _INODE_OFFSET)
                found[inode] = port
                offset += (length + 3) & ~3
            if not data:
                raise OSError("sock_diag: no answer")


def _proc_listening() -> dict[int, int]:
    """The same from ``/proc/net/tcp{,6}`` (slower: the kernel prints every connection too)."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A":
                    found[int(inode)] = int(local.rsplit(":", 1)[1], 16)
    return found


def listening_sockets() -> dict[int, int]:
    """Socket inode -> port of every listening TCP socket (IPv4 and IPv6)."""
    try:
        return _diag_listening(socket.AF_INET) | _diag_listening(socket.AF_INET6)
    except (OSError, struct.error):
        return _proc_listening()


def _socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds (empty if it cannot be inspected)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return set()
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"{fd_dir}/{fd}")
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def ports_held_by(pids: Iterable[int]) -> set[int]:
    """Listening TCP ports held by any of ``pids``; reads only those processes' descriptors."""
    inodes: set[int] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    if not inodes:
        return set()
    return {port for inode, port in listening_sockets().items() if inode in inodes}


def listening_pids() -> dict[int, set[int]]:
    """Best effort: listening TCP port -> pids holding it (processes we may inspect)."""
    sockets = listening_sockets()
    found: dict[int, set[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for inode in _socket_inodes(int(pid)):
            port = sockets.get(inode)
            if port is not None:
                found.setdefault(port, set()).add(int(pid))
    return found


def listener_pid(port: int) -> int | None:
    """Best effort: the pid of a process listening on TCP ``port``, or None."""
    pids = listening_pids().get(port)
    return min(pids) if pids else None


def describe_holder(port: int) -> str:
    """`` (held by pid N: cmd)`` when the holder can be found, else an empty string."""
    pid = listener_pid(port)
    if pid is None:
        return ""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        cmd = "?"
    return f" (held by pid {pid}: {cmd[:80]})"
