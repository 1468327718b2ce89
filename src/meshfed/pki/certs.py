"""Certificates: pure functions over `cryptography` (no I/O except `openssl_verify`).

Every function that creates a certificate takes an explicit `now` (timezone-aware, UTC) and `ttl`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshfed.pki.errors import PKIError
from meshfed.pki.keys import PrivateKey, PublicKey
from meshfed.spiffe import is_spiffe_uri, validate_spiffe_id, validate_trust_domain

ORGANIZATION = "meshfed"
#: Certificates start this long before `now`, so peers with slightly slow clocks accept them.
CLOCK_SKEW = timedelta(minutes=5)

_PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", re.S)


def as_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now.astimezone(UTC)


def _check_ttl(ttl: timedelta) -> None:
    if ttl <= timedelta(0):
        raise ValueError(f"ttl must be positive, got {ttl}")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_key_usage(digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _validity(
    now: datetime, ttl: timedelta, issuer_cert: x509.Certificate | None
) -> tuple[datetime, datetime]:
    now = as_utc(now)
    _check_ttl(ttl)
    not_before = now - CLOCK_SKEW
    not_after = now + ttl
    if issuer_cert is not None:
        issuer_not_after = issuer_cert.not_valid_after_utc
        if issuer_not_after <= now:
            raise PKIError(
                issuer_cert.subject.rfc4514_string(),
                f"issuer certificate expired at {issuer_not_after.isoformat()}",
                "rotate the issuing CA",
            )
        not_after = min(not_after, issuer_not_after)
    return not_before, not_after


def _aki(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _check_issuer_key(issuer_cert: x509.Certificate, issuer_key: PrivateKey) -> None:
    if not keys_match(issuer_key, issuer_cert):
        raise ValueError("issuer_key does not belong to issuer_cert")


def keys_match(key: PrivateKey, cert: x509.Certificate) -> bool:
    """True if `key` is the private key of `cert`'s public key."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, fmt) == cert.public_key().public_bytes(der, fmt)


def make_root_ca(
    common_name: str, key: PrivateKey, ttl: timedelta, now: datetime
) -> x509.Certificate:
    """A self-signed root CA (no path length limit)."""
    not_before, not_after = _validity(now, ttl, None)
    name = _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(digital_signature=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def make_intermediate_ca(
    mesh: str,
    trust_domain: str,
    key: PrivateKey,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    ttl: timedelta,
    now: datetime,
    common_name: str | None = None,
) -> x509.Certificate:
    """A mesh's intermediate CA: pathlen 0, limited to URIs in `trust_domain`.

    NameConstraints permits exactly the URI host `trust_domain` (RFC 5280 4.2.1.10: a URI
    constraint applies to the host part), so only `spiffe://<trust_domain>/...` leaves are valid.
    """
    return sign_intermediate_ca(
        mesh, trust_domain, key.public_key(), issuer_cert, issuer_key, ttl, now, common_name
    )


def intermediate_name(mesh: str, generation: str | None = None) -> str:
    """The common name of a mesh's intermediate (a rotation adds its generation)."""
    return f"{mesh} intermediate CA" + (f" {generation}" if generation else "")


def sign_intermediate_ca(
    mesh: str,
    trust_domain: str,
    public_key: PublicKey,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    ttl: timedelta,
    now: datetime,
    common_name: str | None = None,
) -> x509.Certificate:
    """`make_intermediate_ca` for a public key only (the key's holder keeps the private key).

    Every extension is set here; nothing is taken over from a request.
    """
    validate_trust_domain(trust_domain)
    _check_issuer_key(issuer_cert, issuer_key)
    not_before, not_after = _validity(now, ttl, issuer_cert)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name or intermediate_name(mesh)))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(issuer_cert), critical=False)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                excluded_subtrees=None,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


CROSS_PATH_LENGTH = 1
"""CA certificates a cross-certified root may have below it: its mesh's intermediate (which
signs the leaves, pathlen 0)."""


ANCHOR_SUFFIX = " federation anchor"


def anchor_name(mesh: str) -> str:
    """The common name of a mesh's federation anchor (see `cross_certify`)."""
    return mesh + ANCHOR_SUFFIX


