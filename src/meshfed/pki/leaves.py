"""Leaf certificates meshfed keeps between runs (gateway server certificates).

A kept leaf is reused while it still matches what is asked (identity, names, issuing CA) and
has more than a third of its lifetime left; otherwise a new one replaces it. Leaves are not
trust anchors, so replacing one is safe and needs no operator decision.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshfed.pki.certs import cert_to_pem, keys_match, load_cert_pem, renewal_time, spiffe_ids
from meshfed.pki.errors import PKIError
from meshfed.pki.keys import PrivateKey, key_to_pem, load_key_pem
from meshfed.pki.material import MeshCA

RENEW_AT = 2 / 3
"""Fraction of a leaf's lifetime after which it is renewed."""


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def _fresh(
    cert: x509.Certificate,
    key: PrivateKey,
    ca: MeshCA,
    spiffe_id: str,
    dns_names: Sequence[str],
    now: datetime,
) -> bool:
    if not keys_match(key, cert) or cert.issuer != ca.ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca.ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if spiffe_ids(cert) != [spiffe_id] or sorted(_dns_names(cert)) != sorted(dns_names):
        return False
    return now < renewal_time(cert, RENEW_AT)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write; the file is created private (mkstemp: O_EXCL, 0600) before any byte."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_leaf(
    state_dir: Path,
    ca: MeshCA,
    name: str,
    spiffe_id: str,
    ttl: timedelta,
    dns_names: Sequence[str] = (),
    now: datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """The kept leaf ``name`` of mesh ``ca.mesh``, issued or renewed when needed."""
    now = now or datetime.now(UTC)
    folder = state_dir / "pki" / ca.mesh / "issued"
    cert_path, key_path = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    if cert_path.exists() and key_path.exists():
        try:
            cert = load_cert_pem(cert_path.read_bytes(), str(cert_path))
            key = load_key_pem(key_path.read_bytes(), str(key_path))
        except PKIError:
            pass  # an unreadable leaf is replaced: it is no trust anchor
        else:
            if _fresh(cert, key, ca, spiffe_id, dns_names, now):
                return key, cert
    key, cert = ca.issue(spiffe_id, ttl, now, dns_names)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    _write(key_path, key_to_pem(key), 0o600)
    _write(cert_path, cert_to_pem(cert), 0o644)
    return key, cert


def kept_leaf(state_dir: Path, mesh: str, name: str) -> x509.Certificate | None:
    """The kept leaf ``name`` of ``mesh``, if there is a readable one."""
    path = state_dir / "pki" / mesh / "issued" / f"{name}-cert.pem"
    try:
        return load_cert_pem(path.read_bytes(), str(path))
    except (OSError, PKIError):
        return None
