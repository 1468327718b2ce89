"""The dashboard's HTTP server: loopback only, the page, its JSON and the picture.

``/``             the page (inline CSS and JS; nothing loaded from elsewhere)
``/api/state``    the live state (``collect.Collector.state``), polled by the page every second
``/graph.svg``    the picture of the applied spec, with empty label lines for the counters
``/healthz``      ``ok``

Requests must name the dashboard itself in ``Host`` (127.0.0.1 or localhost with its port): a
web page elsewhere cannot read the boundary log through DNS rebinding. No client can hold it
(``meshfed.httpserver``): at most 32 connections at once, each cut 10 s after accept (the page
polls with one short request per connection).
"""

from __future__ import annotations

import contextlib
import json
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from meshfed.dashboard.page import render_page
from meshfed.httpserver import BoundedHTTPServer

if TYPE_CHECKING:
    from meshfed.dashboard.collect import Collector

CSP = (
    "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


class DashboardServer(BoundedHTTPServer):
    max_connections = 32
    connection_deadline = 10.0
    collector: Collector | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "meshfed-dashboard"
    sys_version = ""
    timeout = 5.0
    """Seconds one read or write may block (the connection's deadline bounds the whole)."""

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").lower()
        return host in {f"127.0.0.1:{self.server.port}", f"localhost:{self.server.port}"}

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if self.command != "HEAD":
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)  # a page closed while its poll was answered

    def _json(self, doc: Any, status: int = 200) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._host_ok():
            self._send(403, b"wrong Host\n", "text/plain; charset=utf-8")
            return
        collector = self.server.collector
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif collector is None:
            self._send(503, b"starting\n", "text/plain; charset=utf-8")
        elif path == "/api/state":
            try:
                self._json(collector.state())
            except Exception as exc:  # one bad reading must not end the dashboard
                self.log_error("state failed: %r", exc)
                self._json({"error": f"{type(exc).__name__}: {exc}", "federation": None}, 500)
        elif path == "/graph.svg":
            model = collector.refresh()
            svg = model.svg if model and model.svg else ""
            self._send(200 if svg else 404, svg.encode(), "image/svg+xml; charset=utf-8")
        elif path in ("/", "/index.html"):
            model = collector.refresh()
            page = render_page(
                federation=model.summary.federation if model else None,
                svg=model.svg if model else "",
                version=model.version if model else "",
            )
            self._send(200, page.encode(), "text/html; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: only errors reach the log."""

    def log_error(self, format: str, *args: Any) -> None:
        super().log_message(format, *args)
