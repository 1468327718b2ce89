"""Clients that hold a server's connections and give it nothing: the attacks of issue 13 point 8.

Shared by the attack tests (tests/test_local_attack.py) and the benchmark (bench/dos.py). Every
socket is non-blocking and watched with epoll, so one thread holds thousands of them; each
records when the server closed it. Loopback only.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Stall = Literal["nothing", "partial", "hello"]
"""What a connection sends before going quiet: nothing at all, the first bytes of a ClientHello
(so the server's TLS inspector waits for the rest), or a whole ClientHello (the server answers
and waits for the client's next flight, which never comes)."""


def client_hello(sni: str) -> bytes:
    """A real TLS ClientHello for ``sni`` (Python's ssl; one is reused for every connection)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@dataclass
class Held:
    sock: socket.socket
    opened: float
    closed: float | None = None
    """When the server closed it (EOF or reset), monotonic; None while open."""
    refused: bool = False
    """The connect itself failed (the listen queue was full or the port closed)."""
    peer: str = ""
    """The attacker's own end, ``address:port``, as an access log's peer field shows it."""


@dataclass
class Staller:
    """Holds stalled connections to ``address``; with ``keep`` it opens a new one whenever the
    server closes one, so that ``count`` are always pending (a sustained attack)."""

    address: tuple[str, int]
    count: int
    stall: Stall
    sni: str = "attack.invalid"
    keep: bool = False
    rate: float | None = None
    """With ``keep``: at most this many new connections per second (a bounded flood); None:
    each one as soon as the server closes one."""
    source: str = "127.0.0.2"
    """The attacker's own loopback address (its ports apart from the legitimate traffic's)."""
    held: list[Held] = field(default_factory=list)
    opened: int = 0
    _selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _hello: bytes = b""
    _owed: int = 0
    """Connections to reopen, waiting for the rate."""

    def __post_init__(self) -> None:
        self._hello = client_hello(self.sni)

    def _payload(self) -> bytes:
        if self.stall == "nothing":
            return b""
        return self._hello[:20] if self.stall == "partial" else self._hello

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.source, 0))
        sock.setblocking(False)
        host, port = sock.getsockname()[:2]
        entry = Held(sock, time.monotonic(), peer=f"{host}:{port}")
        self.opened += 1
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            entry.closed, entry.refused = time.monotonic(), True
            sock.close()
            self.held.append(entry)
            return
        self.held.append(entry)
        self._selector.register(sock, selectors.EVENT_WRITE, entry)

    def start(self) -> Staller:
        for _ in range(self.count):
            self._open()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        last = time.monotonic()
        budget = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if self.rate is not None and self._owed:
                budget = min(budget + (now - last) * self.rate, float(self._owed))
                while budget >= 1 and self._owed:
                    budget -= 1
                    self._owed -= 1
                    self._open()
            last = now
            for key, events in self._selector.select(timeout=0.01 if self._owed else 0.05):
                entry: Held = key.data
                if events & selectors.EVENT_WRITE:
                    self._connected(entry)
                elif self._drained(entry):
                    self._finish(entry)

    def _connected(self, entry: Held) -> None:
        payload = self._payload()
        try:
            if entry.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                raise OSError("connect failed")
            if payload:
                entry.sock.send(payload)
            self._selector.modify(entry.sock, selectors.EVENT_READ, entry)
        except OSError:
            entry.refused = True
            self._finish(entry)

    def _drained(self, entry: Held) -> bool:
        """Read what the server sent; True once it closed the connection."""
        try:
            while True:
                data = entry.sock.recv(65536)
                if not data:
                    return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _finish(self, entry: Held) -> None:
        entry.closed = time.monotonic()
        self._selector.unregister(entry.sock)
        entry.sock.close()
        if self.keep and not self._stop.is_set():
            if self.rate is None:
                self._open()
            else:
                self._owed += 1

    def hold_times(self) -> list[float]:
        """Seconds each closed connection was held open (refused connects left out)."""
        return [h.closed - h.opened for h in self.held if h.closed is not None and not h.refused]

    def pending(self) -> list[Held]:
        return [h for h in self.held if h.closed is None]

    def wait_all_closed(self, timeout: float) -> bool:
        """Whether the server closed every connection within ``timeout`` seconds."""
        return _poll(lambda: not self.pending(), timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for entry in self.pending():
            self._selector.unregister(entry.sock)
            entry.sock.close()
        self._selector.close()


def _poll(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
