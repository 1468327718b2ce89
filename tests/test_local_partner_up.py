"""``meshfed up`` of one organisation's side while its partner is not up yet (the README's
"Federating with a partner" starts globex first): the import served only by the partner fails
its probe, and up says why and what to do, instead of only "HTTP 503"; when nothing listens at
the partner's address (its connections are refused) it says so at once, instead of retrying for
the probe's whole budget."""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from local_helpers import TEST_ADMIN, assert_nothing_left, cli
from meshfed.bundles import document
from meshfed.bundles.model import SpiffeBundle
from meshfed.bundles.state import PeerBundles
from meshfed.examples import example_path
from meshfed.local import runtime
from meshfed.local.layout import allocate_layout
from meshfed.local.ports import LOOPBACK, PortAllocator
from meshfed.local.probe import (
    REFUSED_FOR,
    Probe,
    _Refusals,
    partner_sources,
    plan_probes,
    refuses,
    run_probe,
)
from meshfed.plan.model import Source
from meshfed.workspace import open_workspace
from test_bundles_format import ca


def _globex(tmp_path: Path) -> tuple[Path, Path]:
    """globex's side on free ports, with a bundle of acme already accepted (as after
    ``meshfed trust fetch``); acme itself runs nowhere."""
    alloc = PortAllocator()
    ports = {p: alloc.allocate() for p in (16443, 16444, 18443, 18444)}
    text = re.sub(
        r"\b(16443|16444|18443|18444)\b",
        lambda m: str(ports[int(m.group())]),
        example_path("globex").read_text(),
    )
    spec = tmp_path / "globex.yaml"
    spec.write_text(text)
    state = tmp_path / "state"
    bundle = SpiffeBundle("acme.example", (ca("acme.example"),), 1, 60)
    PeerBundles(state).accept(
        "acme", bundle, document.encode(bundle), "https://x/acme", datetime.now(UTC)
    )
    return spec, state


def test_only_imports_served_by_partners_are_named(tmp_path: Path) -> None:
    spec, state = _globex(tmp_path)
    ws = open_workspace(spec, state)
    layout, _ = allocate_layout(ws.plan, None, set(), TEST_ADMIN)
    [probe] = plan_probes(ws.plan, layout)
    assert [s.mesh for s in partner_sources(ws.plan, probe)] == ["acme"]
    bank = open_workspace(example_path("bank"), tmp_path / "bank")
    layout, _ = allocate_layout(bank.plan, None, set(), TEST_ADMIN)
    assert all(partner_sources(bank.plan, p) == () for p in plan_probes(bank.plan, layout))


def _source(mesh: str, port: int) -> Source:
    return Source(0, mesh, f"{mesh}/x", LOOPBACK, port, f"spiffe://{mesh}/i", mesh, None)


def _closed_port() -> int:
    return PortAllocator().allocate()  # free: nothing listens there, connections are refused


def test_refuses_tells_a_refusal_from_a_listener() -> None:
    port = _closed_port()
    assert refuses(LOOPBACK, port) is True
    with socket.create_server((LOOPBACK, port)):
        assert refuses(LOOPBACK, port) is False


def test_refusals_need_every_partner_refusing_and_stop_at_a_listener() -> None:
    """``now`` is given: each check is a real connect, the clock is the test's."""
    a, b = _closed_port(), _closed_port()
    r = _Refusals((_source("acme", a), _source("acme-dr", b)))
    assert r.refused_for(10.0) == 0.0  # refused since now
    assert r.refused_for(10.1) == pytest.approx(0.1)  # not checked again within the interval
    assert r.refused_for(10.5) == pytest.approx(0.5)
    with socket.create_server((LOOPBACK, b)):  # the failover partner starts listening
        assert r.refused_for(11.0) == 0.0
    assert r.listening
    assert r.refused_for(20.0) == 0.0  # never checked again: the probe retries to its end
    # No partners (an exporter this federation runs: it may still be starting): never early.
    assert _Refusals(()).refused_for(1.0) == 0.0


def test_a_probe_to_a_refusing_partner_ends_early_and_says_so() -> None:
    sidecar = _closed_port()  # the probe's own attempts fail too (no sidecar): HTTP never answers
    acme = _source("acme", _closed_port())
    probe = Probe("globex", "orders.billing.svc.cluster.local:80", "HTTP", "billing/x", sidecar,
                  "orders.billing.svc.cluster.local")  # fmt: skip
    # A budget far beyond REFUSED_FOR: the result can only come this soon by the refusal.
    result = run_probe(probe, timeout=60.0, partners=(acme,))
    assert not result.ok and result.refused == (acme,)
    assert f"acme's ingress 127.0.0.1:{acme.port} refuses connections (ECONNREFUSED" in (
        result.detail
    )
    assert "nothing listens there); the probe: no HTTP response" in result.detail
    # Without partners the same probe retries to its budget and says only what it saw.
    alone = run_probe(probe, timeout=REFUSED_FOR + 0.5)
    assert not alone.ok and alone.refused == () and alone.detail.startswith("no HTTP response")


def test_a_listening_partner_is_connected_to_once_and_the_probe_retries_on() -> None:
    probe = Probe("globex", "orders.billing.svc.cluster.local:80", "HTTP", "billing/x",
                  _closed_port(), "orders.billing.svc.cluster.local")  # fmt: skip
    with socket.create_server((LOOPBACK, 0)) as server:
        server.settimeout(0.2)
        port = server.getsockname()[1]
        result = run_probe(probe, timeout=REFUSED_FOR + 0.5, partners=(_source("acme", port),))
        accepted = []
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                break
            accepted.append(conn.recv(1))
            conn.close()
    assert not result.ok and result.refused == ()
    assert accepted == [b""]  # one bare connection, closed without a byte


@pytest.mark.envoy
def test_up_before_the_partner_says_why_its_import_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, state = _globex(tmp_path)
    # acme's ingress address refuses (nothing listens): up does not wait for this budget.
    monkeypatch.setattr(runtime, "PROBE_TIMEOUT", 600.0)
    acme = next(p for p in open_workspace(spec, state).plan.partners if p.name == "acme")
    try:
        result = CliRunner().invoke(cli(), ["up", str(spec), "--state", str(state)])
        assert result.exit_code == 1, result.output
        out = " ".join(result.output.split())
        assert "probe failed: globex orders.billing.svc.cluster.local:80" in out
        assert (
            f"acme's ingress {acme.ingress.address}:{acme.ingress.port} refuses connections "
            "(ECONNREFUSED"
        ) in out
        assert (
            "served only by a partner's ingress, run by another organisation, and nothing "
            "listens at its address: start acme's federation (its meshfed up), or check the "
            f"ingress address of mesh acme in {spec}; then run meshfed up again"
        ) in out
        # The wait is the failed probe's, not the Envoys' start: up says so.
        took = re.search(r"host up in ([\d.]+) s, then ([\d.]+) s probing imports \(1 did", out)
        assert took is not None, out
        assert float(took.group(2)) < 600.0
        # status --check fails on it until the next up probes it again.
        check = CliRunner().invoke(cli(), ["status", "--check", "--state", str(state)])
        assert check.exit_code == 3, check.output
        assert (
            "not healthy: import orders.billing.svc.cluster.local:80 of globex: probe failed at "
            "the last up: acme's ingress"
        ) in check.stderr
    finally:
        CliRunner().invoke(cli(), ["down", str(spec), "--state", str(state)])
        assert_nothing_left(state)
