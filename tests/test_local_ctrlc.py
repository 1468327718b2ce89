"""Ctrl-C during ``meshfed up`` stops what it had started."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from local_helpers import assert_nothing_left, poll, spec_copy

pytestmark = pytest.mark.envoy

UP = (
    "import sys\n"
    "from meshfed.cli.main import main\n"
    "if 'up' not in main.commands:\n"
    "    from meshfed.cli.local import register\n"
    "    register(main)\n"
    "sys.exit(main(['up', sys.argv[1], '--state', sys.argv[2]]))\n"
)


def _envoys_recorded(processes: Path) -> bool:
    try:
        doc = json.loads(processes.read_text())
    except (OSError, ValueError):
        return False
    return any(r.get("kind") == "envoy" for r in doc.get("processes", {}).values())


def test_interrupted_up_leaves_nothing_running(tmp_path: Path) -> None:
    spec = spec_copy("bank", tmp_path)
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-c", UP, str(spec), str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A child of a non-interactive shell may inherit an ignored SIGINT: give it Ctrl-C back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        processes = state / "local" / "processes.json"
        assert poll(lambda: _envoys_recorded(processes), timeout=30, interval=0.005) is not None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err
    assert_nothing_left(state)
    assert not processes.exists()
