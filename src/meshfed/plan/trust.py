"""What the spec asks of the PKI, and the roots the plan hands to components."""

from __future__ import annotations

from meshfed.pki import MeshTrustRequest, PKIMaterial, TrustRequest
from meshfed.pki.certs import certs_to_pem
from meshfed.plan.build import peerings
from meshfed.spec.model import Federation


def trust_request(fed: Federation) -> TrustRequest:
    trust = fed.spec.trust
    return TrustRequest(
        federation=fed.name,
        mode=trust.mode,
        key_algorithm=trust.key_algorithm,
        root_ttl=trust.ttl("root"),
        intermediate_ttl=trust.ttl("intermediate"),
        meshes=tuple(
            MeshTrustRequest(m.name, m.trust_domain) for m in fed.spec.meshes if not m.partner
        ),
        peerings=peerings(fed) if trust.mode == "Federated" else (),
    )


def root_pems(material: PKIMaterial) -> dict[str, str]:
    """Each mesh's trust anchor, as PEM, keyed by mesh name (what ``build_plan`` takes).

    Normally one root. During a rotation's overlap, both generations' roots (old, then new)
    concatenated: every trust bundle of the plan then carries both, with no special case.
    """
    return {
        name: certs_to_pem(material.anchors(ca.root_name)).decode()
        for name, ca in material.meshes.items()
    }
