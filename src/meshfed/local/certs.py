"""Workload and gateway certificates of the local Envoys, kept in their SDS file between runs.

The SDS file of secret ``default`` holds the chain (leaf + intermediate) and the key. A kept
certificate is reused while it still names the same SPIFFE ID, chains to the mesh's current
intermediate, matches its key and has more than a third of its lifetime left; otherwise a new
one is issued. Keys are never printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from meshfed.pki.certs import cert_to_pem, keys_match, spiffe_ids
from meshfed.pki.keys import key_to_pem
from meshfed.pki.store import MeshCA

RENEW_AT = 2 / 3
"""Fraction of a certificate's lifetime after which ``up`` issues a new one."""


@dataclass(frozen=True)
class Identity:
    chain_pem: str
    """Leaf, then the mesh's intermediate."""
    key_pem: str
    not_after: datetime
    issued: bool
    """True if issued by this run, False if kept from an earlier one."""


def kept_identity(sds_doc: Any) -> tuple[str, str] | None:
    """``(chain_pem, key_pem)`` of an SDS ``default`` file's content, or None if it has none."""
    try:
        secret = sds_doc["resources"][0]["tls_certificate"]
        chain = secret["certificate_chain"]["inline_string"]
        key = secret["private_key"]["inline_string"]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(chain, str) and isinstance(key, str):
        return chain, key
    return None


def _reusable(chain_pem: str, key_pem: str, ca: MeshCA, spiffe_id: str, now: datetime) -> bool:
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        return False
    leaf = certs[0]
    if len(certs) != 2 or certs[1] != ca.ca_cert or leaf.issuer != ca.ca_cert.subject:
        return False
    if not keys_match(key, leaf):  # type: ignore[arg-type]
        return False
    try:
        leaf.verify_directly_issued_by(ca.ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if spiffe_ids(leaf) != [spiffe_id]:
        return False
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    return now < start + (end - start) * RENEW_AT


def identity_for(
    ca: MeshCA, spiffe_id: str, ttl: Any, now: datetime, kept_sds: Any = None
) -> Identity:
    """The certificate of ``spiffe_id``: the one in ``kept_sds`` if still good, else a new one."""
    kept = kept_identity(kept_sds)
    if kept is not None and _reusable(*kept, ca, spiffe_id, now):
        leaf = x509.load_pem_x509_certificates(kept[0].encode())[0]
        return Identity(kept[0], kept[1], leaf.not_valid_after_utc, issued=False)
    key, cert = ca.issue(spiffe_id, ttl, now)
    chain = (cert_to_pem(cert) + cert_to_pem(ca.ca_cert)).decode()
    return Identity(chain, key_to_pem(key).decode(), cert.not_valid_after_utc, issued=True)
