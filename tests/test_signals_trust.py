"""``meshfed trust serve`` and ``trust fetch --follow`` run until stopped: Ctrl-C, SIGTERM and
SIGHUP (``meshfed.interrupts``, as for every command) each stop them cleanly. Real signals to
real ``meshfed`` processes."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from local_helpers import MeshfedProcess, poll
from meshfed.cli.main import main
from meshfed.local.ports import PortAllocator

SPEC = """\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata:
  name: serve
spec:
  trust:
    mode: Federated
  meshes:
    - name: acme
      trustDomain: acme.example
      ingress: {{address: 127.0.0.1, port: {ingress}}}
      bundleEndpoint:
        url: https://127.0.0.1:{endpoint}/acme
        profile: https_spiffe
        spiffeId: spiffe://acme.example/meshfed/bundle-endpoint
      workloads:
        - {{name: orders, namespace: orders, serviceAccount: orders, port: 8080}}
"""
SIGNALS = [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]
NAMES = {signal.SIGHUP: "SIGHUP", signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _stops(
    proc: MeshfedProcess, sig: int, what: str, ready: Callable[[], bool], *lines: str
) -> None:
    """Once ``proc`` said ``lines`` (in order) and is ``ready``, ``sig`` ends it with status 0
    and one line saying what stopped on which signal: no traceback, no 'interrupted'."""
    try:
        for text in lines:
            proc.expect("out", lambda line, text=text: text in line)  # type: ignore[misc]
        assert ready()
        proc.signal(sig)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert code == 0, proc.seen
    assert f"stopped {what} ({NAMES[sig]})" in proc.output("err"), proc.seen
    assert not [line for line in proc.output("err") if "Traceback" in line], proc.seen
    assert not [line for line in proc.output("err") if "interrupted" in line], proc.seen


@pytest.mark.parametrize("sig", SIGNALS, ids=[NAMES[s] for s in SIGNALS])
def test_trust_serve_stops_cleanly_on_every_stop_signal(tmp_path: Path, sig: int) -> None:
    alloc = PortAllocator()
    ingress, endpoint = alloc.allocate(), alloc.allocate()
    spec = tmp_path / "serve.yaml"
    spec.write_text(SPEC.format(ingress=ingress, endpoint=endpoint))
    proc = MeshfedProcess("trust", "serve", str(spec), "--state", str(tmp_path / "state"))
    _stops(proc, sig, "serving", lambda: _listening(endpoint), "serving acme's bundle at")
    assert poll(lambda: not _listening(endpoint), timeout=5) is not None


FOLLOWER = """\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata:
  name: follow
spec:
  trust:
    mode: Federated
  meshes:
    - name: globex
      trustDomain: globex.example
      ingress: {{address: 127.0.0.1, port: {ingress}}}
      follows: [acme]
      workloads:
        - {{name: charge, namespace: billing, serviceAccount: charge, port: 8080}}
    - name: acme
      partner: true
      trustDomain: acme.example
      ingress: {{address: 127.0.0.1, port: {peer_ingress}}}
      bundleEndpoint:
        url: https://127.0.0.1:{endpoint}/acme
        profile: https_spiffe
        spiffeId: spiffe://acme.example/meshfed/bundle-endpoint
        bootstrapBundle: acme-bundle.json
"""


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_trust_fetch_follow_stops_cleanly(tmp_path: Path, sig: int) -> None:
    alloc = PortAllocator()
    ingress, peer_ingress, endpoint = alloc.allocate(), alloc.allocate(), alloc.allocate()
    acme = tmp_path / "acme.yaml"
    acme.write_text(SPEC.format(ingress=peer_ingress, endpoint=endpoint))
    bundle = CliRunner().invoke(
        main, ["trust", "bundle", "acme", str(acme), "--state", str(tmp_path / "acme")]
    )
    assert bundle.exit_code == 0, bundle.output
    (tmp_path / "acme-bundle.json").write_text(bundle.stdout)
    spec = tmp_path / "follow.yaml"
    spec.write_text(FOLLOWER.format(ingress=ingress, peer_ingress=peer_ingress, endpoint=endpoint))
    # Nobody serves acme's bundle: the follower keeps trying (and keeps the bootstrap) until
    # stopped.
    proc = MeshfedProcess("trust", "fetch", str(spec), "--state", str(tmp_path / "st"), "--follow")
    _stops(proc, sig, "following", lambda: True, "following acme", "unreachable")
