"""Certificates and chain verification: profiles, name constraints, pathlen, both verifiers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshfed.pki.certs import (
    cert_to_pem,
    fingerprint,
    issue_leaf,
    load_certs_pem,
    make_intermediate_ca,
    make_root_ca,
    spiffe_ids,
)
from meshfed.pki.errors import PKIError
from meshfed.pki.keys import KeyAlgorithm, PrivateKey, generate_key, key_to_pem, load_key_pem
from meshfed.pki.verify import openssl_verify, verify_chain

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
A_ID = "spiffe://a.test/ns/default/sa/app"
B_ID = "spiffe://b.test/ns/default/sa/app"

Verifier = Callable[..., None]
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
VERIFIERS = [
    pytest.param(verify_chain, id="verify_chain"),
    pytest.param(openssl_verify, id="openssl", marks=needs_openssl),
]


class CA:
    def __init__(self, alg: KeyAlgorithm = "ECDSA_P256") -> None:
        self.alg = alg
        self.root_key = generate_key(alg)
        self.root = make_root_ca("test root CA", self.root_key, 365 * DAY, NOW)
        self.a_key = generate_key(alg)
        self.a = make_intermediate_ca(
            "a", "a.test", self.a_key, self.root, self.root_key, 30 * DAY, NOW
        )

    def leaf(self, spiffe_id: str = A_ID, **kw: object) -> tuple[PrivateKey, x509.Certificate]:
        key = generate_key(self.alg)
        return key, issue_leaf(spiffe_id, key, self.a, self.a_key, HOUR, NOW, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


# --- profiles ------------------------------------------------------------------------------------


def test_root_profile(ca: CA) -> None:
    bc = ext(ca.root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    ku = ext(ca.root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert ext(ca.root, x509.SubjectKeyIdentifier)
    assert ca.root.subject == ca.root.issuer
    orgs = ca.root.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == ["meshfed"]


def test_intermediate_profile(ca: CA) -> None:
    bc = ext(ca.a, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(ca.a, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    nc = ext(ca.a, x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.UniformResourceIdentifier("a.test")]
    assert nc.value.excluded_subtrees is None
    aki = ext(ca.a, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca.root, x509.SubjectKeyIdentifier).value.digest
    assert ca.a.subject.rfc4514_string() == "CN=a intermediate CA,O=meshfed"


def test_intermediate_validity_clamped_to_issuer() -> None:
    root_key = generate_key("ECDSA_P256")
    root = make_root_ca("short root", root_key, 2 * DAY, NOW)
    key = generate_key("ECDSA_P256")
    inter = make_intermediate_ca("a", "a.test", key, root, root_key, 365 * DAY, NOW)
    assert inter.not_valid_after_utc == root.not_valid_after_utc
    leaf = issue_leaf(A_ID, key, inter, key, 365 * DAY, NOW)
    assert leaf.not_valid_after_utc == root.not_valid_after_utc


@pytest.mark.parametrize("alg", ["ECDSA_P256", "RSA_2048"])
def test_leaf_profile(alg: KeyAlgorithm) -> None:
    c = CA(alg)
    _, leaf = c.leaf(dns_names=["app.example"])
    assert spiffe_ids(leaf) == [A_ID]
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["app.example"]
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert ku.value.key_encipherment == (alg != "ECDSA_P256")
    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert leaf.not_valid_after_utc == NOW + HOUR
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == (
        ext(c.a, x509.SubjectKeyIdentifier).value.digest
    )


def test_leaf_rejects_bad_spiffe_ids(ca: CA) -> None:
    for bad in ["https://a.test/x", "spiffe://a.test", "spiffe://a.test/", "spiffe://A.test/x"]:
        with pytest.raises(ValueError):
            ca.leaf(bad)


def test_naive_now_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        make_root_ca("x", generate_key("ECDSA_P256"), DAY, datetime(2026, 1, 1))


def test_pem_helpers(ca: CA) -> None:
    pem = cert_to_pem(ca.a) + cert_to_pem(ca.root)
    assert load_certs_pem(pem, "bundle.pem") == [ca.a, ca.root]
    assert fingerprint(ca.root) == ca.root.fingerprint(hashes.SHA256()).hex()
    assert len(fingerprint(ca.root)) == 64
    with pytest.raises(PKIError, match=r"^bundle\.pem: contains no PEM certificate"):
        load_certs_pem(b"garbage", "bundle.pem")
    with pytest.raises(PKIError, match=r"^bundle\.pem: not a readable PEM"):
        load_certs_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "bundle.pem"
        )
    key_pem = key_to_pem(ca.a_key)
    assert b"BEGIN PRIVATE KEY" in key_pem  # PKCS#8, unencrypted
    assert key_to_pem(load_key_pem(key_pem, "k.pem")) == key_pem
    with pytest.raises(PKIError, match=r"^k\.pem: not a readable") as err:
        load_key_pem(key_pem[:-40], "k.pem")
    assert "PRIVATE KEY" not in str(err.value)


# --- verification ---------------------------------------------------------------------------


@pytest.mark.parametrize("verify", VERIFIERS)
def test_own_leaf_verifies(ca: CA, verify: Verifier) -> None:
    _, leaf = ca.leaf()
    verify(leaf, [ca.a], [ca.root], NOW, spiffe_id=A_ID)
    verify(leaf, [ca.a], [ca.root], NOW, purpose="server")


@pytest.mark.parametrize("verify", VERIFIERS)
def test_name_constraint_enforced(ca: CA, verify: Verifier) -> None:
    """Mesh A's intermediate cannot vouch for mesh B's trust domain (nor a subdomain of A's)."""
    for foreign in [B_ID, "spiffe://x.a.test/ns/default/sa/app", "spiffe://a.test.evil/ns/x/sa/y"]:
        _, leaf = ca.leaf(foreign)
        with pytest.raises(PKIError) as err:
            verify(leaf, [ca.a], [ca.root], NOW)
        msg = str(err.value)
        if verify is openssl_verify:
            assert "permitted subtree violation" in msg
        else:
            assert "name constraint violated" in msg and "a.test" in msg


@pytest.mark.parametrize("verify", VERIFIERS)
def test_pathlen_zero_enforced(ca: CA, verify: Verifier) -> None:
    """A CA issued under a mesh intermediate is not trusted, nor its leaves."""
    sub_key = generate_key("ECDSA_P256")
    sub = make_intermediate_ca("sub", "a.test", sub_key, ca.a, ca.a_key, DAY, NOW)
    leaf_key = generate_key("ECDSA_P256")
    leaf = issue_leaf(A_ID, leaf_key, sub, sub_key, HOUR, NOW)
    with pytest.raises(PKIError) as err:
        verify(leaf, [sub, ca.a], [ca.root], NOW)
    msg = str(err.value)
    assert (
        ("path length constraint exceeded" in msg)
        if verify is openssl_verify
        else ("pathLenConstraint 0" in msg)
    )


@pytest.mark.parametrize("verify", VERIFIERS)
def test_other_failures(ca: CA, verify: Verifier) -> None:
    _, leaf = ca.leaf()
    other = CA()
    with pytest.raises(PKIError):  # wrong root
        verify(leaf, [ca.a], [other.root], NOW)
    with pytest.raises(PKIError):  # intermediate not given
        verify(leaf, [], [ca.root], NOW)
    with pytest.raises(PKIError, match=r"expired|has expired"):
        verify(leaf, [ca.a], [ca.root], NOW + 2 * HOUR)
    with pytest.raises(PKIError, match=r"not valid before|not yet valid"):
        verify(leaf, [ca.a], [ca.root], NOW - HOUR)
    with pytest.raises(PKIError, match=r"expected spiffe://a\.test/ns/other/sa/x"):
        verify(leaf, [ca.a], [ca.root], NOW, spiffe_id="spiffe://a.test/ns/other/sa/x")
    _, server_only = ca.leaf(client=False)
    with pytest.raises(PKIError, match=r"clientAuth|unsuitable certificate purpose"):
        verify(server_only, [ca.a], [ca.root], NOW)
    verify(server_only, [ca.a], [ca.root], NOW, purpose="server")


def test_verify_chain_reports_svid_problems(ca: CA) -> None:
    key = generate_key("ECDSA_P256")
    two = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.a.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(A_ID), x509.UniformResourceIdentifier(A_ID + "2")]
            ),
            critical=True,
        )
        .sign(ca.a_key, hashes.SHA256())
    )
    with pytest.raises(PKIError, match="has 2 SPIFFE IDs"):
        verify_chain(two, [ca.a], [ca.root], NOW)


def test_cryptography_verifier_cannot_handle_uri_name_constraints(ca: CA) -> None:
    """Measured limitation: cryptography's PolicyBuilder verifier rejects every chain with a URI
    name constraint, even a valid one. If this starts passing, verify_chain can delegate to it."""
    _, leaf = ca.leaf()
    verifier = PolicyBuilder().store(Store([ca.root])).time(NOW).build_client_verifier()
    with pytest.raises(VerificationError, match="unsupported name constraint"):
        verifier.verify(leaf, [ca.a])


def test_dns_sans_are_not_constrained_by_uri_constraint(ca: CA) -> None:
    """RFC 5280: a URI-only constraint leaves DNS SANs unconstrained (both verifiers agree)."""
    _, leaf = ca.leaf(dns_names=["anything.example"])
    verify_chain(leaf, [ca.a], [ca.root], NOW)
    if shutil.which("openssl"):
        openssl_verify(leaf, [ca.a], [ca.root], NOW)
