"""SIGTERM and SIGHUP act as Ctrl-C in ``meshfed up`` and ``up --watch``, at every moment: real
signals to real ``meshfed`` processes (the console script's entry point), parked at known points
(``meshfed.holds``); afterwards nothing is left running that should not run, and the records say
what runs.

(Ctrl-C alone is in ``test_local_ctrlc.py``; rotation in ``test_signals_rotate.py``.)
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_helpers import MeshfedProcess, assert_nothing_left, poll, spec_copy
from meshfed.local.client import NoResponse, http_call
from meshfed.local.ports import PortAllocator
from meshfed.local.runtime import Runtime

pytestmark = pytest.mark.envoy

SMALL = """\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata:
  name: signals
spec:
  trust:
    mode: SharedRoot
  meshes:
    - name: left
      trustDomain: left.example
      ingress: {{address: 127.0.0.1, port: {left}}}
      workloads:
        - {{name: api, namespace: app, serviceAccount: api, port: 8080, protocol: HTTP}}
{pay_workload}\
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
        - {{mesh: right, principals: [ns/app/sa/client]}}
{pay_export}\
  imports:
    - {{mesh: right, host: api.app.svc.cluster.local, port: 80, from: [left/api]}}
{pay_import}"""
PAY = {
    "pay_workload": "        - {name: pay, namespace: app, serviceAccount: pay, port: 8080, "
    "protocol: HTTP}\n",
    "pay_export": "    - name: pay\n      mesh: left\n      workload: app/pay\n      consumers:\n"
    "        - {mesh: right, principals: [ns/app/sa/client]}\n",
    "pay_import": "    - {mesh: right, host: pay.app.svc.cluster.local, port: 80, "
    "from: [left/pay]}\n",
}
NO_PAY = dict.fromkeys(PAY, "")
API = "http://api.app.svc.cluster.local/v1"
PAY_URL = "http://pay.app.svc.cluster.local/v1"
PAY_SIDECAR = "left/sidecar/app/pay"
NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class Small:
    """The two-mesh spec, with or without the ``pay`` export, on free ports."""

    def __init__(self, path: Path) -> None:
        alloc = PortAllocator()
        self.ports = {"left": alloc.allocate(), "right": alloc.allocate()}
        self.path = path
        self.write(pay=False)

    def write(self, pay: bool) -> None:
        self.path.write_text(SMALL.format(**self.ports, **(PAY if pay else NO_PAY)))


def _no_traceback(proc: MeshfedProcess) -> None:
    assert not [line for line in proc.output("err") if "Traceback" in line], proc.seen


def _recorded(state: Path) -> set[str]:
    try:
        doc = json.loads((state / "local" / "processes.json").read_text())
    except FileNotFoundError:
        return set()
    return set(doc["processes"])


def _alive(state: Path) -> dict[str, int]:
    return {n: r.pid for n, r in Runtime(state).processes().items() if r.alive}


def _status(state: Path, url: str) -> int:
    layout = Runtime(state).layout()
    assert layout is not None
    port = layout.meshes["right"].sidecars["app/client"].outbound_port
    try:
        return http_call(port, "GET", url, timeout=5).status
    except NoResponse:
        return 0


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[Small, Path]]:
    spec = Small(tmp_path / "small.yaml")
    state = tmp_path / "state"
    try:
        yield spec, state
    finally:
        Runtime(state).down()
        assert_nothing_left(state)


# --- while meshfed loads --------------------------------------------------------------------------


def _loading(pid: int) -> bool:
    """The process maps cryptography's native module: it is halfway through its imports."""
    try:
        return "cryptography" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return True  # gone already: stop waiting


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_meshfed_loads_ends_it_quietly(sig: int, tmp_path: Path) -> None:
    spec = spec_copy("bank", tmp_path)
    proc = MeshfedProcess("validate", str(spec))
    try:
        assert poll(lambda: _loading(proc.proc.pid), timeout=30, interval=0.001) is not None
        proc.signal(sig)
        code = proc.wait()
    finally:
        proc.kill()
    _no_traceback(proc)
    assert code == 128 + sig, proc.seen
    assert f"interrupted ({NAMES[sig]}) while starting" in proc.output("err"), proc.seen


