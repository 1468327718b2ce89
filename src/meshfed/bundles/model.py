"""What a SPIFFE bundle holds, and where one is published: plain values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from meshfed.pki.certs import certs_to_pem, fingerprint

Profile = Literal["https_web", "https_spiffe"]
PROFILES: tuple[Profile, ...] = ("https_web", "https_spiffe")

DEFAULT_REFRESH_HINT = 300
"""Seconds; the SPIFFE Federation spec's recommended default when a bundle sets no hint."""


@dataclass(frozen=True)
class SpiffeBundle:
    """The trust bundle of one trust domain (SPIFFE Trust Domain and Bundle, section 4).

    ``x509_authorities`` are the CA certificates X509-SVIDs of the domain chain to, in the
    document's order. ``jwt_authorities`` are the ``jwt-svid`` JWKs as received (meshfed does not
    use them, but keeps them so a stored bundle says what the peer published).
    """

    trust_domain: str
    x509_authorities: tuple[x509.Certificate, ...]
    sequence: int | None = None
    refresh_hint: int | None = None
    """Seconds, as published (``spiffe_refresh_hint``)."""
    jwt_authorities: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @property
    def pem(self) -> str:
        return certs_to_pem(self.x509_authorities).decode()

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(fingerprint(c) for c in self.x509_authorities)

    def same_authorities(self, other: SpiffeBundle) -> bool:
        return sorted(self.fingerprints) == sorted(other.fingerprints)


@dataclass(frozen=True)
class Endpoint:
    """A bundle endpoint (SPIFFE Federation, section 5.1): where a trust domain's bundle is
    served and how a client authenticates it."""

    url: str
    profile: Profile
    spiffe_id: str | None = None
    """https_spiffe: the SPIFFE ID the endpoint's server certificate must carry."""


@dataclass(frozen=True)
class Bootstrap:
    """How the first bundle of a self-serving https_spiffe endpoint is authenticated: a bundle
    (or PEM roots) given by the operator, or the SHA-256 fingerprint of one of its roots. Never
    trust on first use."""

    file: Path | None = None
    """A SPIFFE bundle document or PEM CA certificates, read at the first fetch."""
    fingerprint: str | None = None
    roots: tuple[x509.Certificate, ...] = ()
    """Roots given directly (already checked)."""


@dataclass(frozen=True)
class FollowedPeer:
    """A peer trust domain whose bundle this state directory follows."""

    name: str
    """The peer mesh's name in the spec."""
    trust_domain: str
    endpoint: Endpoint
    followers: tuple[str, ...]
    """Local meshes that follow it."""
    bootstrap: Bootstrap | None = None


@dataclass(frozen=True)
class PublishedMesh:
    """A local mesh whose bundle this state directory serves."""

    name: str
    trust_domain: str
    endpoint: Endpoint
    refresh_hint: int
