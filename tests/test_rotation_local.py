"""Rotation on the running local federation, under a bounded continuous load across every
import: zero failed requests; the old root refused once retired (real handshakes); a command
killed mid-rotation is finished by the next one. (Tests that start a federation of their own are
in ``test_rotation_alone.py``.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_helpers import Fed, Loop, poll, spec_copy
from meshfed.holds import HOLD_ENV
from meshfed.local.client import Response, tcp_call
from meshfed.pki import MeshCA
from meshfed.pki.record import read_record
from meshfed.rotation.live import Target, handshake, handshake_targets
from meshfed.rotation.machine import Rotator
from meshfed.workspace import open_workspace

pytestmark = pytest.mark.envoy

TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"
RUN_CLI = (
    "from meshfed.cli.main import main\n"
    "from meshfed.cli.rotate import register\n"
    "'rotate' in main.commands or register(main)\n"
    "main()\n"
)


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("rotation")
    fed = Fed.start(spec_copy("bank", base), base / "state")
    try:
        yield fed
    finally:
        fed.close()


class Load:
    """A few threads calling every import of the web mesh through checkout's sidecar."""

    def __init__(self, fed: Fed) -> None:
        sidecar = fed.sidecar("web", "shop/checkout")
        (ledger,) = sidecar.tcp_outbound.values()

        def http() -> Response:
            return fed.call("web", "shop/checkout", TOKENIZE, "POST", timeout=5)

        def tcp() -> Response:
            line = tcp_call(ledger, b"ping", timeout=5)
            return Response(200, "OK", [], line.splitlines()[0])

        self.loops = [Loop(http), Loop(http), Loop(tcp)]

    def __enter__(self) -> Load:
        for loop in self.loops:
            loop.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        for loop in self.loops:
            loop.stop()

    @property
    def samples(self) -> int:
        return sum(len(loop.samples) for loop in self.loops)

    def failures(self) -> list[tuple[float, int]]:
        return [(s.t, s.status) for loop in self.loops for s in loop.failures()]


def _ingress_target(fed: Fed, mesh: str, client_mesh: str) -> Target:
    layout = fed.runtime.layout()
    assert layout is not None
    return next(
        t
        for t in handshake_targets(fed.ws.plan, layout)
        if t.process == f"{mesh}/ingress" and t.client_mesh == client_mesh and t.protocol == "HTTP"
    )


def test_intermediate_and_root_rotation_under_load(
    bank: Fed, capsys: pytest.CaptureFixture[str]
) -> None:
    old_web: MeshCA = bank.ws.pki.meshes["web"]
    target = _ingress_target(bank, "payments", "web")
    assert handshake(target, old_web).accepted
    timings = {}
    with Load(bank) as load:
        for kind, mesh in (("intermediate", "payments"), ("root", None)):
            rotator = Rotator(bank.state, bank.spec)
            t0 = time.monotonic()
            result = rotator.run(rotator.start(kind, mesh))  # type: ignore[arg-type]
            timings[kind] = time.monotonic() - t0
            assert result.finished, result
            assert [s.step for s in result.steps][-1] == "retire"
    assert load.failures() == [], load.failures()[:10]
    assert load.samples > 100
    ws = open_workspace(bank.spec, bank.state)
    bank.ws = ws
    new_web = ws.pki.meshes["web"]
    # The old root left every bundle: a certificate chained to it is refused at the handshake,
    # one from the new intermediate accepted, and the ingress serves a new-root certificate.
    refused = handshake(target, old_web)
    assert not refused.accepted, refused.detail
    accepted = handshake(target, new_web)
    assert accepted.accepted, accepted.detail
    assert accepted.served is not None
    accepted.served.verify_directly_issued_by(ws.pki.meshes["payments"].ca_cert)
    with capsys.disabled():
        print(
            f"\n[rotation] intermediate {timings['intermediate']:.2f} s, root "
            f"{timings['root']:.2f} s; {load.samples} requests under load, "
            f"{len(load.failures())} failed"
        )


def _cli(
    state: Path, spec: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUN_CLI, "rotate", *args, str(spec), "--state", str(state)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_killed_mid_switch_then_run_again_finishes(bank: Fed, tmp_path: Path) -> None:
    marker = tmp_path / "parked"
    with Load(bank) as load:
        proc = _cli(
            bank.state,
            bank.spec,
            "root",
            env={HOLD_ENV: "mid-switch", f"{HOLD_ENV}_FILE": str(marker)},
        )
        try:
            assert poll(marker.exists, 60) is not None, proc.stdout.read() if proc.stdout else ""
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        record = read_record(bank.state / "pki")
        assert record is not None and record.running == "switch"
        assert record.done == ["prepare", "trust", "propagate", "verify-overlap"]
        status = _cli(bank.state, bank.spec, "status")
        assert "INTERRUPTED" in status.communicate(timeout=60)[0]
        again = _cli(bank.state, bank.spec, "root")
        output = again.communicate(timeout=120)[0]
        assert again.returncode == 0, output
        assert "resuming root rotation" in output and "completed" in output
        assert output.index("switch:") < output.index("reissue:") < output.index("retire:")
    assert load.failures() == [], load.failures()[:10]
    assert read_record(bank.state / "pki") is None
    bank.ws = open_workspace(bank.spec, bank.state)


def test_abort_under_load_goes_back_to_the_old_root(bank: Fed) -> None:
    before = open_workspace(bank.spec, bank.state)
    with Load(bank) as load:
        rotator = Rotator(bank.state, bank.spec)
        record = rotator.start("root", None)
        rotator.run(record, until="verify")  # the new root signs; everything reissued
        new = open_workspace(bank.spec, bank.state).pki.meshes["web"]
        result = rotator.abort()
        assert result.finished and result.record.outcome == "aborted"
    assert load.failures() == [], load.failures()[:10]
    ws = open_workspace(bank.spec, bank.state)
    assert ws.pki.roots == before.pki.roots
    target = _ingress_target(bank, "payments", "web")
    assert handshake(target, ws.pki.meshes["web"]).accepted
    refused = handshake(target, new)  # the aborted generation's root is gone again
    assert not refused.accepted, refused.detail
    bank.ws = ws
