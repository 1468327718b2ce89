"""Credentials: the pipeline step beside the plan that issues what the plan says a mesh needs.

``(state, plan, PKI material) -> MeshCredentials`` per mesh: plain PEM text for the renderers to
write. This is the step with side effects on the state directory (the ingress gateway's server
certificate, `meshfed.pki.leaves`; in Federated trust the federation anchor and its
cross-certificates, `meshfed.pki.anchor`); renderers only read its result.

What goes into the ingress credential's ``ca.crt`` is the plan's decision
(`Ingress.trusted`, each bundle's ``cross_certify``); this step only carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from meshfed.pki import PKIMaterial, cert_to_pem, certs_to_pem, key_to_pem, load_certs_pem
from meshfed.pki.anchor import TrustedRoot, ensure_anchor
from meshfed.pki.leaves import ensure_leaf
from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.plan.names import INGRESS_GATEWAY

__all__ = ["NO_CREDENTIALS", "MeshCredentials", "issue_credentials", "mesh_credentials"]


@dataclass(frozen=True)
class MeshCredentials:
    """PEM material of one mesh, as the renderers write it."""

    ca_cert: str
    ca_key: str = field(repr=False)
    root_cert: str
    cert_chain: str
    ingress_cert_chain: str
    """The ingress gateway's server certificate followed by the mesh intermediate."""
    ingress_key: str = field(repr=False)
    ingress_ca: str | None = None
    """The ingress credential's ``ca.crt``: what vouches for the mesh's allowed callers (the
    federation anchor and its cross-certificates for bundles the plan marks ``cross_certify``,
    the roots themselves for the others). None: nobody may call the mesh, so no ``ca.crt``."""


NO_CREDENTIALS = MeshCredentials(
    ca_cert="", ca_key="", root_cert="", cert_chain="", ingress_cert_chain="", ingress_key=""
)
"""For rendering without trust material (the audit of what ``render`` would write): every
Secret is then empty, and nothing is issued."""


def _ingress_ca(state_dir: Path, mesh: MeshPlan, material: PKIMaterial) -> str | None:
    trusted = mesh.ingress.trusted
    if not trusted:
        return None
    crossed = [b for b in trusted if b.cross_certify]
    anchored = ""
    if crossed:
        # One cross-certificate per root (both generations during its rotation).
        roots = [
            TrustedRoot(root, bundle.trust_domains)
            for bundle in crossed
            for root in load_certs_pem(bundle.pem.encode(), f"trust bundle of {bundle.name}")
        ]
        anchor = ensure_anchor(state_dir, mesh.name, material.key_algorithm, roots)
        anchored = anchor.bundle_pem().decode()
    plain = "".join(b.pem for b in trusted if not b.cross_certify)
    return (anchored + plain) or None


def mesh_credentials(
    state_dir: Path, plan: FederationPlan, mesh: MeshPlan, material: PKIMaterial
) -> MeshCredentials:
    """Issue (or keep, while still good) what ``mesh`` needs, and return it as PEM."""
    ca = material.meshes[mesh.name]
    key, cert = ensure_leaf(
        state_dir,
        ca,
        INGRESS_GATEWAY,
        mesh.ingress.spiffe_id,
        plan.gateway_ttl,
        mesh.ingress.dns_names,
    )
    return MeshCredentials(
        ca_cert=cert_to_pem(ca.ca_cert).decode(),
        ca_key=key_to_pem(ca.ca_key).decode(),
        root_cert=certs_to_pem(ca.root_bundle).decode(),
        cert_chain=certs_to_pem(ca.chain).decode(),
        ingress_cert_chain=certs_to_pem([cert, ca.ca_cert]).decode(),
        ingress_key=key_to_pem(key).decode(),
        ingress_ca=_ingress_ca(state_dir, mesh, material),
    )


def issue_credentials(
    state_dir: Path, plan: FederationPlan, material: PKIMaterial
) -> dict[str, MeshCredentials]:
    """Every mesh's credentials, by mesh name, in the plan's order."""
    return {m.name: mesh_credentials(state_dir, plan, m, material) for m in plan.meshes}
