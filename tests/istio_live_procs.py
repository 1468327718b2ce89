"""The live Istio tests' processes: which binaries, how they start, how they stop.

Binaries come from the environment (see tests/test_istio_live.py), never from a fixed path.
Every process runs in its own process group; :class:`Processes` stops exactly what it
started, by its group id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


class LiveError(RuntimeError):
    """Something the live environment needs did not start or answer."""


# ----------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Binaries:
    pilot_discovery: Path
    pilot_agent: Path
    envoy: Path
    bootstrap: Path
    kube_apiserver: Path
    etcd: Path
    kubectl: Path


def _find(directory: Path, names: Iterable[str]) -> Path | None:
    for sub in ("", "bin", "share", "usr/local/bin", "var/lib/istio/envoy"):
        for name in names:
            candidate = directory / sub / name
            if candidate.exists():
                return candidate.resolve()
    return None


def binaries() -> Binaries | str:
    """The binaries the environment names, or why the live tests cannot run."""
    istio = os.environ.get("MESHFED_TEST_ISTIO", "")
    if not istio:
        return (
            "MESHFED_TEST_ISTIO is not set: these tests run meshfed's Istio output on a real "
            "istiod, Istio proxies and kube-apiservers (see tests/test_istio_live.py)"
        )
    root = Path(istio)
    found = {
        "pilot_discovery": _find(root, ["pilot-discovery"]),
        "pilot_agent": _find(root, ["pilot-agent"]),
        "envoy": _find(root, ["envoy"]),
        "bootstrap": Path(os.environ["MESHFED_TEST_ISTIO_BOOTSTRAP"])
        if os.environ.get("MESHFED_TEST_ISTIO_BOOTSTRAP")
        else _find(root, ["envoy_bootstrap_tmpl.json", "envoy_bootstrap.json"]),
    }
    apiserver = os.environ.get("MESHFED_TEST_KUBE_APISERVER", "")
    found["kube_apiserver"] = Path(apiserver) if apiserver else None
    etcd = os.environ.get("MESHFED_TEST_ETCD") or shutil.which("etcd")
    found["etcd"] = Path(etcd) if etcd else None
    kubectl = shutil.which("kubectl")
    found["kubectl"] = Path(kubectl) if kubectl else None
    missing = [name for name, path in found.items() if path is None or not path.exists()]
    if missing:
        return f"MESHFED_TEST_ISTIO is set but these are missing: {', '.join(missing)}"
    return Binaries(**{k: v for k, v in found.items() if v is not None})


# ----------------------------------------------------------------------------- processes


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((host, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def proc_alive(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is None


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, alive: Callable[[], bool] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
        if alive is not None and not alive():
            raise LiveError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise LiveError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.3)


@dataclass
class Processes:
    """Every process the live tests start, each in its own process group."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # The group may outlive its leader (pilot-agent's Envoy).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc)


def write_file(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path
