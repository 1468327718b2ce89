"""A small client of Envoy's admin interface (loopback; never through an HTTP proxy)."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote

from meshfed.local.ports import LOOPBACK


class AdminError(Exception):
    pass


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise AdminError(f"admin port {port}: {exc}") from exc
    finally:
        conn.close()


def ready(port: int, timeout: float = 0.5) -> bool:
    """True if Envoy answers ``/ready`` with LIVE (initialised: clusters and listeners loaded)."""
    try:
        status, _ = get(port, "/ready", timeout)
    except AdminError:
        return False
    return status == 200


def stats(port: int, pattern: str, timeout: float = 2.0) -> dict[str, str]:
    """Stats whose name matches the regex ``pattern``: name -> value (text readouts unquoted)."""
    status, body = get(port, "/stats?filter=" + quote(pattern, safe=""), timeout)
    if status != 200:
        raise AdminError(f"admin port {port}: /stats answered {status}")
    out = {}
    for line in body.decode(errors="replace").splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            out[name.strip()] = value.strip().strip('"')
    return out


def clusters(port: int, timeout: float = 2.0) -> list[dict[str, Any]]:
    """``/clusters?format=json``: the cluster statuses, with each host's health and priority."""
    status, body = get(port, "/clusters?format=json", timeout)
    if status != 200:
        raise AdminError(f"admin port {port}: /clusters answered {status}")
    doc = json.loads(body)
    result: list[dict[str, Any]] = doc.get("cluster_statuses", [])
    return result
