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
from meshfed.local.summary import ImportInfo, RuntimeSummary
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


def import_url(imp: ImportInfo) -> str:
    """How ``meshfed call`` names an import: ``http://<local name>`` or ``tcp://<name>:<port>``."""
    if imp.protocol == "TCP":
        return f"tcp://{imp.local_host}:{imp.port}"
    return f"http://{imp.local_host}" + ("" if imp.port == 80 else f":{imp.port}")


def check_imported(summary: RuntimeSummary, mesh: str, url: str) -> ImportInfo:
    """The import of ``mesh`` that ``url`` calls; a clear error listing the mesh's imports if
    it calls none (a sidecar routes only its mesh's imports: anything else would be a bare 502
    from the caller's own sidecar)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "tcp") or not parts.hostname:
        raise LocalError(
            f"{url!r} is not an http:// or tcp:// URL with a host",
            "use http://<local name of an import>/path or tcp://<local name>:<port> (TLS is "
            "the sidecar's job)",
        )
    tcp = parts.scheme == "tcp"
    mine = [i for i in summary.imports if i.mesh == mesh]
    for imp in mine:
        if imp.local_host != parts.hostname or (imp.protocol == "TCP") != tcp:
            continue
        if not tcp or parts.port == imp.port:
            return imp
    listed = ", ".join(f"{import_url(i)} ({i.protocol})" for i in mine)
    others = sorted({i.mesh for i in summary.imports if i.local_host == parts.hostname} - {mesh})
    hint = f"imports of {mesh}: {listed}" if mine else f"mesh {mesh} imports nothing"
    if others:
        hint += f"; {parts.hostname} is an import of mesh {', '.join(others)} (--mesh)"
    raise LocalError(
        f"{parts.hostname or url} is not an import of mesh {mesh}: its sidecar has no route "
        "for it (a call would get a bare 502 from the caller's own sidecar: REGISTRY_ONLY)",
        hint,
    )
