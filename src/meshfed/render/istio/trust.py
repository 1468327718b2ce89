"""Trust material for Istio: the plug-in ``cacerts``, the ingress credential, the meshConfig.

These carry private keys (cacerts, ingress credential) and go to ``secrets/``, written 0600.
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


def mesh_config(plan: FederationPlan, mesh: MeshPlan) -> Obj:
    """An IstioOperator overlay (``istioctl install -f``) with the settings federation needs."""
    mesh_cfg: Obj = {
        "trustDomain": mesh.trust_domain,
        # Nothing leaves the mesh around the egress gateway: only registered hosts are
        # reachable, and imports are registered (ServiceEntry) to route through it.
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
        "defaultConfig": {
            "proxyMetadata": {
                # Local import names resolve through the sidecar's DNS proxy.
                "ISTIO_META_DNS_CAPTURE": "true",
                "ISTIO_META_DNS_AUTO_ALLOCATE": "true",
            }
        },
    }
    # Multi-root support in istiod: needed for caCertificates, and for a root rotation (a new
    # root in cacerts' root-cert.pem is taken live only with it, as a superset or subset of the
    # old bundle). On from the first install, so a root rotation never has to restart istiod.
    spec: Obj = {
        "meshConfig": mesh_cfg,
        "values": {"pilot": {"env": {"ISTIO_MULTIROOT_MESH": "true"}}},
    }
    if mesh.foreign_trust:
        # One entry per root: during a partner's root rotation its bundle holds two.
        mesh_cfg["caCertificates"] = [
            {"pem": pem, "trustDomains": list(b.trust_domains)}
            for b in mesh.foreign_trust
            for pem in b.roots
        ]
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": f"meshfed-{mesh.name}", "namespace": mesh.istio_namespace},
        "spec": spec,
    }
