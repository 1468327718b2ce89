"""Two organisations that share nothing but bundle endpoints, federated on real Envoy.

acme and globex (``examples/acme.yaml``, ``examples/globex.yaml``) each have their own state
directory and root; each serves its bundle (``meshfed trust serve``, https_spiffe), bootstraps
from the other's bundle file once, and then follows it (``meshfed trust fetch --follow``, every
second here). Checked: calls in both directions with the caller's identity; the attack matrix
(globex's root vouches for globex.example only at acme); globex's root rotation on its own
schedule under load in both directions with zero failed calls, acme only following its bundle;
and a certificate of globex's removed root refused at acme once the bundle drops it.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from local_helpers import Loop, assert_nothing_left, client_context, tls_request
from meshfed.bundles.state import PeerBundles
from meshfed.cli.main import main
from meshfed.examples import example_path
from meshfed.local.ports import PortAllocator
from meshfed.local.runtime import Runtime
from meshfed.pki import PrivateKey, generate_key, load_key_pem
from meshfed.rotation.machine import Rotator
from meshfed.workspace import Workspace, open_workspace

pytestmark = pytest.mark.envoy

STOREFRONT = "spiffe://acme.example/ns/checkout/sa/storefront"
CHARGE = "spiffe://globex.example/ns/billing/sa/charge"
ACME_ORDERS = "spiffe://acme.example/ns/orders/sa/orders"
ORDERS_SNI = "orders-api.acme.example"
PAYMENTS = "http://payments.checkout.svc.cluster.local"
ORDERS = "http://orders.billing.svc.cluster.local"


@dataclass
class Org:
    name: str
    spec: Path
    state: Path
    runtime: Runtime
    log: Path
    procs: list[subprocess.Popen[bytes]]

    def ws(self) -> Workspace:
        return open_workspace(self.spec, self.state)

    def call(self, mesh: str, workload: str, url: str, method: str = "GET") -> object:
        from meshfed.local.client import http_call

        layout = self.runtime.layout()
        assert layout is not None
        port = layout.meshes[mesh].sidecars[workload].outbound_port
        return http_call(port, method, url, b"{}" if method == "POST" else None, None, 5)


def _meshfed(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def _spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    code = "from meshfed.cli.main import main; main()"
    out = open(log, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=out)


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def _wait_log(log: Path, pattern: str, after: int = 0, timeout: float = 30.0) -> int:
    """Wait for a line matching ``pattern`` past byte ``after``; the offset after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")[after:]
        m = re.search(pattern, text)
        if m:
            return after + m.end()
        time.sleep(0.05)
    raise AssertionError(f"{log}: no {pattern!r} in:\n{log.read_text()[after:]}")


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Org]]:
    base = tmp_path_factory.mktemp("two-orgs")
    alloc = PortAllocator()
    ports = {p: alloc.allocate() for p in (16443, 16444, 18443, 18444)}
    orgs: dict[str, Org] = {}
    for name in ("acme", "globex"):
        text = example_path(name).read_text()
        text = re.sub(r"\b(16443|16444|18443|18444)\b", lambda m: str(ports[int(m.group())]), text)
        text = text.replace("refreshHint: 1m", "refreshHint: 1s")
        d = base / name
        d.mkdir()
        (d / f"{name}.yaml").write_text(text)
        orgs[name] = Org(name, d / f"{name}.yaml", d / "state", Runtime(d / "state"),
                         d / "trust.log", [])  # fmt: skip
    acme, globex = orgs["acme"], orgs["globex"]
    try:
        # Out of band, once: each hands the other its bundle (what `trust bundle` prints).
        (acme.spec.parent / "globex-bundle.json").write_text(
            _meshfed("trust", "bundle", "globex", str(globex.spec), "--state", str(globex.state))
        )
        (globex.spec.parent / "acme-bundle.json").write_text(
            _meshfed("trust", "bundle", "acme", str(acme.spec), "--state", str(acme.state))
        )
        for org in (acme, globex):
            org.procs.append(
                _spawn(org.log, "trust", "serve", str(org.spec), "--state", str(org.state))
            )
        _wait_port(ports[18443])
        _wait_port(ports[18444])
        for org in (acme, globex):
            _meshfed("trust", "fetch", str(org.spec), "--state", str(org.state))
        # globex first (its import from acme cannot answer yet), then acme, then globex again.
        globex.runtime.up(globex.ws())
        report = acme.runtime.up(acme.ws())
        assert report.ok, [p.detail for p in report.probes if not p.ok]
        report = globex.runtime.up(globex.ws())
        assert report.ok, [p.detail for p in report.probes if not p.ok]
        # From now on each only follows the other's bundle.
        for org in (acme, globex):
            org.procs.append(
                _spawn(
                    org.log, "trust", "fetch", str(org.spec), "--state", str(org.state), "--follow"
                )
            )
            _wait_log(org.log, "following")
        yield orgs
    finally:
        for org in orgs.values():
            for proc in org.procs:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            org.runtime.down()
            assert_nothing_left(org.state)


