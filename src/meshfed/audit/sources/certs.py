"""Certificates and private-key files the audit looks at.

From a meshfed state directory (``STATE/pki/``), and from Secrets in manifests: Istio's plug-in
``cacerts`` (``ca-cert.pem``, ``root-cert.pem``, ``cert-chain.pem``), ``kubernetes.io/tls``
credentials (``tls.crt``, ``ca.crt``) and Istio's generic credential format (``cert``,
``cacert``): any Secret value holding a PEM certificate.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshfed.audit.model import Location
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import as_dict
from meshfed.pki.certs import fingerprint

Role = Literal["root", "intermediate", "leaf"]
_CERT = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = "PRIVATE KEY-----"

# State files in the order a certificate is best reported from (the others repeat it).
_STATE_PREFERENCE = ("ca-cert.pem", "root-cert.pem", "cert-chain.pem")


@dataclass(frozen=True)
class CertRecord:
    cert: x509.Certificate
    location: Location
    scope: str
    """The mesh (state) or scope (manifests) it belongs to; ``root`` for a shared root."""

    @property
    def role(self) -> Role:
        return cert_role(self.cert)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string() or "(empty subject)"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def cert_role(cert: x509.Certificate) -> Role:
    if not _is_ca(cert):
        return "leaf"
    return "root" if _self_signed(cert) else "intermediate"


def _parse(data: bytes) -> list[x509.Certificate]:
    if _CERT not in data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def _dedupe(records: Iterable[CertRecord]) -> list[CertRecord]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in records:
        key = (r.scope, fingerprint(r.cert))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


# --- state directory ----------------------------------------------------------------------------


def _state_rank(path: Path) -> tuple[int, str]:
    if path.parent.name == "peers":
        return (len(_STATE_PREFERENCE) + 1, str(path))
    if path.name in _STATE_PREFERENCE:
        return (_STATE_PREFERENCE.index(path.name), str(path))
    return (len(_STATE_PREFERENCE), str(path))


def _state_scope(pki: Path, path: Path) -> str:
    return path.relative_to(pki).parts[0] if len(path.relative_to(pki).parts) > 1 else "root"


def state_pem_files(state_dir: Path) -> list[Path]:
    pki = state_dir / "pki"
    if not pki.is_dir():
        return []
    return sorted(p for p in pki.rglob("*.pem") if p.is_file() and not p.name.startswith("."))


def is_key_file(path: Path) -> bool:
    return "key" in path.name


def state_certificates(state_dir: Path) -> list[CertRecord]:
    """Every certificate under ``STATE/pki`` once per mesh, from the file that best names it."""
    pki = state_dir / "pki"
    records = []
    files = [p for p in state_pem_files(state_dir) if not is_key_file(p)]
    for path in sorted(files, key=_state_rank):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for cert in _parse(data):
            records.append(
                CertRecord(
                    cert, Location(file=str(path), detail=path.name), _state_scope(pki, path)
                )
            )
    return _dedupe(records)


# --- Secrets in manifests -----------------------------------------------------------------------


def secret_values(doc: Doc) -> list[tuple[str, str, str]]:
    """(field, key, decoded text) of a Secret's ``data`` (base64) and ``stringData``."""
    out = []
    for key, value in as_dict(doc.get("data")).items():
        if not isinstance(value, str):
            continue
        try:
            text = base64.b64decode(value, validate=False).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            continue
        out.append(("data", str(key), text))
    for key, value in as_dict(doc.get("stringData")).items():
        if isinstance(value, str):
            out.append(("stringData", str(key), value))
    return out


def holds_private_key(doc: Doc) -> bool:
    return doc.kind == "Secret" and any(_KEY_MARK in text for _, _, text in secret_values(doc))


def secret_certificates(docs: Iterable[Doc]) -> list[CertRecord]:
    records = []
    for doc in docs:
        if doc.kind != "Secret":
            continue
        for field, key, text in secret_values(doc):
            for cert in _parse(text.encode()):
                records.append(CertRecord(cert, doc.at(field, key, detail=key), doc.scope))
    return _dedupe(records)
