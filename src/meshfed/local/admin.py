"""A small client of Envoy's admin interface (loopback; never through an HTTP proxy)."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import quote

from meshfed.local.errors import LocalError
from meshfed.local.ports import LOOPBACK

_ECDS_STAT = re.compile(r"^extension_config_discovery\.[a-z_]+\.(?P<name>.+)\.(?P<stat>[a-z_]+)$")


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
    port: int,
    pattern: str,
    done: Callable[[dict[str, str]], bool],
    failed: Callable[[dict[str, str]], bool],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = stats(port, pattern)
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
