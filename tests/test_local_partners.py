"""The partners federation (Federated trust: every mesh its own root) on real Envoy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_helpers import Fed, client_context, spec_copy, tls_request

pytestmark = pytest.mark.envoy

STOREFRONT = "spiffe://acme.example/ns/checkout/sa/storefront"
FULFILMENT = "spiffe://acme.example/ns/orders/sa/fulfilment"
PAYMENTS = "http://payments.checkout.svc.cluster.local"
SHIPPING = "http://shipping.orders.svc.cluster.local"


@pytest.fixture(scope="module")
def partners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("partners")
    fed = Fed.start(spec_copy("partners", base), base / "state")
    try:
        yield fed
    finally:
        fed.close()


def test_allowed_caller_keeps_its_identity_across_roots(partners: Fed) -> None:
    resp = partners.call("acme", "checkout/storefront", f"{PAYMENTS}/charges", "POST", b"{}")
    assert resp.status == 200
    doc = json.loads(resp.body)
    assert doc.pop("headers")["x-meshfed-caller"] == doc["caller"]
    assert doc == {
        "mesh": "globex",
        "workload": "billing/charge-svc-v2",
        "caller": STOREFRONT,
        "method": "POST",
        "path": "/charges",
    }
    resp = partners.call("acme", "orders/fulfilment", f"{SHIPPING}/parcels/42")
    assert resp.status == 200
    doc = json.loads(resp.body)
    assert (doc["mesh"], doc["workload"], doc["caller"]) == (
        "initech",
        "logistics/track",
        FULFILMENT,
    )


def test_prefix_path_and_method_rules(partners: Fed) -> None:
    ok = partners.call("acme", "checkout/storefront", f"{PAYMENTS}/charges/ch_1")
    assert ok.status == 200
    assert partners.call("acme", "checkout/storefront", f"{PAYMENTS}/refunds").status == 403
    assert (
        partners.call("acme", "checkout/storefront", f"{PAYMENTS}/charges", "DELETE").status == 403
    )
    assert partners.call("acme", "orders/fulfilment", f"{PAYMENTS}/charges").status == 403
    assert partners.call("acme", "accounts/withdraw", f"{SHIPPING}/parcels/42").status == 403
    assert partners.call("acme", "orders/fulfilment", f"{SHIPPING}/x", "POST", b"").status == 403


def test_a_partner_root_vouches_only_for_its_own_domain(partners: Fed, tmp_path: Path) -> None:
    # globex's withdraw workload is a valid identity of globex, chaining to globex's root; it
    # may not call initech's export (only acme may), whatever name it uses.
    key, cert = partners.leaf("globex", "spiffe://globex.example/ns/accounts/sa/withdraw")
    chain = [cert, partners.ws.pki.meshes["globex"].ca_cert]
    ctx = client_context(tmp_path, chain, key, partners.root_pem("initech"))
    plan = partners.ws.plan.mesh("initech")
    sni = plan.ingress.servers[0].sni
    result = tls_request(plan.ingress.address, plan.ingress.port, sni, ctx, sni, "GET", "/")
    assert result.status is None, result


def test_acme_certificate_works_directly_against_globex(partners: Fed, tmp_path: Path) -> None:
    key, cert = partners.leaf("acme", STOREFRONT)
    chain = [cert, partners.ws.pki.meshes["acme"].ca_cert]
    ctx = client_context(tmp_path, chain, key, partners.root_pem("globex"))
    plan = partners.ws.plan.mesh("globex")
    sni = plan.ingress.servers[0].sni
    result = tls_request(plan.ingress.address, plan.ingress.port, sni, ctx, sni, "POST", "/charges")
    assert result.status == 200 and result.doc["caller"] == STOREFRONT
