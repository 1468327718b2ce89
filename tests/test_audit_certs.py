"""Certificate, name-constraint and key-file checks, on generated material.

Certificates are made at test time (validity relative to now), from the PKI state directory in
spec mode and from Secrets (Istio's cacerts, kubernetes.io/tls) in manifests mode.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshfed.audit import AuditOptions, audit_manifests, audit_spec
from meshfed.audit.model import Report, Severity
from meshfed.pki import PKIStore
from meshfed.pki.certs import cert_to_pem, issue_leaf, make_intermediate_ca, make_root_ca
from meshfed.pki.keys import PrivateKey, generate_key, key_to_pem
from meshfed.plan.trust import trust_request
from meshfed.spec.load import load_spec
from test_audit_corpus import GOOD_SPEC, GOOD_TREE

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
DOMAIN = "alpha.corp.example"


def root(now: datetime = NOW - 365 * DAY) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_key("ECDSA_P256")
    return key, make_root_ca("test root", key, 3650 * DAY, now)


def intermediate(
    issued: datetime = NOW, ttl: timedelta = 365 * DAY, domain: str = DOMAIN
) -> tuple[PrivateKey, x509.Certificate, x509.Certificate]:
    root_key, root_cert = root()
    key = generate_key("ECDSA_P256")
    cert = make_intermediate_ca("alpha", domain, key, root_cert, root_key, ttl, issued)
    return key, cert, root_cert


def unconstrained() -> tuple[PrivateKey, x509.Certificate, x509.Certificate]:
    root_key, root_cert = root()
    key = generate_key("ECDSA_P256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alpha intermediate CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    return key, cert, root_cert


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def cacerts(material: tuple[PrivateKey, x509.Certificate, x509.Certificate]) -> dict[str, object]:
    key, cert, root_cert = material
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": "istio-system"},
        "type": "Opaque",
        "data": {
            "ca-cert.pem": b64(cert_to_pem(cert)),
            "ca-key.pem": b64(key_to_pem(key)),
            "root-cert.pem": b64(cert_to_pem(root_cert)),
            "cert-chain.pem": b64(cert_to_pem(cert) + cert_to_pem(root_cert)),
        },
    }


def tls_credential(issued: datetime, ttl: timedelta) -> dict[str, object]:
    ca_key, ca_cert, root_cert = intermediate()
    key = generate_key("ECDSA_P256")
    spiffe = f"spiffe://{DOMAIN}/ns/federation/sa/fed-ingress"
    leaf = issue_leaf(spiffe, key, ca_cert, ca_key, ttl, issued, ["api.alpha.example.com"])
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "fed-ingress-credential", "namespace": "federation"},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": (cert_to_pem(leaf) + cert_to_pem(ca_cert)).decode(),
            "tls.key": key_to_pem(key).decode(),
            "ca.crt": cert_to_pem(root_cert).decode(),
        },
    }


def tree_with(tmp: Path, secret: dict[str, object], mode: int = 0o600) -> Path:
    tree = tmp / "tree"
    shutil.copytree(GOOD_TREE, tree)
    (tree / "alpha" / "secrets").mkdir(mode=0o700)
    path = tree / "alpha" / "secrets" / "credential.yaml"
    path.write_text(yaml.safe_dump(secret))
    path.chmod(mode)
    return tree


def found(report: Report, check: str) -> set[Severity]:
    return {f.severity for f in report.findings if f.check == check}


def status(report: Report, check: str) -> str:
    return next(r.status for r in report.results if r.info.id == check)


# --- manifests: Secrets -------------------------------------------------------------------------


def test_fresh_material_passes(tmp_path: Path) -> None:
    tree = tree_with(tmp_path, cacerts(intermediate()))
    (tree / "alpha" / "secrets" / "ingress.yaml").write_text(
        yaml.safe_dump(tls_credential(NOW, 90 * DAY))
    )
    (tree / "alpha" / "secrets" / "ingress.yaml").chmod(0o600)
    report = audit_manifests(tree)
    # The clean tree's one note: its TCP export cannot refuse two URI SANs on Istio (info).
    assert [f.check for f in report.findings] == ["istio-boundary-gaps"]
    assert all(f.severity == Severity.INFO for f in report.findings)
    for check in ("certificate-rotation", "intermediate-name-constraints", "key-file-permissions"):
        assert status(report, check) == "pass"


Builder = Callable[[], dict[str, object]]
CASES: list[tuple[str, Builder, str, Severity]] = [
    (
        "expired-intermediate",
        lambda: cacerts(intermediate(NOW - 400 * DAY, 365 * DAY)),
        "certificate-rotation",
        Severity.CRITICAL,
    ),
    (
        "intermediate-in-window",
        lambda: cacerts(intermediate(NOW - 300 * DAY, 365 * DAY)),
        "certificate-rotation",
        Severity.HIGH,
    ),
    (
        "gateway-leaf-in-window",
        lambda: tls_credential(NOW - 80 * DAY, 90 * DAY),
        "certificate-rotation",
        Severity.MEDIUM,
    ),
    (
        "not-yet-valid",
        lambda: cacerts(intermediate(NOW + 2 * DAY, 365 * DAY)),
        "certificate-rotation",
        Severity.MEDIUM,
    ),
    (
        "unconstrained-intermediate",
        lambda: cacerts(unconstrained()),
        "intermediate-name-constraints",
        Severity.HIGH,
    ),
    (
        "constrained-to-another-domain",
        lambda: cacerts(intermediate(domain="beta.corp.example")),
        "intermediate-name-constraints",
        Severity.HIGH,
    ),
]


@pytest.mark.parametrize(
    ("build", "check", "severity"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_secret_case_triggers(
    build: Builder, check: str, severity: Severity, tmp_path: Path
) -> None:
    report = audit_manifests(tree_with(tmp_path, build()))
    assert severity in found(report, check), [(f.check, f.message) for f in report.findings]
    assert status(report, check) == "fail"


def test_window_option_moves_the_rotation_date(tmp_path: Path) -> None:
    tree = tree_with(tmp_path, cacerts(intermediate(NOW, 365 * DAY)))
    assert found(audit_manifests(tree), "certificate-rotation") == set()
    wide = AuditOptions(now=NOW, window=400 * DAY)
    assert found(audit_manifests(tree, wide), "certificate-rotation") == {Severity.HIGH}


@pytest.mark.parametrize(("mode", "severity"), [(0o644, Severity.CRITICAL), (0o640, Severity.HIGH)])
def test_readable_secret_files(mode: int, severity: Severity, tmp_path: Path) -> None:
    report = audit_manifests(tree_with(tmp_path, cacerts(intermediate()), mode))
    hits = [f for f in report.findings if f.check == "key-file-permissions"]
    assert [f.severity for f in hits] == [severity]
    assert hits[0].location.file == "alpha/secrets/credential.yaml"
    assert f"{mode:04o}" in hits[0].message


# --- spec mode: the PKI state directory ---------------------------------------------------------


def state(tmp: Path, now: datetime = NOW) -> Path:
    PKIStore(tmp).ensure(trust_request(load_spec(GOOD_SPEC)), now=now)
    return tmp


def test_state_key_readable_by_others(tmp_path: Path) -> None:
    key = state(tmp_path) / "pki" / "cards" / "ca-key.pem"
    key.chmod(0o644)
    report = audit_spec(GOOD_SPEC, tmp_path)
    hits = [f for f in report.findings if f.check == "key-file-permissions"]
    assert [(f.severity, f.location.file) for f in hits] == [(Severity.CRITICAL, str(key))]


def test_state_expired_intermediates(tmp_path: Path) -> None:
    state(tmp_path, now=NOW - 400 * DAY)  # intermediates live 8760h: expired 35 days ago
    report = audit_spec(GOOD_SPEC, tmp_path)
    hits = [f for f in report.findings if f.check == "certificate-rotation"]
    assert {f.severity for f in hits} == {Severity.CRITICAL}
    assert sorted(Path(str(f.location.file)).parent.name for f in hits) == [
        "cards",
        "cards-dr",
        "shop",
    ]
    assert all(Path(str(f.location.file)).name == "ca-cert.pem" for f in hits)


def test_state_unconstrained_intermediate(tmp_path: Path) -> None:
    path = state(tmp_path) / "pki" / "shop" / "ca-cert.pem"
    path.write_bytes(cert_to_pem(unconstrained()[1]))
    report = audit_spec(GOOD_SPEC, tmp_path)
    assert found(report, "intermediate-name-constraints") == {Severity.HIGH}


def test_state_intermediate_of_another_mesh(tmp_path: Path) -> None:
    pki = state(tmp_path) / "pki"
    shutil.copy(pki / "cards" / "ca-cert.pem", pki / "shop" / "ca-cert.pem")
    report = audit_spec(GOOD_SPEC, tmp_path)
    (hit,) = [f for f in report.findings if f.check == "intermediate-name-constraints"]
    assert "cards.clean.example" in hit.message and "shop.clean.example" in hit.message
