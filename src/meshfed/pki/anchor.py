"""Federation anchors: how an Istio ingress gateway binds each partner root to its trust domain.

Istio's gateway credential (``credentialName``, ``ca.crt``) is a plain CA bundle: a partner root
in it vouches for any identity. So in Federated trust an exporting mesh's ingress does not trust
its consumers' roots directly. meshfed keeps, per exporting mesh, a small self-signed
**federation anchor** CA and issues with it, for every consumer root the ingress must trust, a
**cross-certificate** (`meshfed.pki.certs.cross_certify`): the root's subject and public key,
NameConstraints permitting exactly that consumer's trust domain. The ingress's ``ca.crt`` holds
the anchor and the cross-certificates only, never a consumer root: a caller's chain (leaf, its
mesh's intermediate, its root) builds through the cross-certificate to the anchor, and the
constraint refuses any URI SAN outside the consumer's trust domain. Verified with
``openssl verify`` and with Envoy's default validator (BoringSSL, Envoy 1.40) in
tests/test_pki_cross.py.

The anchor is not a mesh root (whose key may be held offline, see `meshfed.pki.custody`): only
this mesh's ingress gateway trusts it, and callers never see it. Replacing it is therefore safe
at any time (the new anchor and its cross-certificates reach the ingress in one Secret), which
is why an expiring anchor is simply renewed. A damaged one (unreadable, key not matching, key
readable by others) is refused, as any CA file of the store is.

Layout: ``STATE/pki/<mesh>/federation-anchor/anchor-{cert,key}.pem`` (key 0600) and
``cross/<sha256 of the root, 16 hex>.pem``: one kept cross-certificate per trusted root,
re-issued when the root's trust domains, the anchor or its renewal time say so, removed once the
root is no longer trusted (a consumer's rotated root is trusted, and cross-certified, beside the
old one for as long as the plan's bundle holds both).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshfed.pki.cafiles import check_started
from meshfed.pki.certs import (
    CROSS_PATH_LENGTH,
    anchor_name,
    as_utc,
    cert_to_pem,
    certs_to_pem,
    cross_certify,
    fingerprint,
    keys_match,
    load_cert_pem,
    make_root_ca,
    permitted_uri_domains,
    renewal_time,
    same_public_key,
)
from meshfed.pki.errors import PKIError
from meshfed.pki.files import CERT_MODE, KEY_MODE, mkdir_private, write_atomic
from meshfed.pki.keys import KeyAlgorithm, PrivateKey, generate_key, key_to_pem
from meshfed.pki.store import PKIStore

ANCHOR_DIR = "federation-anchor"
ANCHOR_CERT = "anchor-cert.pem"
ANCHOR_KEY = "anchor-key.pem"
CROSS_DIR = "cross"
ANCHOR_TTL = timedelta(days=3650)
RENEW_AT = 2 / 3
"""Fraction of an anchor's or cross-certificate's lifetime after which it is renewed."""


@dataclass(frozen=True)
class TrustedRoot:
    """A partner root an ingress trusts, and the trust domains it may vouch for there."""

    root: x509.Certificate
    trust_domains: tuple[str, ...]


@dataclass(frozen=True)
class FederationAnchor:
    """A mesh's federation anchor and its cross-certificates, in the order asked for."""

    mesh: str
    cert: x509.Certificate
    key: PrivateKey = field(repr=False)
    cross: tuple[x509.Certificate, ...]

    def bundle_pem(self) -> bytes:
        """What the ingress trusts (``ca.crt``): the anchor, then the cross-certificates."""
        return certs_to_pem([self.cert, *self.cross])


def anchor_dir(state_dir: Path, mesh: str) -> Path:
    return Path(state_dir) / "pki" / mesh / ANCHOR_DIR


