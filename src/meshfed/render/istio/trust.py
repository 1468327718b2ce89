"""Trust material for Istio: the plug-in ``cacerts``, the ingress credential, the foreign roots
of the mesh config.

The Secrets carry private keys and go to ``secrets/``, written 0600; ``caCertificates`` goes
into the mesh settings (`meshfed.render.istio.install`).
"""

from __future__ import annotations

from meshfed.credentials import MeshCredentials
from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.plan.names import GATEWAY_NAMESPACE
from meshfed.render.istio.gateways import INGRESS_CREDENTIAL
from meshfed.render.istio.objects import Obj, b64, obj


def cacerts(plan: FederationPlan, mesh: MeshPlan, creds: MeshCredentials) -> Obj:
    """Istio's plug-in CA secret: istiod signs the mesh's workloads with this intermediate."""
    return obj(
        "v1",
        "Secret",
        "cacerts",
        plan.name,
        mesh.istio_namespace,
        type="Opaque",
        data={
            "ca-cert.pem": b64(creds.ca_cert),
            "ca-key.pem": b64(creds.ca_key),
            "root-cert.pem": b64(creds.root_cert),
            "cert-chain.pem": b64(creds.cert_chain),
        },
    )


def ingress_credential(plan: FederationPlan, mesh: MeshPlan, creds: MeshCredentials) -> Obj:
    """The ingress server certificate, and in ``ca.crt`` what vouches for allowed callers only
    (``creds.ingress_ca``: in Federated trust the federation anchor and the cross-certificates
    binding each consumer root to its trust domain; in SharedRoot the shared root)."""
    data = {"tls.crt": b64(creds.ingress_cert_chain), "tls.key": b64(creds.ingress_key)}
    if creds.ingress_ca is not None:  # nobody may call a mesh that exports nothing
        data["ca.crt"] = b64(creds.ingress_ca)
    return obj(
        "v1",
        "Secret",
        INGRESS_CREDENTIAL,
        plan.name,
        GATEWAY_NAMESPACE,
        type="kubernetes.io/tls",
        data=data,
    )


def ca_certificates(mesh: MeshPlan) -> list[Obj]:
    """``meshConfig.caCertificates``: the roots the mesh's sidecars trust beyond their own, each
    for its trust domains (Federated: the roots of the meshes it imports from). One entry per
    root: during a partner's root rotation its bundle holds two."""
    return [
        {"pem": pem, "trustDomains": list(b.trust_domains)}
        for b in mesh.foreign_trust
        for pem in b.roots
    ]
