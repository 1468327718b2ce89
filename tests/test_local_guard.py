"""What crosses the boundary into a workload, on real Envoy (issue 13 point 10, issue 15 point 4).

- Override headers (method, path, host, address overrides, framework switches) never reach the
  exported workload, unless its export keeps one (``keepRequestHeaders``).
- Defense in depth: the exported workload's own sidecar admits cross-mesh traffic only from its
  mesh's federation ingress and only for callers the export allows, on the identity the ingress
  read from the caller's certificate (``x-meshfed-caller``); a forged caller header or XFCC sent
  straight to the sidecar is refused, and a caller the ingress refuses is refused there too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_helpers import Fed, TLSResult, client_context, spec_copy, tls_request
from meshfed.spec.headers import CALLER_HEADER, STRIPPED_HEADERS

pytestmark = pytest.mark.envoy

TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"
WEB = "spiffe://web.bank.example"
CHECKOUT = f"{WEB}/ns/shop/sa/checkout"
CATALOG = f"{WEB}/ns/shop/sa/catalog"
PAYMENTS = "spiffe://payments.bank.example"
PAYMENTS_INGRESS = f"{PAYMENTS}/ns/meshfed-system/sa/federation-ingress"
VAULT = f"{PAYMENTS}/ns/cards/sa/vault"
SNI = "tokenizer.payments.global"
KEPT = "x-forwarded-host"


def _keep_host(text: str) -> str:
    """payments' tokenizer keeps X-Forwarded-Host (its consumers are limited to a method and a
    path, so no method or path override could be kept)."""
    anchor = "      host: tokenizer.payments.global\n"
    assert anchor in text
    return text.replace(anchor, anchor + f"      keepRequestHeaders: [{KEPT.upper()}]\n")


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("guard")
    fed = Fed.start(spec_copy("bank", base, _keep_host), base / "state")
    try:
        yield fed
    finally:
        fed.close()


def _direct(
    bank: Fed,
    tmp: Path,
    mesh: str,
    identity: str,
    address: tuple[str, int],
    sni: str,
    method: str,
    path: str,
    headers: dict[str, str],
) -> TLSResult:
    """A request straight to ``address`` with a certificate of ``identity`` from ``mesh``."""
    key, cert = bank.leaf(mesh, identity)
    ctx = client_context(tmp, [cert, bank.ws.pki.meshes[mesh].ca_cert], key, None)
    return tls_request(*address, sni, ctx, SNI, method, path, headers)


def _overrides() -> dict[str, str]:
    forged = {
        name: "/admin" if "url" in name or "uri" in name else "evil" for name in STRIPPED_HEADERS
    }
    return {**forged, CALLER_HEADER: CATALOG, "x-http-method-override": "DELETE"}


def _crossed(received: dict[str, str]) -> list[str]:
    """The stripped headers that reached the workload with the caller's value. (The workload's
    own sidecar sets x-forwarded-proto for the hop to it; the caller's copy is gone.)"""
    sent = _overrides()
    return sorted(h for h in STRIPPED_HEADERS if h in received and received[h] == sent[h])


# --- override headers ----------------------------------------------------------------------------


def test_override_headers_never_reach_the_workload(bank: Fed, tmp_path: Path) -> None:
    result = _direct(
        bank, tmp_path, "web", CHECKOUT, bank.ingress("payments"), SNI, "POST", "/v1/tokenize",
        _overrides(),
    )  # fmt: skip
    assert result.status == 200, result
    received: dict[str, Any] = result.doc["headers"]
    assert _crossed(received) == [KEPT]  # the one the export keeps, as the caller sent it
    assert received[KEPT] == "evil"
    # The caller header is the ingress's, from checkout's certificate, not the forged one.
    assert received[CALLER_HEADER] == CHECKOUT
    assert result.doc["method"] == "POST" and result.doc["caller"] == CHECKOUT


def test_through_the_callers_sidecar_too(bank: Fed) -> None:
    headers = [
        (name, value) for name, value in _overrides().items() if not name.startswith("x-envoy")
    ]
    doc = bank.served_by("payments", "web", "shop/checkout", TOKENIZE, "POST", b"x", headers)
    assert _crossed(doc["headers"]) == [KEPT]
    assert doc["headers"][CALLER_HEADER] == CHECKOUT


def test_an_export_that_keeps_nothing_strips_everything(bank: Fed, tmp_path: Path) -> None:
    # payments-dr's tokenizer keeps nothing; it answers the wire host as failover alias.
    result = _direct(
        bank, tmp_path, "web", CHECKOUT, bank.ingress("payments-dr"), SNI, "POST", "/v1/tokenize",
        _overrides(),
    )  # fmt: skip
    assert result.status == 200 and result.doc["mesh"] == "payments-dr", result
    assert _crossed(result.doc["headers"]) == []