def ensure_anchor(
    state_dir: Path,
    mesh: str,
    key_algorithm: KeyAlgorithm,
    trusted: Sequence[TrustedRoot],
    now: datetime | None = None,
    ttl: timedelta = ANCHOR_TTL,
) -> FederationAnchor:
    """Mesh ``mesh``'s federation anchor with a cross-certificate for each of ``trusted``.

    Creates the anchor if there is none, renews it (and so every cross-certificate) once it is
    due, keeps fresh cross-certificates and re-issues the others. Runs under the PKI store's
    lock. PKIError on a damaged anchor (nothing is written then).
    """
    now = as_utc(now) if now is not None else datetime.now(UTC)
    store = PKIStore(state_dir)
    folder = anchor_dir(state_dir, mesh)
    with store.locked():
        loaded = _load_anchor(store, folder, mesh, now)
        if loaded is None:
            key = generate_key(key_algorithm)
            cert = make_root_ca(anchor_name(mesh), key, ttl, now)
            shutil.rmtree(folder, ignore_errors=True)
            store.install_dir(
                folder,
                {
                    ANCHOR_CERT: (cert_to_pem(cert), CERT_MODE),
                    ANCHOR_KEY: (key_to_pem(key), KEY_MODE),
                },
            )
        else:
            cert, key = loaded
        cross = tuple(_ensure_cross(folder / CROSS_DIR, cert, key, t, now) for t in trusted)
        _prune(folder / CROSS_DIR, {_cross_file(t.root) for t in trusted})
    return FederationAnchor(mesh=mesh, cert=cert, key=key, cross=cross)


def _load_anchor(
    store: PKIStore, folder: Path, mesh: str, now: datetime
) -> tuple[x509.Certificate, PrivateKey] | None:
    """The kept anchor, or None if there is none or it is due for renewal."""
    cert_path, key_path = folder / ANCHOR_CERT, folder / ANCHOR_KEY
    fix = (
        f"restore the file, or remove {folder} to have a new anchor created (safe: only this "
        "mesh's ingress trusts it; render and apply again)"
    )
    present = [p for p in (cert_path, key_path) if p.is_file()]
    if not present:
        return None
    if len(present) == 1:
        missing = key_path if present[0] == cert_path else cert_path
        raise PKIError(missing, f"is missing although {present[0].name} exists", fix)
    try:
        cert = store.read_cert(cert_path)
        key = store.read_key(key_path)  # refuses a key readable by group or others
    except PKIError as exc:
        keep = exc.fix if "chmod" in (exc.fix or "") else fix
        raise PKIError(exc.source, exc.problem, keep) from None
    if not keys_match(key, cert):
        raise PKIError(key_path, f"private key does not match {ANCHOR_CERT}", fix)
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(cert_path, "is not a self-signed CA certificate", fix) from None
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if [a.value for a in cn] != [anchor_name(mesh)]:
        raise PKIError(cert_path, f"is not the federation anchor of mesh {mesh}", fix)
    check_started(cert_path, cert, now)
    if now >= renewal_time(cert, RENEW_AT):
        return None  # due (or expired): replaced as a whole, see the module docstring
    return cert, key


def _cross_file(root: x509.Certificate) -> str:
    return f"{fingerprint(root)[:16]}.pem"


def _ensure_cross(
    folder: Path,
    anchor: x509.Certificate,
    anchor_key: PrivateKey,
    trusted: TrustedRoot,
    now: datetime,
) -> x509.Certificate:
    path = folder / _cross_file(trusted.root)
    if path.is_file():
        try:
            kept = load_cert_pem(path.read_bytes(), str(path))
        except PKIError:
            pass  # a cross-certificate is derived material: an unreadable one is re-issued
        else:
            if _fresh(kept, anchor, trusted, now):
                return kept
    cert = cross_certify(trusted.root, trusted.trust_domains, anchor, anchor_key, now)
    mkdir_private(folder)
    write_atomic(path, cert_to_pem(cert), CERT_MODE)
    return cert


def _fresh(
    cert: x509.Certificate, anchor: x509.Certificate, trusted: TrustedRoot, now: datetime
) -> bool:
    """The kept cross-certificate says exactly what is asked, by this anchor, and is not due."""
    if cert.issuer != anchor.subject or cert.subject != trusted.root.subject:
        return False
    if not same_public_key(cert, trusted.root):
        return False
    try:
        cert.verify_directly_issued_by(anchor)
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if not bc.ca or bc.path_length != CROSS_PATH_LENGTH:
        return False
    if sorted(permitted_uri_domains(cert) or []) != sorted(trusted.trust_domains):
        return False
    if cert.not_valid_after_utc > trusted.root.not_valid_after_utc:
        return False
    return now < renewal_time(cert, RENEW_AT)


def _prune(folder: Path, keep: set[str]) -> None:
    """Remove the cross-certificates of roots no longer trusted."""
    if not folder.is_dir():
        return
    for path in folder.glob("*.pem"):
        if path.name not in keep:
            path.unlink()
