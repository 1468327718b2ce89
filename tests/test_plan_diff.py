"""The security diff says, in plain words, what a spec change exposes or closes."""

from __future__ import annotations

from meshfed.plan.build import build_plan
from meshfed.plan.diff import security_diff
from meshfed.plan.model import FederationPlan
from meshfed.spec.load import parse_spec

from conftest import EXAMPLES

BANK = (EXAMPLES / "bank.yaml").read_text()


def plan(text: str) -> FederationPlan:
    fed = parse_spec(text)
    return build_plan(fed, {m.name: f"PEM {m.name}" for m in fed.spec.meshes})


def lines(old: str, new: str) -> list[str]:
    return [str(c) for c in security_diff(plan(old), plan(new))]


def test_no_change_no_diff() -> None:
    assert lines(BANK, BANK) == []


def test_first_apply_lists_every_exposure() -> None:
    changes = [str(c) for c in security_diff(None, plan(BANK))]
    assert (
        "+ [payments] exposes payments/tokenizer (cards/tokenizer) as tokenizer.payments.global"
        " to web" in changes
    )
    assert any(c.startswith("~ [web] joins") for c in changes)


def test_principal_and_method_changes() -> None:
    wider = BANK.replace(
        "methods: [POST]\n          paths: [/v1/tokenize]\n    - name: tokenizer\n"
        "      mesh: payments-dr",
        "methods: [POST, GET]\n          paths: [/v1/tokenize]\n    - name: "
        "tokenizer\n      mesh: payments-dr",
        1,
    )
    assert wider != BANK
    assert lines(BANK, wider) == [
        "+ [payments] tokenizer.payments.global: grants "
        "spiffe://web.bank.example/ns/shop/sa/checkout (GET /v1/tokenize)"
    ]
    assert lines(wider, BANK) == [
        "- [payments] tokenizer.payments.global: revokes "
        "spiffe://web.bank.example/ns/shop/sa/checkout (GET /v1/tokenize)"
    ]


def test_removing_an_export_closes_it_and_its_import() -> None:
    without = BANK.replace(
        "    - name: ledger\n      mesh: payments\n      workload: cards/ledger\n      consumers:\n"
        "        - mesh: web\n          principals: [ns/shop/sa/checkout]\n",
        "",
    ).replace(
        "    - mesh: web\n      host: ledger.shop.svc.cluster.local\n      port: 9000\n"
        "      from: [payments/ledger]\n",
        "",
    )
    changes = lines(BANK, without)
    assert (
        "- [payments] stops exposing payments/ledger as ledger.payments.bank.global "
        "(was open to web)" in changes
    )
    assert "- [web] no longer imports ledger.shop.svc.cluster.local:9000" in changes


def test_failover_order_change_is_reported() -> None:
    swapped = BANK.replace(
        "from: [payments/tokenizer, payments-dr/tokenizer]",
        "from: [payments-dr/tokenizer, payments/tokenizer]",
    )
    changes = lines(BANK, swapped)
    assert any("now fails over payments-dr/tokenizer then payments/tokenizer" in c for c in changes)


def test_a_kept_request_header_is_a_widening() -> None:
    anchor = "      host: tokenizer.payments.global\n"
    keeping = BANK.replace(anchor, anchor + "      keepRequestHeaders: [X-Forwarded-Host]\n", 1)
    assert lines(BANK, keeping) == [
        "+ [payments] tokenizer.payments.global: lets the caller's x-forwarded-host header "
        "through to the workload"
    ]
    assert lines(keeping, BANK) == [
        "- [payments] tokenizer.payments.global: strips the caller's x-forwarded-host header again"
    ]
