"""``meshfed up --watch`` on real Envoy: saved edits apply live, bad ones change nothing, and
Ctrl-C / SIGTERM stop the watch and leave the federation running (as ``up`` does)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_helpers import MeshfedProcess, assert_nothing_left
from meshfed.local.client import NoResponse, http_call
from meshfed.local.ports import PortAllocator
from meshfed.local.runtime import Runtime

pytestmark = pytest.mark.envoy


SPEC = """\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata:
  name: watched
spec:
  trust:
    mode: SharedRoot
  meshes:
    - name: left
      trustDomain: left.example
      ingress: {{address: 127.0.0.1, port: {left}}}
      workloads:
        - {{name: api, namespace: app, serviceAccount: api, port: 8080, protocol: HTTP}}
{extra_workload}\
    - name: right
      trustDomain: right.example
      ingress: {{address: 127.0.0.1, port: {right}}}
      workloads:
        - {{name: client, namespace: app, serviceAccount: client, port: 8080, protocol: HTTP}}
  exports:
    - name: api
      mesh: left
      workload: app/api
      consumers:
        - mesh: right
          principals: [ns/app/sa/client]
{extra_export}\
  imports:
    - mesh: right
      host: api.app.svc.cluster.local
      port: 80
      from: [left/api]
{extra_import}"""

PAY_WORKLOAD = (
    "        - {name: pay, namespace: app, serviceAccount: pay, port: 8080, protocol: HTTP}\n"
)
PAY_EXPORT = """\
    - name: {name}
      mesh: left
      workload: app/pay
      consumers:
        - mesh: right
          principals: [ns/app/sa/client]
"""
PAY_IMPORT = """\
    - mesh: right
      host: {name}.app.svc.cluster.local
      port: 80
      from: [left/{source}]
"""
API = "http://api.app.svc.cluster.local/v1"


class Spec:
    """The watched spec file, written the two ways editors save."""

    def __init__(self, path: Path) -> None:
        self.path = path
        alloc = PortAllocator()
        self.ports = {"left": alloc.allocate(), "right": alloc.allocate()}

    def text(self, pay: str | None = None, source: str | None = None) -> str:
        return SPEC.format(
            **self.ports,
            extra_workload=PAY_WORKLOAD if pay else "",
            extra_export=PAY_EXPORT.format(name=pay) if pay else "",
            extra_import=PAY_IMPORT.format(name=pay, source=source or pay) if pay else "",
        )

    def save_by_rename(self, text: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.swp")
        tmp.write_text(text)
        os.rename(tmp, self.path)

    def save_in_place(self, text: str) -> None:
        self.path.write_text(text)


class Watcher(MeshfedProcess):
    """``meshfed up SPEC --watch`` in a subprocess; its output lines, as they come."""

    def __init__(self, spec: Path, state: Path) -> None:
        super().__init__("up", str(spec), "--state", str(state), "--watch")

    def stop(self, sig: int) -> int:
        self.signal(sig)
        return self.wait(timeout=30)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Spec, Watcher, Runtime]]:
    spec = Spec(tmp_path / "spec.yaml")
    spec.save_in_place(spec.text())
    state = tmp_path / "state"
    watcher = Watcher(spec.path, state)
    try:
        watcher.expect("out", lambda line: line.startswith("watching "))
        yield spec, watcher, Runtime(state)
    finally:
        watcher.kill()
        Runtime(state).down()
        assert_nothing_left(state)


def _call(runtime: Runtime, url: str) -> tuple[int, dict[str, str] | None]:
    layout = runtime.layout()
    assert layout is not None
    port = layout.meshes["right"].sidecars["app/client"].outbound_port
    try:
        resp = http_call(port, "GET", url, timeout=5)
    except NoResponse:
        return 0, None
    return resp.status, (json.loads(resp.body) if resp.status == 200 else None)


def _pids(runtime: Runtime) -> dict[str, int]:
    return {n: r.pid for n, r in runtime.processes().items() if r.alive}


def test_edits_apply_live_and_bad_ones_change_nothing(
    watched: tuple[Spec, Watcher, Runtime],
) -> None:
    spec, watcher, runtime = watched
    assert _call(runtime, API)[0] == 200
    before = _pids(runtime)

    # A good edit (saved by rename): a new workload, its export and an import of it.
    spec.save_by_rename(spec.text(pay="pay"))
    line = watcher.expect("out", lambda line: " applied spec.yaml in " in line)
    assert "+ [left] exposes left/pay (app/pay)" in line
    assert "+ [right] imports pay.app.svc.cluster.local:80 from left/pay" in line
    assert "started left/sidecar/app/pay" in line and "| 2 imports probed: ok" in line
    status, doc = _call(runtime, "http://pay.app.svc.cluster.local/x")
    assert status == 200 and doc is not None
    assert (doc["mesh"], doc["workload"]) == ("left", "app/pay")
    assert doc["caller"] == "spiffe://right.example/ns/app/sa/client"
    after = _pids(runtime)
    assert {n: p for n, p in after.items() if n in before} == before, "a process was restarted"

    # A bad edit (saved in place): the same error as up, and nothing changes.
    bad = spec.text(pay="pay", source="nope")
    spec.save_in_place(bad)
    watcher.expect("err", lambda line: "problem(s); nothing was changed" in line)
    problem = next(line for line in watcher.output("err") if "no export 'left/nope'" in line)
    line_no = bad.splitlines().index("      from: [left/nope]") + 1
    assert problem.startswith(f"{spec.path}:{line_no}: ")
    assert "spec.imports[1].from[0]" in problem and "Fix: " in problem
    assert _call(runtime, "http://pay.app.svc.cluster.local/x")[0] == 200
    assert _call(runtime, API)[0] == 200
    assert _pids(runtime) == after

    # The next good edit applies: the export is renamed, the import follows it.
    spec.save_in_place(spec.text(pay="pay2"))
    line = watcher.expect("out", lambda line: " applied spec.yaml in " in line)
    assert "exposes left/pay2" in line and "stops exposing left/pay " in line
    status, doc = _call(runtime, "http://pay2.app.svc.cluster.local/x")
    assert status == 200 and doc is not None and doc["workload"] == "app/pay"
    assert _call(runtime, "http://pay.app.svc.cluster.local/x")[0] == 502  # no import
    assert _pids(runtime) == after

    # Ctrl-C: the watch ends cleanly; the federation keeps running for meshfed down.
    assert watcher.stop(signal.SIGINT) == 0, watcher.seen
    assert watcher.output("out")[-1].startswith("stopped watching; the federation keeps running")
    assert not [line for line in watcher.output("err") if "Traceback" in line]
    assert _pids(runtime) == after
    assert _call(runtime, API)[0] == 200


def test_sigterm_stops_the_watch_and_leaves_the_federation(
    watched: tuple[Spec, Watcher, Runtime],
) -> None:
    spec, watcher, runtime = watched
    # Right after a save: the edit is either not picked up yet or applied in full first.
    spec.save_in_place(spec.text(pay="pay"))
    assert watcher.stop(signal.SIGTERM) == 0, watcher.seen
    assert watcher.output("out")[-1].startswith("stopped watching; the federation keeps running")
    assert not [line for line in watcher.output("err") if "Traceback" in line]
    applied = any(" applied spec.yaml in " in line for line in watcher.output("out"))
    records = runtime.processes()
    assert records and all(r.alive for r in records.values())
    assert ("left/sidecar/app/pay" in records) == applied
    assert _call(runtime, API)[0] == 200
    assert _call(runtime, "http://pay.app.svc.cluster.local/x")[0] == (200 if applied else 502)
