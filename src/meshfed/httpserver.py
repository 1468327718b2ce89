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
        self.refused = 0
        """Connections closed at accept because ``max_connections`` were held."""
        self.cut = 0
        """Connections shut down at their deadline."""
        super().__init__(*args, **kwargs)

    @property
    def active(self) -> int:
        with self._bound_lock:
            return len(self._deadlines)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._bound_lock:
            full = len(self._deadlines) >= self.max_connections
            if full:
                self.refused += 1
            else:
                self._deadlines[request] = time.monotonic() + self.connection_deadline
        if full:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` every poll interval: cut connections past their deadline."""
        super().service_actions()
        now = time.monotonic()
        with self._bound_lock:
            late = [r for r, deadline in self._deadlines.items() if deadline <= now]
            for request in late:
                self._deadlines[request] = float("inf")  # cut once
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
