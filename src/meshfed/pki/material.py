"""What the spec asks of the PKI, and what the PKI state holds: plain, checked values.

`TrustRequest` is independent of the spec model; `PKIMaterial` is what `PKIStore` loads (every
root and each mesh's Istio plug-in CA). Nothing here touches a file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from meshfed.pki.certs import issue_leaf
from meshfed.pki.keys import KEY_ALGORITHMS, KeyAlgorithm, PrivateKey, generate_key
from meshfed.pki.layout import SHARED_ROOT_NAME, TRUST_MODES, TrustMode
from meshfed.pki.record import Custody, RotationRecord
from meshfed.spiffe import spiffe_trust_domain, validate_trust_domain

_MESH_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshTrustRequest:
    mesh: str
    trust_domain: str


@dataclass(frozen=True)
class TrustRequest:
    """What the spec asks of the PKI, independent of the spec model."""

    federation: str
    mode: TrustMode
    key_algorithm: KeyAlgorithm
    root_ttl: timedelta
    intermediate_ttl: timedelta
    meshes: tuple[MeshTrustRequest, ...]
    #: (mesh, peer): `mesh` holds `peer`'s root bundle. Federated only; ignored for SharedRoot.
    peerings: tuple[tuple[str, str], ...] = ()

    def validate(self) -> None:
        """ValueError if the request is inconsistent (the spec checks should have caught it)."""
        if not self.federation.strip():
            raise ValueError("federation name must not be empty")
        if self.mode not in TRUST_MODES:
            raise ValueError(f"unknown trust mode {self.mode!r}")
        if self.key_algorithm not in KEY_ALGORITHMS:
            raise ValueError(f"unknown key algorithm {self.key_algorithm!r}")
        if self.root_ttl <= timedelta(0) or self.intermediate_ttl <= timedelta(0):
            raise ValueError("root_ttl and intermediate_ttl must be positive")
        names: set[str] = set()
        domains: set[str] = set()
        for m in self.meshes:
            if not _MESH_NAME.match(m.mesh) or m.mesh == SHARED_ROOT_NAME:
                raise ValueError(
                    f"invalid mesh name {m.mesh!r}: use a DNS label (a-z, 0-9, '-'), not 'root'"
                )
            validate_trust_domain(m.trust_domain)
            if m.mesh in names:
                raise ValueError(f"mesh {m.mesh!r} listed twice")
            if m.trust_domain in domains:
                raise ValueError(f"trust domain {m.trust_domain!r} used by two meshes")
            names.add(m.mesh)
            domains.add(m.trust_domain)
        for mesh, peer in self.peerings:
            if mesh not in names or peer not in names:
                raise ValueError(f"peering ({mesh!r}, {peer!r}) names a mesh not in the request")
            if mesh == peer:
                raise ValueError(f"peering ({mesh!r}, {peer!r}) pairs a mesh with itself")


# --- material ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshCA:
    """One mesh's Istio plug-in CA: intermediate certificate and key, and the roots it trusts."""

    mesh: str
    trust_domain: str
    key_algorithm: KeyAlgorithm
    root_name: str
    root_cert: x509.Certificate
    ca_cert: x509.Certificate
    ca_key: PrivateKey = field(repr=False)
    #: Istio's cert-chain.pem: the intermediate, then the root.
    chain: list[x509.Certificate]
    #: Federated: peer mesh name -> that mesh's root (pki/<mesh>/peers/<peer>.pem), as requested.
    peer_roots: dict[str, x509.Certificate] = field(default_factory=dict)
    #: root-cert.pem: the signing root, and during a rotation's overlap the other generation's
    #: too (old first, then new).
    trusted_roots: tuple[x509.Certificate, ...] = ()
    #: Federated: peer -> every root of that peer currently trusted (peers/<peer>.pem).
    peer_bundles: dict[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)

    @property
    def root_bundle(self) -> tuple[x509.Certificate, ...]:
        """The roots this mesh's own workloads trust (Istio's root-cert.pem)."""
        return self.trusted_roots or (self.root_cert,)

    def issue(
        self,
        spiffe_id: str,
        ttl: timedelta,
        now: datetime,
        dns_names: Sequence[str] = (),
    ) -> tuple[PrivateKey, x509.Certificate]:
        """A fresh key and a leaf for `spiffe_id` (must be in this mesh's trust domain)."""
        if spiffe_trust_domain(spiffe_id) != self.trust_domain:
            raise ValueError(
                f"{spiffe_id} is not in trust domain {self.trust_domain} of mesh {self.mesh}"
            )
        key = generate_key(self.key_algorithm)
        cert = issue_leaf(spiffe_id, key, self.ca_cert, self.ca_key, ttl, now, dns_names)
        return key, cert


@dataclass(frozen=True)
class PKIMaterial:
    federation: str
    mode: TrustMode
    key_algorithm: KeyAlgorithm
    #: root name ("root" for SharedRoot, the mesh name for Federated) -> root certificate
    roots: dict[str, x509.Certificate]
    meshes: dict[str, MeshCA]
    #: root name -> every root trusted in its place: the signing one, and during a rotation's
    #: overlap the other generation's too (old first, then new).
    trust_anchors: dict[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    custody: Custody = "local"
    rotation: RotationRecord | None = None

    def anchors(self, root_name: str) -> tuple[x509.Certificate, ...]:
        return self.trust_anchors.get(root_name) or (self.roots[root_name],)
