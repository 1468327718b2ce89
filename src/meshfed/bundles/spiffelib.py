"""py-spiffe (the SPIFFE project's Python library), imported only where bundles are handled.

Importing ``spiffe`` loads its Workload API client (grpcio, protobuf): about 0.2 s, so no
command's start-up path imports this module; and it warns about DSA on import, which a user of
``meshfed trust`` should not see. Everything meshfed takes from py-spiffe goes through here.
"""

from __future__ import annotations

import warnings
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:
    from spiffe.bundle.x509_bundle.x509_bundle import X509Bundle


@cache
def _lib() -> tuple[ModuleType, ModuleType]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from spiffe.bundle.x509_bundle import x509_bundle
        from spiffe.spiffe_id import spiffe_id
    return spiffe_id, x509_bundle


def trust_domain(name: str) -> str:
    """``name`` checked and canonicalised as a SPIFFE trust domain (py-spiffe's rules); a
    ``spiffe://`` ID gives its trust domain. ValueError with py-spiffe's reason otherwise."""
    ids, _ = _lib()
    try:
        return str(ids.TrustDomain(name).name)
    except ids.TrustDomainError as exc:
        raise ValueError(str(exc)) from None


def spiffe_id(value: str) -> tuple[str, str]:
    """``(trust domain, path)`` of a SPIFFE ID checked by py-spiffe; ValueError otherwise."""
    ids, _ = _lib()
    try:
        parsed = ids.SpiffeId(value)
    except ids.SpiffeIdError as exc:
        raise ValueError(str(exc)) from None
    return str(parsed.trust_domain.name), str(parsed.path)


def parse_der_authority(domain: str, der: bytes) -> x509.Certificate:
    """One X.509 authority of ``domain`` from DER, parsed by py-spiffe (``X509Bundle.parse_raw``);
    ValueError with py-spiffe's reason when the bytes are not exactly one DER certificate."""
    ids, bundles = _lib()
    try:
        parsed: X509Bundle = bundles.X509Bundle.parse_raw(ids.TrustDomain(domain), der)
    except Exception as exc:  # py-spiffe wraps every parse failure in its own error types
        raise ValueError(str(exc)) from None
    found = list(parsed.x509_authorities)
    if len(found) != 1:
        raise ValueError(f"expected one certificate, found {len(found)}")
    return found[0]


def x509_bundle(domain: str, certs_pem: bytes) -> X509Bundle:
    """A py-spiffe ``X509Bundle`` of ``domain`` from PEM certificates (for interop checks and
    for callers that hand bundles on to py-spiffe APIs)."""
    ids, bundles = _lib()
    parsed: X509Bundle = bundles.X509Bundle.parse(ids.TrustDomain(domain), certs_pem)
    return parsed
