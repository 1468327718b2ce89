"""PKI: keys, certificates, chain verification and the PKI state store (see docs/design.md).

The public face: what the spec asks of the PKI (`TrustRequest`), the store that keeps the CAs
(`PKIStore`) and what it hands out (`PKIMaterial`, `MeshCA`), and the pure certificate functions.
Modules of the package (layout, state, cafiles, anchor, leaves, rotation, custody, signing) are
for the pipeline's own steps.
"""

from meshfed.pki.certs import (
    cert_to_pem,
    certs_to_pem,
    fingerprint,
    issue_leaf,
    load_certs_pem,
    make_intermediate_ca,
    make_root_ca,
    spiffe_ids,
)
from meshfed.pki.errors import PKIError
from meshfed.pki.keys import KeyAlgorithm, PrivateKey, generate_key, key_to_pem, load_key_pem
from meshfed.pki.layout import TrustMode
from meshfed.pki.material import MeshCA, MeshTrustRequest, PKIMaterial, TrustRequest
from meshfed.pki.store import PKIStore
from meshfed.pki.verify import openssl_verify, verify_chain

__all__ = [
    "KeyAlgorithm",
    "MeshCA",
    "MeshTrustRequest",
    "PKIError",
    "PKIMaterial",
    "PKIStore",
    "PrivateKey",
    "TrustMode",
    "TrustRequest",
    "cert_to_pem",
    "certs_to_pem",
    "fingerprint",
    "generate_key",
    "issue_leaf",
    "key_to_pem",
    "load_certs_pem",
    "load_key_pem",
    "make_intermediate_ca",
    "make_root_ca",
    "openssl_verify",
    "spiffe_ids",
    "verify_chain",
]
