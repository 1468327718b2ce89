"""Where the local runtime keeps its state: ``STATE/local/``.

layout.json      allocated ports (stable across ``up`` runs)
processes.json   running processes: pid, start time, base id (removed by ``down``)
runtime.json     what the last ``up`` applied: meshes, workloads, imports (for status/call)
probes.json      the import probes that passed (``up`` runs one again only when its path changed)
                 and those that failed (``status`` reports them)
workloads.json   configuration of the workload host
envoy/...        per Envoy: bootstrap, lds/, cds/, sds/, ecds/ (owned by render/envoy/files.py)
logs/            stdout/stderr of every process, and the gateways' access logs
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DIR_MODE = 0o700


@dataclass(frozen=True)
class RuntimePaths:
    state_dir: Path

    @property
    def root(self) -> Path:
        return self.state_dir / "local"

    @property
    def layout(self) -> Path:
        return self.root / "layout.json"

    @property
    def processes(self) -> Path:
        return self.root / "processes.json"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime.json"

    @property
    def probes(self) -> Path:
        return self.root / "probes.json"

    @property
    def workloads(self) -> Path:
        return self.root / "workloads.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def process_log(self, name: str) -> Path:
        """stdout/stderr of one process (``payments/ingress`` -> ``logs/payments/ingress.log``)."""
        return self.logs / f"{name}.log"

    def ensure(self) -> None:
        mkdir_private(self.root)
        mkdir_private(self.logs)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One command at a time changes a runtime (``up``, ``down``, ``lab``)."""
        self.ensure()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def mkdir_private(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0700; existing directories stay as they are."""
    if path.is_dir():
        return
    mkdir_private(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)
