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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from local_helpers import (
    Fed,
    cli,
    client_context,
    poll,
    spec_copy,
    tcp_greeting_and_echo,
    tls_request,
)
from meshfed.local import dashboard
from meshfed.local.probe import plan_probes, run_probe
from meshfed.local.prober import ProbeLedger
from meshfed.local.procs import stop
from meshfed.rotation.machine import Rotator

pytestmark = pytest.mark.envoy

TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"
PROBER = "spiffe://web.bank.example/ns/meshfed-system/sa/meshfed-prober"
CATALOG = "spiffe://web.bank.example/ns/shop/sa/catalog"
CHECKOUT = "spiffe://web.bank.example/ns/shop/sa/checkout"


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
    # The rotation's end-to-end calls (as the consumers' own workloads, through their sidecars)
    # are recorded as its checks, not as `up`'s import probes.
    records = [
        json.loads(line)
        for line in (bank.state / "local" / "probes.jsonl").read_text().splitlines()
    ]
    end_to_end = [r for r in records if " as " in r.get("target", "")]
    assert {r["what"] for r in end_to_end} == {"import probe", "rotation check"}, end_to_end
    assert any(r["what"] == "rotation check" and "conn" in r for r in end_to_end), end_to_end
    assert any(
        d["meshfed_probe"] == "rotation check"
        and d.get("kind") == "connection"
        and d.get("sni") == "ledger.payments.bank.global"
        and d.get("caller", "").endswith("/sa/checkout")
        for d in own
    )
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


LEDGER_SNI = "ledger.payments.bank.global"


