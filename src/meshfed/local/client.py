"""``meshfed call``: a request as one workload of a mesh, through that workload's sidecar.

HTTP URLs go to the sidecar's plain outbound port with the URL's host as ``Host`` (the import's
local name); ``tcp://host:port`` URLs go to the sidecar's local port for that TCP import.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from meshfed.local.errors import LocalError
from meshfed.local.ports import LOOPBACK
from meshfed.render.envoy.layout import SidecarLayout


class NoResponse(Exception):
    """No HTTP response (or TCP greeting) came: refused, reset, TLS failure, timeout."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def http_call(
    port: int,
    method: str,
    url: str,
    data: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    timeout: float = 20.0,
) -> Response:
    """Send ``method url`` to the sidecar outbound ``port`` with ``Host`` = the URL's host."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LocalError(
            f"{url!r} is not an http:// URL with a host",
            "use http://<local name of an import>/path (TLS is the sidecar's job)",
        )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", parts.netloc)
        for name, value in headers or []:
            conn.putheader(name, value)
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise NoResponse(reason) from exc
    finally:
        conn.close()
    return Response(resp.status, resp.reason, resp.getheaders(), body)


def tcp_call(port: int, data: bytes | None, timeout: float = 10.0) -> bytes:
    """Connect to a TCP import's local port; the greeting line and, if ``data``, its echo."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            reader = s.makefile("rb")
            out = reader.readline()
            if not out:
                raise NoResponse("connection closed without a greeting")
            if data is not None:
                s.sendall(data if data.endswith(b"\n") else data + b"\n")
                out += reader.readline()
            return out
    except OSError as exc:
        raise NoResponse(f"{type(exc).__name__}: {exc}") from exc


def tcp_port(sidecar: SidecarLayout, url: str) -> int:
    parts = urlsplit(url)
    key = f"{parts.hostname}:{parts.port}"
    if parts.port is None or key not in sidecar.tcp_outbound:
        known = ", ".join(f"tcp://{k}" for k in sorted(sidecar.tcp_outbound)) or "none"
        raise LocalError(f"{url!r} is not a TCP import of this mesh", f"TCP imports: {known}")
    return sidecar.tcp_outbound[key]
