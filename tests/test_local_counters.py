"""Counters and logs a security team can trust, on the bank federation on real Envoy: meshfed's own
probes and rotation checks are marked in ``logs --boundary`` and counted apart on the dashboard,
and the dashboard's totals survive a gateway restart and a dashboard restart (Envoy's stats
do not)."""

from __future__ import annotations

import http.client
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from local_helpers import Fed, cli, client_context, poll, spec_copy, tls_request
from meshfed.local import dashboard
from meshfed.local.procs import stop
from meshfed.rotation.machine import Rotator

pytestmark = pytest.mark.envoy

TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"
PROBER = "spiffe://web.bank.example/ns/meshfed-system/sa/meshfed-prober"
CATALOG = "spiffe://web.bank.example/ns/shop/sa/catalog"


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("counters")
    fed = Fed.start(spec_copy("bank", base), base / "state")
    try:
        yield fed
    finally:
        fed.close()


def _state(fed: Fed) -> dict[str, Any]:
    url = dashboard.url(fed.runtime.paths)
    assert url is not None
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("GET", "/api/state")
        doc: dict[str, Any] = json.loads(conn.getresponse().read())
        return doc
    finally:
        conn.close()


def _tokenizer(state: dict[str, Any]) -> dict[str, Any]:
    return next(
        a for a in state["arrows"] if a["caller"] == "web" and a["export"] == "payments/tokenizer"
    )


def _boundary(fed: Fed) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        cli(), ["logs", "--state", str(fed.state), "--boundary", "--json", "--mesh", "payments"]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def _call(fed: Fed, workload: str) -> int:
    return fed.call("web", workload, TOKENIZE, "POST").status


def test_own_traffic_apart_and_totals_across_restarts(bank: Fed, tmp_path: Path) -> None:
    assert [_call(bank, "shop/catalog") for _ in range(2)] == [403, 403]
    assert _call(bank, "shop/checkout") == 200
    # The ingress restarts: its Envoy stats start again at zero, its log goes on.
    bank.runtime.stop_gateway("payments")
    bank.runtime.start_gateway("payments")
    # Straight to the restarted ingress (the egress may still send calls to payments-dr).
    key, cert = bank.leaf("web", CATALOG)
    ctx = client_context(
        tmp_path, [cert, bank.ws.pki.meshes["web"].ca_cert], key, bank.root_pem("payments")
    )
    sni = "tokenizer.payments.global"
    denied = tls_request(*bank.ingress("payments"), sni, ctx, sni, "POST", "/v1/tokenize")
    assert denied.status == 403, denied
    # A rotation checks every listener with real handshakes, as meshfed's prober.
    rotator = Rotator(bank.state, bank.spec)
    assert rotator.run(rotator.start("intermediate", "payments")).finished

    def settled() -> dict[str, Any] | None:
        arrow = _tokenizer(_state(bank))
        return arrow if arrow["denied"] >= 3 and arrow["probes"] else None

    assert poll(lambda: settled() is not None, timeout=15) is not None, json.dumps(
        _tokenizer(_state(bank))
    )
    arrow = settled()
    assert arrow is not None
    # Exactly the callers' three denials (two before the restart, one after): the rotation's
    # checks and up's probes are counted apart.
    assert arrow["denied"] == 3, arrow
    assert arrow["allowed"] >= 1 and arrow["probes"] >= 2

    # The boundary log says the same, and marks meshfed's own traffic.
    lines = _boundary(bank)
    requests = [d for d in lines if d.get("kind") == "request" and d["sni"] == arrow["snis"][0]]
    callers_denied = [
        d for d in requests if d["decision"] == "denied" and not d.get("meshfed_probe")
    ]
    assert len(callers_denied) == 3
    assert all(d["caller"].endswith("/sa/catalog") for d in callers_denied)
    own = [d for d in lines if d.get("meshfed_probe")]
    assert {d["meshfed_probe"] for d in own} >= {"import probe", "rotation check"}
    assert all(d.get("meshfed_probe") for d in lines if d.get("caller") == PROBER)
    assert any(d.get("caller") == PROBER for d in own)
    text = CliRunner().invoke(cli(), ["logs", "--state", str(bank.state), "--boundary"]).output
    assert "[meshfed's own rotation check]" in text and "[meshfed's own import probe]" in text

    # A new dashboard process (a crash, a reboot) counts the same totals from the logs.
    record = bank.runtime.processes()[dashboard.DASHBOARD]
    stop([(record.pid, record.start_time)], sig=signal.SIGTERM)
    report = bank.reup()
    assert dashboard.DASHBOARD in report.started
    again = poll(lambda: _tokenizer(_state(bank))["denied"] == 3, timeout=15)
    assert again is not None, _tokenizer(_state(bank))
    totals = _state(bank)["totals"]
    assert totals["denied"] == 3 and totals["probes"] >= arrow["probes"]
    assert os.environ.get("MESHFED_TEST_HOLD") is None