ADDRESS_HEADERS_FRAMEWORKS_READ = (
    # python-ipware's (django-ipware's) default precedence, header by header
    "x-forwarded-for",
    "client-ip",  # also Rails' ActionDispatch::RemoteIp (HTTP_CLIENT_IP)
    "x-real-ip",
    "x-forwarded",
    "x-cluster-client-ip",
    "forwarded-for",
    "forwarded",
    "cf-connecting-ip",
    "true-client-ip",
    "fastly-client-ip",
    "x-appengine-user-ip",
    "x-client-ip",
    # what ingress-nginx keeps of a caller's X-Forwarded-For, and other platforms' own
    "x-original-forwarded-for",
    "x-nf-client-connection-ip",
    "do-connecting-ip",
)
"""Headers common frameworks take the client's address from (IP allow-lists, rate limits,
audit trails): a caller forges them; none may reach the workload."""


def test_no_address_header_a_framework_reads_reaches_the_workload(
    bank: Fed, tmp_path: Path
) -> None:
    # Before: client-ip, x-forwarded, x-cluster-client-ip, forwarded-for, x-appengine-user-ip,
    # x-original-forwarded-for, x-nf-client-connection-ip and do-connecting-ip reached it.
    forged = dict.fromkeys(ADDRESS_HEADERS_FRAMEWORKS_READ, "203.0.113.7")
    for address in (bank.ingress("payments"), bank.ingress("payments-dr")):
        result = _direct(
            bank, tmp_path, "web", CHECKOUT, address, SNI, "POST", "/v1/tokenize", forged
        )
        assert result.status == 200, result
        received: dict[str, str] = result.doc["headers"]
        assert sorted(h for h in forged if received.get(h) == "203.0.113.7") == []


# --- the workload's own sidecar ------------------------------------------------------------------


def _to_tokenizer(
    bank: Fed, tmp: Path, identity: str, method: str, path: str, headers: dict[str, str]
) -> TLSResult:
    """Straight to payments' tokenizer sidecar (bypassing the ingress), as ``identity``."""
    inbound = ("127.0.0.1", bank.sidecar("payments", "cards/tokenizer").inbound_port)
    return _direct(bank, tmp, "payments", identity, inbound, "x", method, path, headers)


def test_a_forged_caller_header_straight_to_the_sidecar_is_refused(
    bank: Fed, tmp_path: Path
) -> None:
    # An in-mesh workload (vault) claims checkout, bypassing the ingress.
    forged = _to_tokenizer(bank, tmp_path, VAULT, "POST", "/v1/tokenize", {CALLER_HEADER: CHECKOUT})
    assert forged.status == 403
    xfcc = f"By={PAYMENTS_INGRESS};URI={CHECKOUT}"
    forged_xfcc = _to_tokenizer(
        bank, tmp_path, VAULT, "POST", "/v1/tokenize", {"x-forwarded-client-cert": xfcc}
    )
    assert forged_xfcc.status == 403
    # The mesh's own traffic, with neither, is not the guard's business.
    plain = _to_tokenizer(bank, tmp_path, VAULT, "GET", "/", {})
    assert plain.status == 200 and plain.doc["caller"] == VAULT


@pytest.mark.parametrize(
    ("caller", "method", "path", "status"),
    [
        (CHECKOUT, "POST", "/v1/tokenize", 200),  # what the export allows
        (CHECKOUT, "POST", "/v1/tokenize?x=1", 200),
        (CHECKOUT, "GET", "/v1/tokenize", 403),  # not its method
        (CHECKOUT, "POST", "/v1/detokenize", 403),  # not its path
        (CATALOG, "POST", "/v1/tokenize", 403),  # a caller the export does not allow
        (f"{CHECKOUT},{CATALOG}", "POST", "/v1/tokenize", 403),  # two URI SANs
        (f"{CATALOG},{CHECKOUT}", "POST", "/v1/tokenize", 403),
        (None, "POST", "/v1/tokenize", 403),  # the ingress always sets it: none is a fault
    ],
)
def test_the_sidecar_decides_on_the_identity_the_ingress_vouched_for(
    bank: Fed, tmp_path: Path, caller: str | None, method: str, path: str, status: int
) -> None:
    # As if from the ingress itself (its identity): the second layer decides on its own, also
    # if the first were bypassed or misconfigured.
    headers = {CALLER_HEADER: caller} if caller is not None else {}
    result = _to_tokenizer(bank, tmp_path, PAYMENTS_INGRESS, method, path, headers)
    assert result.status == status, result


def test_a_denied_caller_is_refused_at_both_layers(bank: Fed, tmp_path: Path) -> None:
    through_ingress = bank.call("web", "shop/catalog", TOKENIZE, "POST", b"x")
    assert through_ingress.status == 403
    behind_ingress = _to_tokenizer(
        bank, tmp_path, PAYMENTS_INGRESS, "POST", "/v1/tokenize", {CALLER_HEADER: CATALOG}
    )
    assert behind_ingress.status == 403
    # And the allowed caller passes both.
    bank.served_by("payments", "web", "shop/checkout", TOKENIZE, "POST", b"x")
