"""``meshfed up`` of one organisation's side while its partner is not up yet (the README's
"Federating with a partner" starts globex first): the import served only by the partner fails
its probe, and up says why and what to do, instead of only "HTTP 503"."""

from __future__ import annotations

import re
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
from meshfed.local.ports import PortAllocator
from meshfed.local.probe import partner_sources, plan_probes
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


@pytest.mark.envoy
def test_up_before_the_partner_says_why_its_import_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, state = _globex(tmp_path)
    monkeypatch.setattr(runtime, "PROBE_TIMEOUT", 1.0)
    try:
        result = CliRunner().invoke(cli(), ["up", str(spec), "--state", str(state)])
        assert result.exit_code == 1, result.output
        out = " ".join(result.output.split())
        assert "probe failed: globex orders.billing.svc.cluster.local:80" in out
        assert "served only by a partner's ingress, run by another organisation: acme" in out
        assert "Once it is up, run meshfed up again" in out
        # The wait is the failed probe's retries, not the Envoys' start: up says so.
        took = re.search(r"host up in ([\d.]+) s, then ([\d.]+) s probing imports \(1 did", out)
        assert took is not None, out
        assert float(took.group(2)) >= 1.0
    finally:
        CliRunner().invoke(cli(), ["down", str(spec), "--state", str(state)])
        assert_nothing_left(state)