def cross_certify(
    root: x509.Certificate,
    trust_domains: Sequence[str],
    anchor_cert: x509.Certificate,
    anchor_key: PrivateKey,
    now: datetime,
) -> x509.Certificate:
    """A cross-certificate of a partner's `root`, issued by a federation anchor.

    It carries the root's subject and public key, so chains the partner's CAs signed build
    through it to the anchor (RFC 5280 path building by name and key), and NameConstraints
    permitting exactly the URI hosts `trust_domains`: every leaf below it must hold only
    ``spiffe://<one of trust_domains>/...`` URI SANs, whatever the partner's root itself signs.
    pathlen 1 leaves room for the partner's intermediate only. It is valid while both the root
    and the anchor are.
    """
    if not trust_domains:
        raise ValueError("a cross-certificate needs at least one trust domain")
    for domain in trust_domains:
        validate_trust_domain(domain)
    _check_issuer_key(anchor_cert, anchor_key)
    public_key = root.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError(f"unsupported root key type {type(public_key).__name__}")
    if root.not_valid_after_utc <= as_utc(now):
        raise PKIError(
            root.subject.rfc4514_string(),
            f"root certificate expired at {root.not_valid_after_utc.isoformat()}",
            "rotate that mesh's root",
        )
    not_before, not_after = _validity(now, root.not_valid_after_utc - as_utc(now), anchor_cert)
    builder = (
        x509.CertificateBuilder()
        .subject_name(root.subject)
        .issuer_name(anchor_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=CROSS_PATH_LENGTH), critical=True)
        .add_extension(_ca_key_usage(digital_signature=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(anchor_cert), critical=False)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(d) for d in trust_domains],
                excluded_subtrees=None,
            ),
            critical=True,
        )
    )
    return builder.sign(anchor_key, hashes.SHA256())


def is_cross_certificate(cert: x509.Certificate) -> bool:
    """A CA certificate issued by a federation anchor (see `cross_certify`)."""
    cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cert.issuer != cert.subject and len(cn) == 1 and str(cn[0].value).endswith(ANCHOR_SUFFIX)


def same_public_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return a.public_key().public_bytes(der, fmt) == b.public_key().public_bytes(der, fmt)


def issue_leaf(
    spiffe_id: str,
    key: PrivateKey,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    ttl: timedelta,
    now: datetime,
    dns_names: Sequence[str] = (),
    server: bool = True,
    client: bool = True,
) -> x509.Certificate:
    """A workload (X.509-SVID) leaf certificate for `spiffe_id`, signed by `issuer_key`."""
    validate_spiffe_id(spiffe_id)
    if not (server or client):
        raise ValueError("a leaf must be usable as server, client, or both")
    _check_issuer_key(issuer_cert, issuer_key)
    not_before, not_after = _validity(now, ttl, issuer_cert)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    sans += [x509.DNSName(d) for d in dns_names]
    ekus = []
    if server:
        ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(issuer_cert), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


# --- names -------------------------------------------------------------------------------------


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    """The spiffe:// URI SANs of `cert`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if is_spiffe_uri(u)]


def permitted_uri_domains(cert: x509.Certificate) -> list[str] | None:
    """The permitted URI subtrees of `cert`'s NameConstraints, or None if it has none."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    return [
        n.value
        for n in nc.permitted_subtrees or ()
        if isinstance(n, x509.UniformResourceIdentifier)
    ]


# --- encoding ----------------------------------------------------------------------------------


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(cert_to_pem(c) for c in certs)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` (names and signature; ``cert`` itself: self-signed)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_self_signed(path: Path | str, cert: x509.Certificate, fix: str) -> None:
    """PKIError unless ``cert`` (read from ``path``) is a self-signed root."""
    if not issued_by(cert, cert):
        raise PKIError(path, "is not a self-signed root certificate", fix)


def split_pem(bundle: str) -> tuple[str, ...]:
    """The certificates of a PEM bundle, each as its own PEM text (nothing is parsed)."""
    return tuple(
        m.group(0) if m.group(0).endswith("\n") else m.group(0) + "\n"
        for m in _PEM_BLOCK.finditer(bundle)
    )


def load_certs_pem(data: bytes, source: str) -> list[x509.Certificate]:
    """All certificates of a PEM bundle (at least one); PKIError naming `source` otherwise."""
    fix = "restore the file, or remove the PKI state directory to start over"
    if _PEM_CERT_BEGIN not in data:
        raise PKIError(source, "contains no PEM certificate", fix)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PKIError(source, f"not a readable PEM certificate bundle ({exc})", fix) from None


def load_cert_pem(data: bytes, source: str) -> x509.Certificate:
    """Exactly one PEM certificate; PKIError naming `source` otherwise."""
    certs = load_certs_pem(data, source)
    if len(certs) != 1:
        raise PKIError(
            source,
            f"expected exactly one certificate, found {len(certs)}",
            "restore the file, or remove the PKI state directory to start over",
        )
    return certs[0]


def issued_at(cert: x509.Certificate) -> datetime:
    """When `cert` was issued: meshfed backdates notBefore by CLOCK_SKEW."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return min(start + CLOCK_SKEW, end)


def renewal_time(cert: x509.Certificate, fraction: float = 2 / 3) -> datetime:
    """When `fraction` of `cert`'s lifetime (from issue, not from the backdated notBefore) is
    over: the time to replace it. Counting from notBefore would make a short-lived certificate
    (workloadTTL 30s, notBefore 5 minutes back) due at once."""
    start = issued_at(cert)
    return start + (cert.not_valid_after_utc - start) * fraction


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string()} (sha256 {fingerprint(cert)[:16]}...)"
