"""Stalled connections at a TLS listener: when does the server close each?

Probes, all at once, each on its own connection: ``nothing`` (connect, send nothing), ``partial
ClientHello`` (its first 20 bytes), ``whole ClientHello`` (then silence), and after a complete
mTLS handshake ``idle connection`` (no request), ``half-sent headers`` and ``half-sent body``.
For the last three the time runs from the end of the handshake. Used by the live Istio tests
(tests/test_istio_live.py) against a federation ingress.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time

PROBES = (
    "nothing",
    "partial ClientHello",
    "whole ClientHello",
    "idle connection",
    "half-sent headers",
    "half-sent body",
)


def client_hello(sni: str) -> bytes:
    """A real TLS ClientHello for ``sni`` (Python's, from a memory BIO)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _probe(
    address: str, port: int, sni: str, kind: str, context: ssl.SSLContext, cap: float
) -> float | None:
    start = time.monotonic()
    sock: socket.socket = socket.create_connection((address, port), timeout=cap)
    try:
        if kind == "partial ClientHello":
            sock.sendall(client_hello(sni)[:20])
        elif kind == "whole ClientHello":
            sock.sendall(client_hello(sni))
        elif kind != "nothing":
            sock = context.wrap_socket(sock, server_hostname=sni)
            start = time.monotonic()
            if kind == "half-sent headers":
                sock.sendall(f"GET /v1/a HTTP/1.1\r\nHost: {sni}\r\n".encode())
            elif kind == "half-sent body":
                head = f"POST /v1/a HTTP/1.1\r\nHost: {sni}\r\nContent-Length: 100\r\n\r\n"
                sock.sendall(head.encode() + b"0123456789")
        sock.settimeout(cap)
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except (OSError, ssl.SSLError):
        pass
    finally:
        sock.close()
    return round(time.monotonic() - start, 2)


def stall_probes(
    address: str, port: int, sni: str, context: ssl.SSLContext, deadlines: dict[str, float]
) -> dict[str, float | None]:
    """Seconds until the server closed each probe's connection (None: still open at the
    probe's deadline). ``context`` is a client context whose certificate the listener
    admits."""
    context.set_alpn_protocols(["http/1.1"])
    closed: dict[str, float | None] = {}

    def run(kind: str) -> None:
        closed[kind] = _probe(address, port, sni, kind, context, deadlines[kind])

    threads = [threading.Thread(target=run, args=(kind,)) for kind in PROBES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return closed
