"""An HTTP server no client can hold: meshfed's own small servers (the bundle endpoint, the
dashboard) are built on it.

Python's ``ThreadingHTTPServer`` starts a thread for every connection and keeps it for as long
as the client keeps sending a byte now and then (a socket timeout bounds one read, not the
request): 4,000 clients sending a header byte every few seconds held 4,000 threads and 310 MB of
a ``meshfed trust serve`` for as long as they liked. Here, as on meshfed's Envoys
(``plan/limits.py``):

- at most ``max_connections`` connections at once; the next ones are closed at accept;
- each connection lives at most ``connection_deadline`` seconds from accept, whatever it is
  doing (a TLS handshake, a request sent a byte at a time, a response read slowly): then its
  socket is shut down, which ends the blocked read or write of its thread.

A connection's slot is freed as soon as the server ends it (answered, or cut at its deadline),
before its client can see it closed: a client that sees its connection end and connects again at
once is served, however late the ended connection's thread runs on a loaded machine (before, it
was refused until that thread had unwound). The thread then finishes on its own: its socket is
shut down, so nothing it does waits for the client. So that threads held up in the server's own
code (a route waiting on a lock past the deadline) cannot pile up, a connection is also refused
while twice ``max_connections`` handler threads are alive, those of ended connections still
finishing included: one full set of cut connections unwinding never keeps the next client out.

Each connection carries one request (HTTP/1.0, as ``BaseHTTPRequestHandler`` speaks by default),
so the deadline bounds a whole exchange.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

__all__ = ["BoundedHTTPServer"]


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    max_connections = 128
    """Connections held at once; more are closed as soon as they are accepted."""
    connection_deadline = 10.0
    """Seconds a connection may live from accept, whatever it is doing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._bound_lock = threading.Lock()
        self._deadlines: dict[Any, float] = {}
        """The open connections, each with its deadline."""
        self._running = 0
        """Handler threads alive: the open connections' and those of ended ones finishing."""
        self.refused = 0
        """Connections closed at accept because ``max_connections`` were held (or twice as many
        handler threads were alive)."""
        self.cut = 0
        """Connections shut down at their deadline."""
        super().__init__(*args, **kwargs)

    @property
    def active(self) -> int:
        """Connections open (accepted, and not yet answered or cut)."""
        with self._bound_lock:
            return len(self._deadlines)

    @property
    def finishing(self) -> int:
        """Threads of connections already ended (answered or cut) that have not yet returned."""
        with self._bound_lock:
            return self._running - len(self._deadlines)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._bound_lock:
            full = (
                len(self._deadlines) >= self.max_connections
                or self._running >= 2 * self.max_connections
            )
            if full:
                self.refused += 1
            else:
                self._deadlines[request] = time.monotonic() + self.connection_deadline
                self._running += 1
        if full:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread (the caller shuts the request down: its slot is freed)
            with self._bound_lock:
                self._running -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._bound_lock:
                self._running -= 1

    def shutdown_request(self, request: Any) -> None:
        """Frees the connection's slot before its client can see it closed, then closes it."""
        self._forget(request)
        super().shutdown_request(request)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` every poll interval: cut connections past their deadline."""
        super().service_actions()
        now = time.monotonic()
        with self._bound_lock:
            late = [r for r, deadline in self._deadlines.items() if deadline <= now]
            for request in late:
                del self._deadlines[request]  # its slot is free before its client sees the cut
            self.cut += len(late)
        for request in late:
            # The plain socket's shutdown, also for a TLS socket: it wakes the thread blocked in
            # a read or write without touching the TLS state that thread is using.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(request, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection cut at its deadline, or a client gone, ends its exchange quietly; anything
        else is reported as ``socketserver`` does (a traceback on stderr)."""
        if isinstance(sys.exception(), OSError):
            return
        super().handle_error(request, client_address)

    def _forget(self, request: Any) -> None:
        with self._bound_lock:
            self._deadlines.pop(request, None)
