"""``processes.json``: what the runtime started, so ``down`` stops exactly that and nothing else.

Written after every start and stop (under the runtime lock), so a crash loses at most the process
being started; leftovers are also found by their command line naming the runtime directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from meshfed.local.files import read_json, write_json
from meshfed.local.paths import RuntimePaths
from meshfed.local.procs import is_running

STATE_VERSION = 1
WORKLOAD_HOST = "workloads"
"""Name of the workload host in ``processes.json``."""

Kind = Literal["envoy", "workloads", "dashboard"]
_KINDS: dict[str, Kind] = {"workloads": "workloads", "dashboard": "dashboard"}


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    kind: Kind
    pid: int
    start_time: int
    """Clock ticks since boot (``/proc/<pid>/stat``): with the pid, the process's identity."""
    started_at: float
    """Wall clock (epoch seconds) when it was started."""

    @property
    def alive(self) -> bool:
        return is_running(self.pid, self.start_time)


def load_processes(paths: RuntimePaths) -> dict[str, ProcessRecord]:
    doc = read_json(paths.processes)
    if not isinstance(doc, Mapping) or doc.get("version") != STATE_VERSION:
        return {}
    records = {}
    for name, r in dict(doc.get("processes", {})).items():
        try:
            records[name] = ProcessRecord(
                name=name,
                kind=_KINDS.get(r["kind"], "envoy"),
                pid=int(r["pid"]),
                start_time=int(r["start_time"]),
                started_at=float(r.get("started_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return records


def save_processes(paths: RuntimePaths, records: Mapping[str, ProcessRecord]) -> None:
    if not records:
        paths.processes.unlink(missing_ok=True)
        return
    doc: dict[str, Any] = {
        "version": STATE_VERSION,
        "processes": {name: _record_json(r) for name, r in sorted(records.items())},
    }
    write_json(paths.processes, doc, 0o600)


def _record_json(record: ProcessRecord) -> dict[str, Any]:
    doc = asdict(record)
    del doc["name"]
    return doc
