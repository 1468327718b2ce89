"""SIGTERM, SIGHUP and Ctrl-C during ``meshfed rotate``: real signals to real ``meshfed``
processes at known steps (``meshfed.holds``) and in the middle of a step's work. The command
ends with ``128 + signal`` and says where the rotation stands; the record keeps the step as
interrupted; the same command run again finishes the rotation, and the federation serves on."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_helpers import Fed, MeshfedProcess, poll
from meshfed.pki.record import read_record
from test_signals_up import API, NAMES, Small

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("signals-rotate")
    spec = Small(base / "small.yaml")
    started = Fed.start(spec.path, base / "state")
    try:
        yield started
    finally:
        started.close()


def _rotate(
    fed: Fed, *args: str, hold: str | None = None, marker: Path | None = None
) -> MeshfedProcess:
    return MeshfedProcess(
        "rotate", *args, str(fed.spec), "--state", str(fed.state), hold=hold, marker=marker
    )


def _finish(fed: Fed, *args: str) -> None:
    """The same command again finishes the rotation; calls still succeed."""
    again = _rotate(fed, *args)
    assert again.wait(timeout=180) == 0, again.seen
    out = "\n".join(again.output("out"))
    assert "resuming" in out and "completed" in out, again.seen
    assert read_record(fed.state / "pki") is None
    assert fed.call("right", "app/client", API).status == 200


@pytest.mark.parametrize(
    ("args", "point", "step", "sig"),
    [
        (("root",), "propagate", "propagate", signal.SIGTERM),
        (("root",), "mid-switch", "switch", signal.SIGHUP),  # the CA files half new
        (("intermediate", "--mesh", "left"), "verify", "verify", signal.SIGINT),
    ],
)
def test_a_signalled_rotation_resumes(
    fed: Fed, tmp_path: Path, args: tuple[str, ...], point: str, step: str, sig: int
) -> None:
    proc = _rotate(fed, *args, hold=point, marker=tmp_path / "parked")
    try:
        proc.reached()
        proc.signal(sig)
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 128 + sig, proc.seen
    assert not [line for line in proc.output("err") if "Traceback" in line], proc.seen
    said = "\n".join(proc.output("err"))
    assert f"interrupted ({NAMES[sig]}) during step {step} of {args[0]} rotation" in said, said
    record = read_record(fed.state / "pki")
    assert record is not None and record.running == step
    assert record.events[-1]["event"] == "interrupted"
    status = _rotate(fed, "status")
    assert status.wait() == 0
    assert any("INTERRUPTED" in line for line in status.output("out")), status.seen
    _finish(fed, *args)


def test_a_rotation_signalled_in_the_middle_of_its_handshakes_resumes(fed: Fed) -> None:
    proc = _rotate(fed, "root")
    try:

        def verifying() -> bool:
            record = read_record(fed.state / "pki")
            return record is not None and record.running == "verify-overlap"

        assert poll(verifying, timeout=120, interval=0.002) is not None, proc.drain()
        proc.signal(signal.SIGTERM)
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM, proc.seen
    assert not [line for line in proc.output("err") if "Traceback" in line], proc.seen
    record = read_record(fed.state / "pki")
    assert record is not None and record.running == "verify-overlap"
    _finish(fed, "root")
