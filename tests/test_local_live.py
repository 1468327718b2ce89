"""Live changes on real Envoy: rerunning ``up`` with an edited spec, under load, no restarts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from local_helpers import Fed, Loop, cli, poll, spec_copy
from meshfed.local.client import NoResponse

pytestmark = pytest.mark.envoy

TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"
VAULT = "http://vault.shop.svc.cluster.local/v1/secrets/card-key"
FRAUD = "http://fraud.shop.svc.cluster.local/score"
CHECKOUT = "spiffe://web.bank.example/ns/shop/sa/checkout"

NEW_WORKLOAD = """\
        - {name: vault, namespace: cards, serviceAccount: vault, port: 8200, protocol: HTTP}
        - {name: fraud, namespace: cards, serviceAccount: fraud, port: 8090, protocol: HTTP}
"""
NEW_EXPORTS = """\
    - name: vault
      mesh: payments
      workload: cards/vault
      consumers:
        - mesh: web
          principals: [ns/shop/sa/checkout]
          methods: [GET]
          paths: [/v1/secrets/*]
    - name: fraud
      mesh: payments
      workload: cards/fraud
      consumers:
        - mesh: web
          principals: [ns/shop/sa/checkout, ns/shop/sa/catalog]
  imports:
"""
NEW_IMPORTS = """
    - mesh: web
      host: vault.shop.svc.cluster.local
      port: 80
      from: [payments/vault]
    - mesh: web
      host: fraud.shop.svc.cluster.local
      port: 80
      from: [payments/fraud]
"""


def _extend(text: str) -> str:
    vault = NEW_WORKLOAD.splitlines(keepends=True)[0]
    assert vault in text and "  imports:\n" in text
    text = text.replace(vault, NEW_WORKLOAD)
    text = text.replace("  imports:\n", NEW_EXPORTS)
    return text.rstrip("\n") + "\n" + NEW_IMPORTS


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("live")
    fed = Fed.start(spec_copy("bank", base), base / "state")
    try:
        yield fed
    finally:
        fed.close()


def _ok(fed: Fed, workload: str, url: str, method: str = "GET") -> bool:
    try:
        resp = fed.call("web", workload, url, method, timeout=2)
    except NoResponse:
        return False
    return resp.status == 200 and json.loads(resp.body)["caller"] == CHECKOUT


def test_add_export_and_import_live(bank: Fed) -> None:
    edited = bank.spec.parent / "edited" / "bank.yaml"
    edited.parent.mkdir()
    edited.write_text(_extend(bank.spec.read_text()))
    before = bank.pids()
    assert not _ok(bank, "shop/checkout", VAULT)

    loop = Loop(lambda: bank.call("web", "shop/checkout", TOKENIZE, "POST", b"4111", timeout=5))
    loop.start()
    try:
        assert poll(lambda: len(loop.samples) >= 20, timeout=10) is not None
        t0 = time.monotonic()
        result = CliRunner().invoke(cli(), ["up", str(edited), "--state", str(bank.state)])
        t_up = time.monotonic()
        assert result.exit_code == 0, result.output
        assert "changes applied live" in result.output
        assert "started   payments/sidecar/cards/fraud" in result.output
        # The new calls succeed within 1 s of up returning (its probes already passed).
        assert poll(lambda: _ok(bank, "shop/checkout", VAULT), timeout=1) is not None
        assert poll(lambda: _ok(bank, "shop/checkout", FRAUD, "POST"), timeout=1) is not None
        first_ok = time.monotonic()
        n = len(loop.samples)
        assert poll(lambda: len(loop.samples) >= n + 20, timeout=10) is not None
    finally:
        samples = loop.stop()
    print(
        f"\nlive change: up took {1000 * (t_up - t0):.0f} ms, new call ok "
        f"{1000 * (first_ok - t0):.0f} ms after it started; loop {len(samples)} calls"
    )
    assert not [s for s in samples if s.status != 200], "existing import failed during the change"
    after = bank.pids()
    assert {n: p for n, p in after.items() if n in before} == before, "an Envoy was restarted"
    assert set(after) - set(before) == {"payments/sidecar/cards/fraud"}
    # The new export is as strict as the spec says.
    assert bank.call("web", "shop/checkout", VAULT, "POST", b"").status == 403
    assert bank.call("web", "shop/catalog", VAULT).status == 403
    assert bank.call("web", "shop/checkout", "http://vault.shop.svc.cluster.local/v2").status == 403
    bank.spec = edited


def test_remove_them_again_live(bank: Fed) -> None:
    original = bank.spec.parent.parent / "bank.yaml"
    before = bank.pids()
    loop = Loop(lambda: bank.call("web", "shop/checkout", TOKENIZE, "POST", b"4111", timeout=5))
    loop.start()
    try:
        assert poll(lambda: len(loop.samples) >= 20, timeout=10) is not None
        report = bank.reup(original)
        n = len(loop.samples)
        assert poll(lambda: len(loop.samples) >= n + 20, timeout=10) is not None
    finally:
        samples = loop.stop()
    assert report.ok
    assert report.stopped == ["payments/sidecar/cards/fraud"]
    assert not report.started and not report.restarted
    assert "payments/ingress" in report.updated and "web/egress" in report.updated
    assert not [s for s in samples if s.status != 200]
    after = bank.pids()
    assert after == {n: p for n, p in before.items() if n != "payments/sidecar/cards/fraud"}
    assert bank.call("web", "shop/checkout", VAULT).status == 502  # no import: block_all
    assert not Path(bank.runtime.root / "envoy" / "payments_sidecar_cards_fraud").exists()