def _ledger_lines(fed: Fed) -> list[dict[str, Any]]:
    """The TCP import's crossings in ``logs --boundary`` (web's egress, payments' ingress)."""
    result = CliRunner().invoke(cli(), ["logs", "--state", str(fed.state), "--boundary", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    return [d for d in lines if d.get("sni") == LEDGER_SNI]


def test_tcp_import_probes_are_marked_hop_by_hop(bank: Fed) -> None:
    """A TCP import probe has no header to carry a mark: its connection is followed from the
    ledger's record through the sidecar's, the egress's and the ingress's logs. Callers'
    connections made at the same time, through the same sidecar, as the same workload, with
    the same certificate, are never marked."""
    # up's own probe of web's TCP import (ledger): at the egress and at the ingress's tunnel.
    first = _ledger_lines(bank)
    assert {(d["gateway"], d.get("meshfed_probe")) for d in first} >= {
        ("egress", "import probe"),
        ("ingress", "import probe"),
    }, first
    assert not [d for d in first if not d.get("meshfed_probe")], first
    before = {g: len([d for d in first if d["gateway"] == g]) for g in ("egress", "ingress")}

    # Five more probes, each interleaved with a caller's connection (checkout, allowed, its
    # sidecar's TCP import listener: the probe's very path).
    layout = bank.runtime.layout()
    assert layout is not None
    probe = next(p for p in plan_probes(bank.ws.plan, layout) if p.protocol == "TCP")
    ledger = ProbeLedger(bank.runtime.paths)
    port = bank.sidecar("web", "shop/checkout").tcp_outbound["ledger.shop.svc.cluster.local:9000"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(5):
            callers = pool.submit(tcp_greeting_and_echo, port)
            assert run_probe(probe, 10, ledger).ok
            assert callers.result()["workload"] == "cards/ledger"

    def settled() -> list[dict[str, Any]] | None:
        lines = _ledger_lines(bank)
        ingress = [d for d in lines if d["gateway"] == "ingress"]
        return lines if len(ingress) == before["ingress"] + 10 else None

    assert poll(lambda: settled() is not None, timeout=15) is not None, _ledger_lines(bank)
    lines = settled()
    assert lines is not None
    for gateway in ("egress", "ingress"):
        mine = [d for d in lines if d["gateway"] == gateway]
        callers = [d for d in mine if not d.get("meshfed_probe")]
        assert len(callers) == 5, (gateway, mine)
        assert len(mine) - len(callers) == before[gateway] + 5
    assert all(d["caller"] == CHECKOUT for d in lines if d["gateway"] == "ingress")
    text = CliRunner().invoke(cli(), ["logs", "--state", str(bank.state), "--boundary"]).output
    tunnel = [
        line for line in text.splitlines() if "payments/ingress" in line and LEDGER_SNI in line
    ]
    # (meshfed's own: also the rotation's handshakes, when the first test ran before this one)
    marked = sum("[meshfed's own " in line for line in tunnel)
    assert marked == before["ingress"] + 5, tunnel
    assert sum("[meshfed's own import probe]" in line for line in tunnel) >= 6, tunnel

    # The dashboard counts the callers' five apart from meshfed's own.
    def arrow() -> dict[str, Any]:
        return next(
            a
            for a in _state(bank)["arrows"]
            if a["caller"] == "web" and a["export"] == "payments/ledger"
        )

    assert poll(lambda: arrow()["allowed"] == 5, timeout=15) is not None, arrow()
    assert arrow()["probes"] == before["ingress"] + 5, arrow()


TOKENIZER_SNI = "tokenizer.payments.global"


def _tokenizer_at_egress(fed: Fed) -> list[dict[str, Any]]:
    """The HTTP import's connections in ``logs --boundary`` at web's egress (TLS passes
    through it: one line per connection, no header read)."""
    result = CliRunner().invoke(
        cli(), ["logs", "--state", str(fed.state), "--boundary", "--json", "--mesh", "web"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    return [d for d in lines if d.get("gateway") == "egress" and d.get("sni") == TOKENIZER_SNI]


def _tokens(fed: Fed, target: str) -> int:
    records = (fed.state / "local" / "probes.jsonl").read_text().splitlines()
    return sum(1 for r in map(json.loads, records) if "token" in r and r["target"] == target)


def test_http_import_probes_are_marked_at_the_egress(bank: Fed) -> None:
    """An HTTP import probe's request is marked at the ingress by its header; at the egress,
    which reads no header, by its connection: the sidecar sends a marked request on a
    connection of its own and logs it. Callers' calls made at the same time, through the same
    sidecar, as the same workload, are never marked (their pooled connections are theirs)."""
    layout = bank.runtime.layout()
    assert layout is not None
    probe = next(
        p
        for p in plan_probes(bank.ws.plan, layout)
        if p.protocol == "HTTP" and p.key.startswith("tokenizer.") and p.mesh == "web"
    )
    assert probe.workload == "shop/checkout" and probe.allowed
    target = f"{probe.mesh} {probe.key} as {probe.workload}"
    # up's own probe of the import, at the egress.
    first = _tokenizer_at_egress(bank)
    assert any(d.get("meshfed_probe") == "import probe" for d in first), first
    marked_before = sum(bool(d.get("meshfed_probe")) for d in first)
    callers_before = len(first) - marked_before
    tokens_before = _tokens(bank, target)

    ledger = ProbeLedger(bank.runtime.paths)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(5):
            callers = pool.submit(_call, bank, "shop/checkout")
            assert run_probe(probe, 10, ledger).ok
            assert callers.result() == 200
    attempts = _tokens(bank, target) - tokens_before  # each attempt: a mark, a connection
    assert attempts >= 5

    def settled() -> list[dict[str, Any]] | None:
        # The callers' pooled connections are logged when they close (their life is 2 s).
        lines = _tokenizer_at_egress(bank)
        marked = sum(bool(d.get("meshfed_probe")) for d in lines)
        callers = len(lines) - marked
        return lines if marked == marked_before + attempts and callers > callers_before else None

    assert poll(lambda: settled() is not None, timeout=15) is not None, (
        attempts,
        _tokenizer_at_egress(bank),
    )
    lines = settled()
    assert lines is not None
    # (and the rotation's end-to-end checks, when the first test ran before this one)
    own = {d["meshfed_probe"] for d in lines if d.get("meshfed_probe")}
    assert "import probe" in own and own <= {"import probe", "rotation check"}, own
    text = CliRunner().invoke(cli(), ["logs", "--state", str(bank.state), "--boundary"]).output
    at_egress = [
        line for line in text.splitlines() if "web/egress" in line and TOKENIZER_SNI in line
    ]
    assert sum("[meshfed's own import probe]" in line for line in at_egress) >= 6, at_egress
    assert any("[meshfed's own" not in line for line in at_egress), at_egress
