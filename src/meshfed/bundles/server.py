"""The bundle endpoint server: HTTPS GET of each published bundle (SPIFFE Federation 5.2).

One ``BundleServer`` listens on one address and serves one or more paths, each a callable that
returns the current document (so a root rotation is published without a restart). Clients are
never asked to authenticate. Its certificate comes from a ``TlsSource``:

- ``SvidTls`` (``https_spiffe``): an X509-SVID of the endpoint's SPIFFE ID, issued in memory by
  the mesh's current signing CA (the key never touches the state directory; it is written to a
  private temporary file only for as long as ``ssl`` takes to load it), re-issued at 2/3 of its
  life and as soon as the mesh's signing CA changes (a rotation's switch).
- ``FileTls`` (``https_web``): the operator's Web PKI certificate and key files, re-read when
  they change on disk (a renewal by an ACME client needs no restart).

Each new connection takes the source's context of that moment, so rotations and renewals reach
new clients at once.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socket import socket
from typing import Any, Protocol

from cryptography import x509

from meshfed.httpserver import BoundedHTTPServer
from meshfed.pki.certs import cert_to_pem, fingerprint, renewal_time
from meshfed.pki.keys import PrivateKey, key_to_pem

HANDSHAKE_TIMEOUT = 10.0
"""Seconds one read or write of a connection may block."""
MAX_CONNECTIONS = 128
"""Connections served at once; more are closed at accept (a peer's follower retries at its next
interval and keeps its last good bundle meanwhile)."""
CONNECTION_DEADLINE = 10.0
"""Seconds from accept to the end of the exchange (handshake, request, a bundle of a few KB):
a client that sends its request a byte at a time is cut then, however often it sends."""
SVID_TTL = timedelta(hours=1)
SIGNER_CHECK = 2.0
"""Seconds between looks at whether the mesh's signing CA changed."""


class TlsSource(Protocol):
    def context(self) -> ssl.SSLContext: ...


def _server_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE  # SPIFFE Federation 5.2: never require client auth
    tmp = Path(tempfile.mkdtemp(prefix="meshfed-bundle-tls-"))
    try:
        cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
        cert_path.write_bytes(chain_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(str(cert_path), str(key_path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ctx


class Signer(Protocol):
    """What issues the endpoint's SVID: the mesh's current signing CA (``pki.store.MeshCA``)."""

    @property
    def ca_cert(self) -> x509.Certificate: ...

    def issue(
        self, spiffe_id: str, ttl: timedelta, now: datetime
    ) -> tuple[PrivateKey, x509.Certificate]: ...


class SvidTls:
    """``https_spiffe``: the endpoint's X509-SVID, kept current."""

    def __init__(
        self, spiffe_id: str, signer: Callable[[], Signer], ttl: timedelta = SVID_TTL
    ) -> None:
        self.spiffe_id = spiffe_id
        self.signer = signer
        self.ttl = ttl
        self._lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None
        self._leaf: x509.Certificate | None = None
        self._ca: str | None = None
        self._checked = 0.0

    @property
    def leaf(self) -> x509.Certificate | None:
        return self._leaf

    def context(self) -> ssl.SSLContext:
        with self._lock:
            now = datetime.now(UTC)
            due = self._leaf is None or now >= renewal_time(self._leaf)
            signer = None
            if due or time.monotonic() - self._checked >= SIGNER_CHECK:
                signer = self.signer()
                self._checked = time.monotonic()
                due = due or fingerprint(signer.ca_cert) != self._ca
            if due or self._ctx is None:
                signer = signer or self.signer()
                key, leaf = signer.issue(self.spiffe_id, self.ttl, now)
                chain = cert_to_pem(leaf) + cert_to_pem(signer.ca_cert)
                self._ctx = _server_context(chain, key_to_pem(key))
                self._leaf, self._ca = leaf, fingerprint(signer.ca_cert)
            return self._ctx


class FileTls:
    """``https_web``: certificate chain and key files, re-read when either changes."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None
        self._stamp: tuple[float, float] | None = None

    def context(self) -> ssl.SSLContext:
        with self._lock:
            stamp = (self.cert_file.stat().st_mtime, self.key_file.stat().st_mtime)
            if self._ctx is None or stamp != self._stamp:
                self._ctx = _server_context(self.cert_file.read_bytes(), self.key_file.read_bytes())
                self._stamp = stamp
            return self._ctx


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = HANDSHAKE_TIMEOUT
    server_version = "meshfed-bundle-endpoint"
    sys_version = ""

    def _document(self) -> bytes | None:
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self.send_error(404, "no bundle here")
            return None
        try:
            return route()
        except Exception as exc:  # the state is being rotated, damaged...: say so, keep serving
            self.server.log(f"bundle endpoint: cannot serve {self.path}: {exc}")
            self.send_error(503, "bundle unavailable")
            return None

    def _head(self) -> bytes | None:
        """The status line and headers of the document (HEAD says exactly what GET does)."""
        body = self._document()
        if body is None:
            return None
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        return body

    def do_GET(self) -> None:
        body = self._head()
        if body is not None:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._head()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(BoundedHTTPServer):
    max_connections = MAX_CONNECTIONS
    connection_deadline = CONNECTION_DEADLINE

    def __init__(
        self,
        address: tuple[str, int],
        routes: Mapping[str, Callable[[], bytes]],
        tls: TlsSource,
        log: Callable[[str], None],
    ) -> None:
        self.routes = routes  # read at each request: a live mapping may change
        self.tls = tls
        self.log = log
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket, Any]:
        sock, addr = self.socket.accept()
        try:
            ctx = self.tls.context()
        except Exception as exc:
            sock.close()
            self.log(f"bundle endpoint: no TLS certificate to serve with: {exc}")
            raise OSError("no TLS certificate") from None
        sock.settimeout(HANDSHAKE_TIMEOUT)
        return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError):
            return  # a client that is not speaking TLS, or gave up: nothing to serve
        super().finish_request(request, client_address)


class BundleServer:
    """Serves ``routes`` (path -> current document) over HTTPS on ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Callable[[], bytes]],
        tls: TlsSource,
        log: Callable[[str], None] = print,
        max_connections: int = MAX_CONNECTIONS,
        connection_deadline: float = CONNECTION_DEADLINE,
    ) -> None:
        self._server = _Server((host, port), routes, tls, log)
        self._server.max_connections = max_connections
        self._server.connection_deadline = connection_deadline
        self._thread: threading.Thread | None = None

    @property
    def server(self) -> BoundedHTTPServer:
        """The HTTP server (its ``active``, ``finishing``, ``refused`` and ``cut`` counts)."""
        return self._server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> BundleServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> BundleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