def test_state_directories_share_nothing_but_bundles(orgs: dict[str, Org]) -> None:
    acme, globex = orgs["acme"], orgs["globex"]
    a_ws, g_ws = acme.ws(), globex.ws()
    assert [m.name for m in a_ws.plan.meshes] == ["acme"]
    assert [m.name for m in g_ws.plan.meshes] == ["globex"]
    assert not (acme.state / "pki" / "globex").exists()
    assert not (globex.state / "pki" / "acme").exists()
    # What acme trusts for globex is exactly what globex publishes.
    kept = PeerBundles(acme.state).current("globex")
    assert kept is not None
    assert kept.x509_authorities == (g_ws.pki.meshes["globex"].root_cert,)
    bundle = a_ws.plan.mesh("acme").ingress.trusted
    assert [(b.name, b.trust_domains) for b in bundle] == [("globex", ("globex.example",))]


def test_calls_cross_organisations_with_the_callers_identity(orgs: dict[str, Org]) -> None:
    acme, globex = orgs["acme"], orgs["globex"]
    resp = acme.call("acme", "checkout/storefront", f"{PAYMENTS}/charges", "POST")
    assert resp.status == 200, resp  # type: ignore[attr-defined]
    doc = json.loads(resp.body)  # type: ignore[attr-defined]
    assert (doc["mesh"], doc["caller"]) == ("globex", STOREFRONT)
    resp = globex.call("globex", "billing/charge-svc-v2", f"{ORDERS}/orders/7")
    assert resp.status == 200, resp  # type: ignore[attr-defined]
    doc = json.loads(resp.body)  # type: ignore[attr-defined]
    assert (doc["mesh"], doc["workload"], doc["caller"]) == ("acme", "orders/orders", CHARGE)
    assert acme.call("acme", "checkout/catalog", f"{PAYMENTS}/x").status == 403  # type: ignore[attr-defined]
    assert globex.call("globex", "billing/ledger", f"{ORDERS}/x").status == 403  # type: ignore[attr-defined]
    assert globex.call("globex", "billing/charge-svc-v2", f"{ORDERS}/x", "POST").status == 403  # type: ignore[attr-defined]


def _leaf(
    sans: list[str], issuer: x509.Certificate, issuer_key: PrivateKey
) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_key("ECDSA_P256")
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "forger")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(s) for s in sans]),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return key, cert


def _orders_call(
    acme: Org, tmp: Path, chain: list[x509.Certificate], key: PrivateKey
) -> int | None:
    ingress = acme.ws().plan.mesh("acme").ingress
    ctx = client_context(tmp, chain, key, None)
    res = tls_request(ingress.address, ingress.port, ORDERS_SNI, ctx, ORDERS_SNI, "GET", "/o")
    return res.status


