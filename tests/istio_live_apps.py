"""The applications behind the live sidecars and the callers of the live Istio tests: HTTP
echo servers (naming their mesh and workload, echoing method, path and headers), server-first
TCP servers, HTTP and TLS clients, and client certificates with any URI SANs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Obj = dict[str, Any]

# ----------------------------------------------------------------------------- backends


class _Echo(BaseHTTPRequestHandler):
    server_version = "LiveBackend/1.0"
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            {
                "workload": self.server.workload,  # type: ignore[attr-defined]
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-powered-by", "LiveBackend")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a caller that went away (a stalled request the ingress timed out)


class _ServerFirst(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.accepted += 1  # type: ignore[attr-defined]
        self.request.sendall(b"LEDGER READY\n")
        while data := self.request.recv(4096):
            self.request.sendall(data)


class TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    accepted = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        return


@dataclass
class Backends:
    """The applications behind the sidecars: HTTP echo servers and server-first TCP servers."""

    servers: list[socketserver.BaseServer] = field(default_factory=list)

    def http(self, workload: str) -> int:
        server = _Quiet(("127.0.0.1", 0), _Echo)
        server.workload = workload  # type: ignore[attr-defined]
        return self._run(server)

    def tcp(self) -> tuple[int, TCPServer]:
        server = TCPServer(("127.0.0.1", 0), _ServerFirst)
        return self._run(server), server

    def _run(self, server: socketserver.BaseServer) -> int:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return int(server.server_address[1])  # type: ignore[index]

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


# ----------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_call(
    address: str,
    port: int,
    host: str,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    sni: str | None = None,
    timeout: float = 10,
) -> Reply:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        if context is not None:
            sock = socket.create_connection((address, port), timeout=timeout)
            conn.sock = context.wrap_socket(sock, server_hostname=sni)
        conn.request(method, path, headers={"host": host, **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


@dataclass(frozen=True)
class Leaf:
    """A client certificate and key on disk, for calls straight to an ingress."""

    chain: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(str(self.chain), str(self.key))
        return context


def no_cert_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def issue_leaf(
    directory: Path,
    name: str,
    uris: Iterable[str],
    issuer_cert: Path | None,
    issuer_key: Path | None,
    chain_extra: Iterable[Path] = (),
) -> Leaf:
    """A leaf with the given URI SANs, signed by an issuer on disk (or a throwaway CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    if issuer_cert is None or issuer_key is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        signer: Any = ca_key
        issuer = ca
        extra = [ca.public_bytes(serialization.Encoding.PEM)]
    else:
        issuer = x509.load_pem_x509_certificate(issuer_cert.read_bytes())
        signer = serialization.load_pem_private_key(issuer_key.read_bytes(), None)
        extra = [p.read_bytes() for p in chain_extra]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=6))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=True,
        )
        .sign(signer, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    chain = directory / f"{name}-chain.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + b"".join(extra))
    key_path = directory / f"{name}-key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Leaf(chain, key_path)


def tcp_session(
    address: str, port: int, sni: str, context: ssl.SSLContext, wait: float = 1.5
) -> tuple[bytes, bytes, str | None]:
    """(bytes before sending, the echo of a line, the error): what a TCP caller receives."""
    raw = socket.create_connection((address, port), timeout=5)
    before, after, error = b"", b"", None
    try:
        tls = context.wrap_socket(raw, server_hostname=sni)
        tls.settimeout(wait)
        with contextlib.suppress(TimeoutError):
            before = tls.recv(4096)
        tls.sendall(b"ping\n")
        tls.settimeout(3)
        after = tls.recv(4096)
    except (OSError, ssl.SSLError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        raw.close()
    return before, after, error
