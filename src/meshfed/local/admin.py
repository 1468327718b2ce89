"""A small client of Envoy's admin interface, over its unix socket (``adminsock.py``: the admin
endpoint never listens on TCP, where every local process would reach it).

Every function takes the socket's path (a ``str``, as ``ProcessConfig.admin_socket`` holds it).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import quote

from meshfed.local.errors import LocalError

_ECDS_STAT = re.compile(r"^extension_config_discovery\.[a-z_]+\.(?P<name>.+)\.(?P<stat>[a-z_]+)$")


class AdminError(Exception):
    pass


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the unix socket at ``path`` (``Host: localhost``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def request(sock: str, method: str, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One request to the admin endpoint at unix socket ``sock``: status and body."""
    conn = UnixHTTPConnection(sock, timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise AdminError(f"admin socket {sock}: {exc}") from exc
    finally:
        conn.close()


def get(sock: str, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    return request(sock, "GET", path, timeout)


def ready(sock: str, timeout: float = 0.5) -> bool:
    """True if Envoy answers ``/ready`` with LIVE (initialised: clusters and listeners loaded)."""
    try:
        status, _ = get(sock, "/ready", timeout)
    except AdminError:
        return False
    return status == 200


def stats(sock: str, pattern: str, timeout: float = 2.0) -> dict[str, str]:
    """Stats whose name matches the regex ``pattern``: name -> value (text readouts unquoted)."""
    status, body = get(sock, "/stats?filter=" + quote(pattern, safe=""), timeout)
    if status != 200:
        raise AdminError(f"admin socket {sock}: /stats answered {status}")
    out = {}
    for line in body.decode(errors="replace").splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            out[name.strip()] = value.strip().strip('"')
    return out


def clusters(sock: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    """``/clusters?format=json``: the cluster statuses, with each host's health and priority."""
    status, body = get(sock, "/clusters?format=json", timeout)
    if status != 200:
        raise AdminError(f"admin socket {sock}: /clusters answered {status}")
    doc = json.loads(body)
    result: list[dict[str, Any]] = doc.get("cluster_statuses", [])
    return result


def ecds_stats_pattern(names: Collection[str]) -> str:
    """Admin stats pattern of the ECDS subscriptions ``names``: their applied version and how
    often Envoy rejected a file (``extension_config_discovery.<http|network>_filter.<name>.``)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names))
    return (
        rf"^extension_config_discovery\.[a-z_]+\.({alternatives})\.(version_text|update_rejected)$"
    )


def ecds_stats(stats: Mapping[str, str], stat: str) -> dict[str, str]:
    """``stat`` (``version_text`` or ``update_rejected``) of each ECDS subscription in ``stats``."""
    out = {}
    for key, value in stats.items():
        m = _ECDS_STAT.match(key)
        if m and m["stat"] == stat:
            out[m["name"]] = value
    return out


def wait_for_stats(
    sock: str,
    pattern: str,
    done: Callable[[dict[str, str]], bool],
    failed: Callable[[dict[str, str]], bool],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = stats(sock, pattern)
        except AdminError as exc:
            # Envoy answers its admin interface on the thread that applies a new listener: a
            # large one (thousands of principals) can keep it busy past one request's timeout.
            busy = isinstance(exc.__cause__, TimeoutError)
            if busy and time.monotonic() < deadline:
                continue
            raise LocalError(f"Envoy's admin interface stopped answering ({exc})") from None
        if done(s):
            return
        if failed(s):
            raise LocalError("Envoy rejected the update")
        if time.monotonic() > deadline:
            raise LocalError(f"Envoy did not apply the update within {timeout:.0f} s")
        time.sleep(0.005)