def test_a_partners_root_cannot_mint_another_trust_domains_identities(
    orgs: dict[str, Org], tmp_path: Path
) -> None:
    acme, globex = orgs["acme"], orgs["globex"]
    root_dir = globex.state / "pki" / "globex" / "root"
    root_key = load_key_pem((root_dir / "root-key.pem").read_bytes(), "globex root key")
    root = x509.load_pem_x509_certificate((root_dir / "root-cert.pem").read_bytes())
    # Positive control: globex's root is trusted at acme, for globex's own identities.
    key, cert = _leaf([CHARGE], root, root_key)
    assert _orders_call(acme, tmp_path, [cert], key) == 200
    # An acme identity minted by globex's root: refused in the handshake.
    key, cert = _leaf([ACME_ORDERS], root, root_key)
    assert _orders_call(acme, tmp_path, [cert], key) is None
    # globex's own identity first and an acme one second: never let through.
    key, cert = _leaf([CHARGE, ACME_ORDERS], root, root_key)
    assert _orders_call(acme, tmp_path, [cert], key) in (None, 403)
    # A root acme never accepted from globex's bundle: refused, whatever the identity.
    rogue_key = generate_key("ECDSA_P256")
    rogue = _self_signed(rogue_key)
    key, cert = _leaf([CHARGE], rogue, rogue_key)
    assert _orders_call(acme, tmp_path, [cert], key) is None


def _self_signed(key: PrivateKey) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rogue")])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip


def test_partner_root_rotation_under_load_zero_failed_calls(
    orgs: dict[str, Org], tmp_path: Path
) -> None:
    """globex rotates its root on its own schedule; acme only follows globex's bundle."""
    acme, globex = orgs["acme"], orgs["globex"]
    old = globex.ws().pki.meshes["globex"]
    old_key, old_leaf = old.issue(CHARGE, timedelta(hours=1), datetime.now(UTC))
    old_chain = [old_leaf, old.ca_cert]
    assert _orders_call(acme, tmp_path, old_chain, old_key) == 200
    loops = [
        Loop(lambda: acme.call("acme", "checkout/storefront", f"{PAYMENTS}/charges", "POST")),  # type: ignore[arg-type, return-value]
        Loop(lambda: globex.call("globex", "billing/charge-svc-v2", f"{ORDERS}/orders/1")),  # type: ignore[arg-type, return-value]
    ]
    mark = acme.log.stat().st_size
    for loop in loops:
        loop.start()
    try:
        time.sleep(0.5)
        rotator = Rotator(globex.state, globex.spec)
        record = rotator.start("root", "globex")
        # 1. globex adds its new root to its bundle (and trusts it itself)...
        rotator.run(record, until="verify-overlap")
        # ... acme's follower picks the new bundle up and its Envoys confirm it (SDS).
        mark = _wait_log(acme.log, r"globex: accepted sequence 2", mark)
        mark = _wait_log(acme.log, r"globex: local federation: .* confirmed applied", mark)
        kept = PeerBundles(acme.state).current("globex")
        assert kept is not None and len(kept.x509_authorities) == 2
        # 2. later, globex signs with the new root, reissues, verifies and removes the old one.
        result = rotator.run(rotator.status() or record)
        assert result.finished
        mark = _wait_log(acme.log, r"globex: accepted sequence 3", mark)
        mark = _wait_log(acme.log, r"globex: local federation: .* confirmed applied", mark)
        time.sleep(0.5)
    finally:
        for loop in loops:
            loop.stop()
    failures = [s for loop in loops for s in loop.failures()]
    print(f"calls under load: {sum(len(loop.samples) for loop in loops)}, failed: {failures}")
    assert failures == [] and all(len(loop.samples) > 20 for loop in loops), failures
    kept = PeerBundles(acme.state).current("globex")
    new = globex.ws().pki.meshes["globex"]
    assert kept is not None and kept.x509_authorities == (new.root_cert,)
    assert [h["sequence"] for h in PeerBundles(acme.state).history("globex")] == [1, 2, 3]
    # A certificate of the removed root is refused at acme now; the new root's is served.
    assert _orders_call(acme, tmp_path, old_chain, old_key) is None
    new_key, new_leaf = new.issue(CHARGE, timedelta(hours=1), datetime.now(UTC))
    assert _orders_call(acme, tmp_path, [new_leaf, new.ca_cert], new_key) == 200
