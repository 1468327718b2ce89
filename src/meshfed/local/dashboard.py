"""How ``meshfed up`` runs the dashboard (``meshfed.dashboard``): its port, its config file,
its command line.

``STATE/local/dashboard.json`` holds the port (kept across ``up`` runs while it is free) and is
the dashboard process's one argument, so the process names a file under the runtime directory
like every other process of the runtime (``down`` finds leftovers by that).
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from meshfed.local.errors import LocalError
from meshfed.local.files import read_json, write_json
from meshfed.local.paths import RuntimePaths
from meshfed.local.ports import LOOPBACK, PortAllocator, port_free

DASHBOARD = "dashboard"
"""Name of the dashboard in ``processes.json``."""
CONFIG_VERSION = 1
MODULE = "meshfed.dashboard"


def config_path(paths: RuntimePaths) -> Path:
    return paths.root / "dashboard.json"


def log_path(paths: RuntimePaths) -> Path:
    return paths.logs / "dashboard.log"


def read_config(path: Path) -> dict[str, Any] | None:
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("version") != CONFIG_VERSION:
        return None
    if not isinstance(doc.get("port"), int) or doc.get("address") != LOOPBACK:
        return None
    return doc


def url(paths: RuntimePaths) -> str | None:
    """``http://127.0.0.1:<port>/`` from the config, or None if there is none."""
    doc = read_config(config_path(paths))
    return f"http://{LOOPBACK}:{doc['port']}/" if doc else None


def prepare(
    paths: RuntimePaths, reserved: Iterable[int], allocator: PortAllocator | None = None
) -> Path:
    """Write the config for a dashboard about to start: the earlier port if it is still free and
    not among ``reserved`` (the federation's ports), else a newly allocated one."""
    taken = set(reserved)
    doc = read_config(config_path(paths))
    port = doc["port"] if doc else None
    if port is None or port in taken or not port_free(port, LOOPBACK):
        alloc = allocator or PortAllocator(taken)
        for p in taken:
            alloc.reserve(p)
        port = alloc.allocate()
    path = config_path(paths)
    write_json(path, {"version": CONFIG_VERSION, "address": LOOPBACK, "port": port})
    return path


def argv(config: Path) -> list[str]:
    return [sys.executable, "-m", MODULE, str(config)]


def is_dashboard(cmdline: list[str]) -> bool:
    """True for a dashboard process's command line (leftover detection)."""
    return MODULE in cmdline


def wait_listening(paths: RuntimePaths, alive: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until the dashboard accepts connections; a clear error if it exits or hangs."""
    doc = read_config(config_path(paths))
    if doc is None:
        raise LocalError("the dashboard has no configuration", "run meshfed up again")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((LOOPBACK, doc["port"]), timeout=0.2):
                return
        except OSError:
            pass
        if not alive() or time.monotonic() > deadline:
            try:
                tail = log_path(paths).read_text(errors="replace").splitlines()[-8:]
            except OSError:
                tail = []
            what = "exited" if not alive() else f"is not listening after {timeout:.0f} s"
            raise LocalError(
                f"the dashboard {what}:\n" + "\n".join("  " + line for line in tail),
                f"see {log_path(paths)}",
            )
        time.sleep(0.02)
