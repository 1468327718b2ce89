"""Gather each mesh's PEM material for the Istio renderer from the PKI."""

from __future__ import annotations

from pathlib import Path

from meshfed.pki import PKIMaterial
from meshfed.pki.anchor import TrustedRoot, ensure_anchor
from meshfed.pki.certs import cert_to_pem, certs_to_pem, load_certs_pem
from meshfed.pki.keys import key_to_pem
from meshfed.pki.leaves import ensure_leaf
from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.plan.names import INGRESS_GATEWAY
from meshfed.render.istio.trust import MeshCredentials


def mesh_credentials(
    state_dir: Path, plan: FederationPlan, mesh: MeshPlan, material: PKIMaterial
) -> MeshCredentials:
    ca = material.meshes[mesh.name]
    key, cert = ensure_leaf(
        state_dir,
        ca,
        INGRESS_GATEWAY,
        mesh.ingress.spiffe_id,
        plan.gateway_ttl,
        mesh.ingress.dns_names,
    )
    ingress_ca: str | None = None
    if plan.trust_mode == "Federated" and mesh.ingress.trusted:
        # Istio's gateway CA bundle cannot bind a root to a trust domain: cross-certify each
        # consumer root (both generations during its rotation) under the mesh's anchor.
        trusted = [
            TrustedRoot(root, bundle.trust_domains)
            for bundle in mesh.ingress.trusted
            for root in load_certs_pem(bundle.pem.encode(), f"trust bundle of {bundle.name}")
        ]
        anchor = ensure_anchor(state_dir, mesh.name, material.key_algorithm, trusted)
        ingress_ca = anchor.bundle_pem().decode()
    return MeshCredentials(
        ca_cert=cert_to_pem(ca.ca_cert).decode(),
        ca_key=key_to_pem(ca.ca_key).decode(),
        root_cert=certs_to_pem(ca.root_bundle).decode(),
        cert_chain=certs_to_pem(ca.chain).decode(),
        ingress_cert_chain=certs_to_pem([cert, ca.ca_cert]).decode(),
        ingress_key=key_to_pem(key).decode(),
        ingress_ca=ingress_ca,
    )
