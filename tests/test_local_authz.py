"""Ingress authorization at scale on real Envoy: the unified-matcher RBAC (render/envoy/rbac.py).

One Federated federation (every mesh its own root): ``pay`` exports an HTTP tokenizer to many
exact identities of ``web`` plus a prefix, and a little to ``partner``; and a TCP ledger to
``web`` only. Beside the usual allow/deny checks, certificates with two URI SANs must be refused:
Envoy's SPIFFE validator picks the root by the first URI SAN only, so a partner's root could
otherwise vouch for another mesh's identity in the second one.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from local_helpers import (
    Fed,
    client_context,
    poll,
    read_log_lines,
    tcp_greeting_and_echo,
    tls_request,
)
from meshfed.local import admin
from meshfed.local.ports import PortAllocator
from meshfed.pki.keys import PrivateKey, generate_key, load_key_pem
from meshfed.render.envoy.files import log_path

pytestmark = pytest.mark.envoy

WEB = "web.authz.test"
PARTNER = "partner.authz.test"
CHECKOUT = f"spiffe://{WEB}/ns/shop/sa/checkout"
CATALOG = f"spiffe://{WEB}/ns/shop/sa/catalog"
ROBOT = f"spiffe://{PARTNER}/ns/ops/sa/robot"
TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"
TOKENIZER_SNI = "tokenizer.pay.authz.test"
LEDGER_SNI = "ledger.pay.authz.test"
MANY = [f"ns/team{i}/sa/caller{i}" for i in range(40)]
"""Well over the size where Envoy's in-order ``rules`` started to cost (and where the earlier
plan was to switch to the matcher); the caller is listed after all of them."""


def _spec(directory: Path) -> Path:
    alloc = PortAllocator()
    ports = {m: alloc.allocate() for m in ("pay", "web", "partner")}

    def mesh(name: str, workloads: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": name,
            "trustDomain": f"{name}.authz.test",
            "ingress": {"address": "127.0.0.1", "port": ports[name]},
            "workloads": workloads,
        }

    def workload(ns: str, name: str, protocol: str = "HTTP", port: int = 8080) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": ns,
            "serviceAccount": name,
            "port": port,
            "protocol": protocol,
        }

    doc = {
        "apiVersion": "meshfed.dev/v1alpha1",
        "kind": "Federation",
        "metadata": {"name": "authz"},
        "spec": {
            "trust": {"mode": "Federated", "keyAlgorithm": "ECDSA_P256"},
            "meshes": [
                mesh(
                    "pay",
                    [workload("cards", "tokenizer"), workload("cards", "ledger", "TCP", 9000)],
                ),
                mesh("web", [workload("shop", "checkout"), workload("shop", "catalog")]),
                mesh("partner", [workload("ops", "robot")]),
            ],
            "exports": [
                {
                    "name": "tokenizer",
                    "mesh": "pay",
                    "workload": "cards/tokenizer",
                    "host": TOKENIZER_SNI,
                    "consumers": [
                        {
                            "mesh": "web",
                            "principals": [*MANY, "ns/batch/*", "ns/shop/sa/checkout"],
                            "methods": ["POST", "GET"],
                            "paths": ["/v1/tokenize", "/v1/status/*"],
                        },
                        {
                            "mesh": "partner",
                            "principals": ["ns/ops/sa/robot"],
                            "methods": ["GET"],
                            "paths": ["/v1/status/*"],
                        },
                    ],
                },
                {
                    "name": "ledger",
                    "mesh": "pay",
                    "workload": "cards/ledger",
                    "host": LEDGER_SNI,
                    "consumers": [{"mesh": "web", "principals": [*MANY, "ns/shop/sa/checkout"]}],
                },
            ],
            "imports": [
                {
                    "mesh": "web",
                    "host": "tokenizer.shop.svc.cluster.local",
                    "port": 80,
                    "from": ["pay/tokenizer"],
                },
                {
                    "mesh": "web",
                    "host": "ledger.shop.svc.cluster.local",
                    "port": 9000,
                    "from": ["pay/ledger"],
                },
            ],
        },
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "authz.yaml"
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("authz")
    started = Fed.start(_spec(base), base / "state")
    try:
        yield started
    finally:
        started.close()


# --- certificates and direct calls ----------------------------------------------------------------


def _leaf(
    sans: list[str], issuer: x509.Certificate, issuer_key: PrivateKey
) -> tuple[PrivateKey, x509.Certificate]:
    """An X.509-SVID-like client leaf with every URI in ``sans`` (a real SVID has one)."""
    key = generate_key("ECDSA_P256")
    now = datetime.now(UTC)
    no_usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, **no_usage), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(s) for s in sans]),
            critical=True,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


def _web_leaf(fed: Fed, *sans: str) -> tuple[PrivateKey, list[x509.Certificate]]:
    """Signed by web's intermediate (name-constrained to web's trust domain)."""
    ca = fed.ws.pki.meshes["web"]
    key, cert = _leaf(list(sans), ca.ca_cert, ca.ca_key)
    return key, [cert, ca.ca_cert]


def _partner_root_leaf(fed: Fed, *sans: str) -> tuple[PrivateKey, list[x509.Certificate]]:
    """Signed by partner's own root: no name constraints; pay trusts it for partner's domain."""
    root = fed.state / "pki" / "partner" / "root"
    root_key = load_key_pem((root / "root-key.pem").read_bytes(), "partner root key")
    root_cert = x509.load_pem_x509_certificate((root / "root-cert.pem").read_bytes())
    key, cert = _leaf(list(sans), root_cert, root_key)
    return key, [cert]


def _call(
    fed: Fed,
    tmp: Path,
    cred: tuple[PrivateKey, list[x509.Certificate]],
    method: str,
    path: str,
) -> Any:
    key, chain = cred
    ctx = client_context(tmp, chain, key, None)
    address, port = fed.ingress("pay")
    return tls_request(address, port, TOKENIZER_SNI, ctx, TOKENIZER_SNI, method, path)


def _access_entry(fed: Fed, caller: str, path: str) -> dict[str, Any] | None:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        lines = read_log_lines(log_path(fed.runtime.root, "pay/ingress", "access"))
        found[:] = [e for e in lines if e.get("caller") == caller and e.get("path") == path]
        return bool(found)

    poll(seen, timeout=3)
    return found[-1] if found else None


# --- HTTP ----------------------------------------------------------------------------------------


def test_listed_last_among_many_gets_200_with_its_identity(fed: Fed) -> None:
    resp = fed.call("web", "shop/checkout", TOKENIZE, "POST", b"4111")
    assert resp.status == 200, resp
    assert json.loads(resp.body)["caller"] == CHECKOUT
    entry = _access_entry(fed, CHECKOUT, "/v1/tokenize")
    assert entry is not None and entry["decision"] == "allowed" and entry["policy"] == "web-0"


def _rbac_stats(fed: Fed, prefix: str) -> dict[str, int]:
    """RBAC counters of the pay ingress (the dashboard reads them): allowed, denied."""
    layout = fed.runtime.layout()
    assert layout is not None
    sock = layout.meshes["pay"].ingress_admin
    got = admin.stats(sock, rf"^{re.escape(prefix)}\.rbac\.(allowed|denied)$")
    return {k.rpartition(".")[2]: int(v) for k, v in got.items()}


def test_workload_not_listed_gets_403(fed: Fed) -> None:
    before = _rbac_stats(fed, f"http.ingress_{TOKENIZER_SNI}")
    resp = fed.call("web", "shop/catalog", TOKENIZE, "POST", b"4111")
    assert resp.status == 403
    after = _rbac_stats(fed, f"http.ingress_{TOKENIZER_SNI}")
    assert after["denied"] == before.get("denied", 0) + 1
    entry = _access_entry(fed, CATALOG, "/v1/tokenize")
    assert entry is not None and entry["decision"] == "denied"
    assert entry["policy"] == "default-deny"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/tokenize", 200),
        ("POST", "/v1/tokenize?card=4111", 200),  # the query string is not part of the path
        ("GET", "/v1/tokenize?x=1&y=2", 200),
        ("POST", "/v1/tokenizer", 403),  # shares only a prefix string with the exact path
        ("POST", "/v1/tokenize/extra", 403),
        ("POST", "/v1/tokenize.json?x", 403),
        ("DELETE", "/v1/tokenize", 403),  # method not allowed
        ("PUT", "/v1/tokenize?x", 403),
        ("GET", "/v1/status/queue", 200),  # prefix path
        ("GET", "/v1/status/queue?verbose=1", 200),
        ("GET", "/v1/status", 403),
        ("GET", "/v1/statusx", 403),
        ("GET", "/v2/tokenize", 403),
    ],
)
def test_methods_and_paths_mean_what_the_plan_says(
    fed: Fed, tmp_path: Path, method: str, path: str, status: int
) -> None:
    result = _call(fed, tmp_path, _web_leaf(fed, CHECKOUT), method, path)
    assert result.status == status, result


def test_prefix_principals_and_another_consumer_mesh(fed: Fed, tmp_path: Path) -> None:
    batch = _web_leaf(fed, f"spiffe://{WEB}/ns/batch/sa/nightly")
    assert _call(fed, tmp_path, batch, "POST", "/v1/tokenize").status == 200
    assert _call(fed, tmp_path, batch, "DELETE", "/v1/tokenize").status == 403
    near = _web_leaf(fed, f"spiffe://{WEB}/ns/batchx/sa/nightly")
    assert _call(fed, tmp_path, near, "POST", "/v1/tokenize").status == 403
    listed = _web_leaf(fed, f"spiffe://{WEB}/ns/team7/sa/caller7")
    assert _call(fed, tmp_path, listed, "POST", "/v1/tokenize").status == 200
    robot = _partner_root_leaf(fed, ROBOT)
    assert _call(fed, tmp_path, robot, "GET", "/v1/status/x").status == 200
    assert _call(fed, tmp_path, robot, "POST", "/v1/tokenize").status == 403
    assert _call(fed, tmp_path, robot, "GET", "/v1/tokenize").status == 403


@pytest.mark.parametrize(
    "sans",
    [
        [CATALOG, CHECKOUT],  # same trust domain, allowed identity second
        [CHECKOUT, CATALOG],  # allowed identity first
        [CHECKOUT, CHECKOUT],
    ],
)
def test_two_uri_sans_from_the_callers_own_ca_are_denied(
    fed: Fed, tmp_path: Path, sans: list[str]
) -> None:
    result = _call(fed, tmp_path, _web_leaf(fed, *sans), "POST", "/v1/tokenize")
    assert result.status == 403, result
    entry = _access_entry(fed, ",".join(sans), "/v1/tokenize")
    assert entry is not None and entry["policy"] == "several-uri-sans"


@pytest.mark.parametrize(
    "sans",
    [
        [ROBOT, CHECKOUT],  # partner's identity first: the validator uses partner's root ...
        [f"spiffe://{PARTNER}/ns/ops/sa/other", CHECKOUT],  # ... and `rules` allowed checkout
    ],
)
def test_a_partner_root_cannot_vouch_for_another_meshs_identity(
    fed: Fed, tmp_path: Path, sans: list[str]
) -> None:
    # With the `rules` form both were 200 (POST is allowed to web's checkout only): RBAC's
    # principal_name matches any URI SAN. The matcher sees "a,b" and denies.
    cred = _partner_root_leaf(fed, *sans)
    for method in ("POST", "GET"):
        result = _call(fed, tmp_path, cred, method, "/v1/tokenize")
        assert result.status == 403, result


# --- TCP -----------------------------------------------------------------------------------------


def _tcp(fed: Fed, tmp: Path, cred: tuple[PrivateKey, list[x509.Certificate]]) -> tuple[str, bytes]:
    """('refused', b'') if the handshake failed; else what came back before and after 'ping'."""
    key, chain = cred
    ctx = client_context(tmp, chain, key, None)
    ctx.set_alpn_protocols([])
    address, port = fed.ingress("pay")
    with socket.create_connection((address, port), timeout=5) as raw:
        try:
            conn = ctx.wrap_socket(raw, server_hostname=LEDGER_SNI)
            conn.settimeout(2)
            greeting = conn.recv(4096)  # TLS 1.3: a refused client certificate shows up here
        except (OSError, ssl.SSLError):
            return "refused", b""
        try:
            conn.sendall(b"ping\n")
            echoed = b""
            while b"ping" not in echoed:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                echoed += chunk
        except (OSError, ssl.SSLError):
            echoed = b""
        return greeting.decode(errors="replace"), echoed


def test_tcp_listed_last_among_many_is_served(fed: Fed) -> None:
    port = fed.sidecar("web", "shop/checkout").tcp_outbound["ledger.shop.svc.cluster.local:9000"]
    assert tcp_greeting_and_echo(port) == {"mesh": "pay", "workload": "cards/ledger"}


def test_tcp_partner_root_is_not_trusted_on_a_chain_partner_may_not_use(
    fed: Fed, tmp_path: Path
) -> None:
    # The handshake's SAN list accepts a certificate if any SAN matches, and the ingress trusts
    # partner's root (partner may call the tokenizer). The ledger's chain trusts web's only.
    greeting, echoed = _tcp(fed, tmp_path, _partner_root_leaf(fed, ROBOT, CHECKOUT))
    assert (greeting, echoed) == ("refused", b"")


@pytest.mark.parametrize("sans", [[CATALOG, CHECKOUT], [CHECKOUT, CATALOG]])
def test_tcp_two_uri_sans_get_not_one_byte_of_the_workload(
    fed: Fed, tmp_path: Path, sans: list[str]
) -> None:
    # web's CA could mint checkout anyway, so the handshake passes (Envoy's SAN check accepts a
    # certificate if any SAN matches). The export's tunnel authorizes the verified SANs before
    # the workload is connected: the server-first ledger never greets this caller.
    before = _rbac_stats(fed, f"http.ingress_{LEDGER_SNI}")
    greeting, echoed = _tcp(fed, tmp_path, _web_leaf(fed, *sans))
    assert (greeting, echoed) == ("", b"")  # handshake done, then closed: 0 bytes
    denied = before.get("denied", 0) + 1
    counted = poll(
        lambda: _rbac_stats(fed, f"http.ingress_{LEDGER_SNI}").get("denied") == denied, timeout=3
    )
    assert counted is not None
    entry = _tunnel_entry(fed, ",".join(sans))
    assert entry is not None and entry["policy"] == "several-uri-sans"
    # Control: the same client with one URI SAN is greeted before it sends a byte.
    greeting, echoed = _tcp(fed, tmp_path, _web_leaf(fed, CHECKOUT))
    assert "cards/ledger" in greeting and b"ping" in echoed


def _tunnel_entry(fed: Fed, caller: str) -> dict[str, Any] | None:
    path = log_path(fed.runtime.root, "pay/ingress", "access")
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [
            e
            for e in read_log_lines(path)
            if e.get("sni") == LEDGER_SNI and e.get("caller") == caller
        ]
        return bool(found)

    poll(seen, timeout=3)
    return found[-1] if found else None
