"""Gather each mesh's PEM material for the Istio renderer from the PKI."""

from __future__ import annotations

from pathlib import Path

from meshfed.pki.certs import cert_to_pem, certs_to_pem
from meshfed.pki.keys import key_to_pem
from meshfed.pki.leaves import ensure_leaf
from meshfed.pki.store import PKIMaterial
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
    return MeshCredentials(
        ca_cert=cert_to_pem(ca.ca_cert).decode(),
        ca_key=key_to_pem(ca.ca_key).decode(),
        root_cert=certs_to_pem(ca.root_bundle).decode(),
        cert_chain=certs_to_pem(ca.chain).decode(),
        ingress_cert_chain=certs_to_pem([cert, ca.ca_cert]).decode(),
        ingress_key=key_to_pem(key).decode(),
    )