# --- up, at every moment --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "sig"),
    [
        ("up:workloads", signal.SIGTERM),  # the workload host and the dashboard run
        ("up:envoys", signal.SIGHUP),  # and every Envoy was started
        ("up:probes", signal.SIGTERM),  # every Envoy ready, the imports about to be probed
    ],
)
def test_a_signalled_up_stops_what_it_started(
    small: tuple[Small, Path], point: str, sig: int, tmp_path: Path
) -> None:
    spec, state = small
    proc = MeshfedProcess(
        "up", str(spec.path), "--state", str(state), hold=point, marker=tmp_path / "parked"
    )
    try:
        proc.reached()
        assert _recorded(state), "nothing was started before the hold point"
        proc.signal(sig)
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 128 + sig, proc.seen
    assert f"interrupted ({NAMES[sig]}): stopped what this run had started" in proc.output("err"), (
        proc.seen
    )
    _no_traceback(proc)
    assert_nothing_left(state)
    assert not _recorded(state)


def test_a_signalled_re_up_keeps_the_running_federation(
    small: tuple[Small, Path], tmp_path: Path
) -> None:
    spec, state = small
    first = MeshfedProcess("up", str(spec.path), "--state", str(state))
    assert first.wait() == 0, first.seen
    before = _alive(state)
    assert _status(state, API) == 200

    spec.write(pay=True)  # a new workload (its sidecar starts), its export and an import
    proc = MeshfedProcess(
        "up", "--spec", str(spec.path), "--state", str(state), hold="up:envoys",
        marker=tmp_path / "parked",
    )  # fmt: skip
    try:
        proc.reached()
        assert PAY_SIDECAR in _recorded(state)
        proc.signal(signal.SIGTERM)
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM, proc.seen
    _no_traceback(proc)
    # What this run started is stopped; what ran before runs on, as recorded.
    assert _alive(state) == before
    assert _recorded(state) == set(before)
    assert _status(state, API) == 200

    again = MeshfedProcess("up", str(spec.path), "--state", str(state))
    assert again.wait() == 0, again.seen
    assert PAY_SIDECAR in _alive(state)
    assert _status(state, PAY_URL) == 200


# --- up --watch -----------------------------------------------------------------------------------


def _watching(spec: Small, state: Path, tmp_path: Path, hold: str | None) -> MeshfedProcess:
    proc = MeshfedProcess(
        "up", str(spec.path), "--state", str(state), "--watch", hold=hold,
        marker=tmp_path / "parked",
    )  # fmt: skip
    proc.expect("out", lambda line: line.startswith("watching "))
    return proc


def test_sighup_between_edits_stops_the_watch_only(
    small: tuple[Small, Path], tmp_path: Path
) -> None:
    spec, state = small
    proc = _watching(spec, state, tmp_path, None)
    try:
        running = _alive(state)
        proc.signal(signal.SIGHUP)
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 0, proc.seen
    assert proc.output("out")[-1].startswith("stopped watching; the federation keeps running")
    _no_traceback(proc)
    assert _alive(state) == running
    assert _status(state, API) == 200


def test_a_signal_during_an_edit_lets_it_finish(small: tuple[Small, Path], tmp_path: Path) -> None:
    spec, state = small
    # Parked where the edit has started the new sidecar (the first up reaches it first).
    proc = _watching(spec, state, tmp_path, "up:envoys#2")
    try:
        spec.write(pay=True)
        proc.reached()
        proc.signal(signal.SIGTERM)
        proc.expect("err", lambda line: "stopping after this edit is applied" in line)
        proc.release()
        proc.expect("out", lambda line: " applied small.yaml in " in line)
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 0, proc.seen
    assert proc.output("out")[-1].startswith("stopped watching; the federation keeps running")
    _no_traceback(proc)
    assert PAY_SIDECAR in _alive(state)
    assert _status(state, PAY_URL) == 200


def test_a_second_signal_aborts_the_edit(small: tuple[Small, Path], tmp_path: Path) -> None:
    spec, state = small
    proc = _watching(spec, state, tmp_path, "up:envoys#2")
    try:
        before = _alive(state)
        spec.write(pay=True)
        proc.reached()
        assert PAY_SIDECAR in _recorded(state)
        proc.signal(signal.SIGHUP)
        proc.expect("err", lambda line: "stopping after this edit is applied" in line)
        proc.signal(signal.SIGTERM)
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM, proc.seen
    assert any(
        "interrupted (SIGTERM): stopped what this edit had started" in line
        for line in proc.output("err")
    ), proc.seen
    _no_traceback(proc)
    assert _alive(state) == before
    assert _recorded(state) == set(before)
    assert _status(state, API) == 200
