"""The security diff says, in plain words, what a spec change exposes or closes."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

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


WITHOUT_LEDGER = BANK.replace(
    "    - name: ledger\n      mesh: payments\n      workload: cards/ledger\n      consumers:\n"
    "        - mesh: web\n          principals: [ns/shop/sa/checkout]\n",
    "",
).replace(
    "    - mesh: web\n      host: ledger.shop.svc.cluster.local\n      port: 9000\n"
    "      from: [payments/ledger]\n",
    "",
)
"""The bank without its ledger export and the import of it."""


def test_removing_an_export_closes_it_and_its_import() -> None:
    changes = lines(BANK, WITHOUT_LEDGER)
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


def _with_boundary(plan: FederationPlan, mesh: str, **changes: object) -> FederationPlan:
    meshes = tuple(
        replace(m, boundary=replace(m.boundary, **changes)) if m.name == mesh else m  # type: ignore[arg-type]
        for m in plan.meshes
    )
    return replace(plan, meshes=meshes)


def test_boundary_policy_changes_are_reported_both_ways() -> None:
    before = plan(BANK)
    policy = before.mesh("payments").boundary
    after = _with_boundary(
        before,
        "payments",
        request_headers_removed=(*policy.request_headers_removed[1:], "x-debug"),
        response_headers_removed=policy.response_headers_removed[1:],
        forward_caller_address=True,
        client_cert=replace(policy.client_cert, forwarder="spiffe://payments.bank.example/x"),
        paths=replace(policy.paths, normalize=False),
    )
    dropped_request = policy.request_headers_removed[0]
    dropped_response = policy.response_headers_removed[0]
    changes = [str(c) for c in security_diff(before, after)]
    assert sorted(changes) == sorted(
        [
            "- [payments] the ingress strips the caller's x-debug header",
            f"+ [payments] the ingress lets the caller's {dropped_request} header through to "
            "the exported workloads",
            f"+ [payments] responses may carry {dropped_response} out of the mesh",
            "+ [payments] exported workloads learn callers' network addresses",
            "~ [payments] the one peer a workload accepts an XFCC from: "
            "spiffe://payments.bank.example/x (was "
            "spiffe://payments.bank.example/ns/meshfed-system/sa/federation-ingress)",
            "+ [payments] the ingress no longer normalizes paths before deciding on them ('..' "
            "can walk around a path rule)",
        ]
    )
    back = [str(c) for c in security_diff(after, before)]
    assert f"+ [payments] the ingress strips the caller's {dropped_request} header" not in back
    assert f"- [payments] the ingress strips the caller's {dropped_request} header" in back
    assert f"- [payments] responses no longer carry {dropped_response} out of the mesh" in back
    assert "- [payments] exported workloads no longer learn callers' network addresses" in back
    assert "- [payments] the ingress normalizes paths before deciding on them" in back


def test_egress_allow_list_changes_are_reported() -> None:
    changes = lines(BANK, WITHOUT_LEDGER)
    assert "- [web] egress no longer lets ledger.payments.bank.global out of the mesh" in changes
    assert "+ [web] egress lets ledger.payments.bank.global out of the mesh" in lines(
        WITHOUT_LEDGER, BANK
    )


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


def test_proxy_bounds_and_failover_changes_are_reported() -> None:
    before = plan(BANK)
    payments = before.mesh("payments")
    limits = replace(
        payments.limits,
        ingress=replace(
            payments.limits.ingress,
            handshake_timeout=timedelta(seconds=60),
            max_connections=100,
            underscore_headers="ALLOW",
        ),
        max_connections_per_proxy=20000,
    )
    egress = replace(
        payments.egress,
        failover=replace(payments.egress.failover, connect_timeout=timedelta(seconds=2)),
    )
    after = replace(
        before,
        meshes=tuple(
            replace(m, limits=limits, egress=egress) if m.name == "payments" else m
            for m in before.meshes
        ),
    )
    changes = [str(c) for c in security_diff(before, after)]
    assert sorted(changes) == sorted(
        [
            "+ [payments] the ingress waits for a TLS handshake up to 60s (was 5s)",
            "- [payments] the ingress holds up to 100 connections (was 8000)",
            "+ [payments] the ingress treats request headers with '_' as ALLOW (was REJECT)",
            "+ [payments] each proxy holds up to 20000 connections (was 8192)",
            "~ [payments] egress failover connect timeout: 2s (was 1s)",
        ]
    )
    tcp = _with_boundary(before, "payments", tcp_authorized_before_connect=False)
    assert [str(c) for c in security_diff(before, tcp)] == [
        "+ [payments] TCP exports connect their workload before the caller is authorized (a "
        "server-first workload greets callers the policy refuses)"
    ]
