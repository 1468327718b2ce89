"""Split custody: intermediate keys stay with their mesh's admin, the root key with its holder.

    meshfed pki request --mesh M   key (0600) and CSR where the mesh is administered
    meshfed pki sign CSR           the root holder checks the CSR and signs it
    meshfed pki import CERT        the signed certificate goes back beside its key

The CSR asks for what meshfed would set anyway (CA, pathlen 0, a URI name constraint on the
mesh's trust domain); the signer only *checks* what it asks for and then sets every extension
itself (`certs.sign_intermediate_ca`): nothing of a request is copied into a certificate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meshfed.pki.certs import ORGANIZATION, intermediate_name
from meshfed.pki.errors import PKIError
from meshfed.pki.files import CERT_MODE, KEY_MODE, mkdir_private, read_bytes, write_atomic
from meshfed.pki.keys import KeyAlgorithm, PrivateKey, PublicKey, generate_key, key_algorithm
from meshfed.pki.keys import key_to_pem as _key_to_pem
from meshfed.spiffe import parse_trust_domain_id, trust_domain_id, validate_trust_domain

REQUEST_KEY = "ca-key.pem"
REQUEST_CSR = "request.csr"
REQUEST_META = "request.json"

_ALLOWED_EXTENSIONS = (
    x509.BasicConstraints,
    x509.NameConstraints,
    x509.SubjectAlternativeName,
    x509.KeyUsage,
    x509.SubjectKeyIdentifier,
)
_FIX = "make a new request with meshfed pki request --mesh MESH (it asks for exactly this)"


@dataclass(frozen=True)
class RequestMeta:
    """What a request was made for (kept beside its key; the CSR carries the same)."""

    mesh: str
    trust_domain: str
    federation: str
    mode: str
    key_algorithm: KeyAlgorithm
    created: str
    rotation: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "mesh": self.mesh,
            "trust_domain": self.trust_domain,
            "federation": self.federation,
            "mode": self.mode,
            "key_algorithm": self.key_algorithm,
            "created": self.created,
            "rotation": self.rotation,
        }


def make_csr(mesh: str, trust_domain: str, key: PrivateKey) -> x509.CertificateSigningRequest:
    """A CSR for mesh ``mesh``'s intermediate: CA, pathlen 0, constrained to ``trust_domain``."""
    validate_trust_domain(trust_domain)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, intermediate_name(mesh)),
        ]
    )
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(trust_domain_id(trust_domain))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def write_request(folder: Path, meta: RequestMeta) -> Path:
    """A new key (0600) and CSR in ``folder`` (created private); the CSR's path.

    An existing request there is kept (its key never replaced): the same CSR is returned.
    """
    csr_path = folder / REQUEST_CSR
    if (folder / REQUEST_KEY).is_file() and csr_path.is_file():
        return csr_path
    mkdir_private(folder)
    key = generate_key(meta.key_algorithm)
    csr = make_csr(meta.mesh, meta.trust_domain, key)
    write_atomic(folder / REQUEST_KEY, _key_to_pem(key), KEY_MODE)
    write_atomic(
        folder / REQUEST_META, (json.dumps(meta.to_json(), indent=2) + "\n").encode(), CERT_MODE
    )
    write_atomic(csr_path, csr.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return csr_path


def read_meta(folder: Path) -> RequestMeta:
    path = folder / REQUEST_META
    try:
        doc = json.loads(read_bytes(path))
        return RequestMeta(
            mesh=doc["mesh"],
            trust_domain=doc["trust_domain"],
            federation=doc["federation"],
            mode=doc["mode"],
            key_algorithm=doc["key_algorithm"],
            created=doc["created"],
            rotation=doc.get("rotation"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PKIError(path, f"is not a readable request record ({type(exc).__name__})") from None


def load_csr(data: bytes, source: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        try:
            return x509.load_der_x509_csr(data)
        except ValueError as exc:
            raise PKIError(source, f"is not a PEM or DER CSR ({exc})", _FIX) from None


@dataclass(frozen=True)
class CheckedRequest:
    mesh: str
    trust_domain: str
    public_key: PublicKey


def check_csr(
    csr: x509.CertificateSigningRequest,
    source: str,
    trust_domains: dict[str, str],
    key_alg: str,
    mesh: str | None = None,
) -> CheckedRequest:
    """Check what an intermediate CSR asks for; PKIError naming the first problem.

    ``trust_domains``: mesh -> trust domain, as the root holder knows them. The CSR must be
    self-signed by its key; ask for exactly one trust domain (a URI name constraint and/or a
    ``spiffe://<trust domain>`` URI SAN) that is ``mesh``'s (or a known mesh's); if it asks for
    BasicConstraints, a CA with pathlen 0; and for no extension meshfed does not set.
    """
    if not csr.is_signature_valid:
        raise PKIError(source, "the CSR's signature does not verify (not signed by its key)", _FIX)
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PKIError(source, f"unsupported key type {type(public_key).__name__}", _FIX)
    alg = key_algorithm(public_key)
    if alg != key_alg:
        raise PKIError(
            source, f"key algorithm is {alg or 'unsupported'}, the federation uses {key_alg}", _FIX
        )
    domains: set[str] = set()
    for ext in csr.extensions:
        value = ext.value
        if not isinstance(value, _ALLOWED_EXTENSIONS):
            raise PKIError(
                source,
                f"asks for extension {ext.oid.dotted_string} ({type(value).__name__}), which "
                "meshfed does not grant an intermediate",
                _FIX,
            )
        if isinstance(value, x509.BasicConstraints):
            if not value.ca:
                raise PKIError(source, "asks for CA:false; an intermediate is a CA", _FIX)
            if value.path_length is None:
                raise PKIError(
                    source, "asks for an unlimited path length; intermediates get pathlen 0", _FIX
                )
            if value.path_length != 0:
                raise PKIError(
                    source,
                    f"asks for pathlen {value.path_length}; intermediates get pathlen 0 "
                    "(they may sign only workloads)",
                    _FIX,
                )
        elif isinstance(value, x509.NameConstraints):
            if value.excluded_subtrees:
                raise PKIError(source, "asks for excluded name subtrees", _FIX)
            for tree in value.permitted_subtrees or ():
                if not isinstance(tree, x509.UniformResourceIdentifier):
                    raise PKIError(
                        source,
                        f"asks for a {type(tree).__name__} name constraint; only one URI "
                        "(the trust domain) is granted",
                        _FIX,
                    )
                domains.add(tree.value)
        elif isinstance(value, x509.SubjectAlternativeName):
            for name in value:
                uri = name.value if isinstance(name, x509.UniformResourceIdentifier) else None
                named = parse_trust_domain_id(uri) if uri is not None else None
                if named is None:
                    raise PKIError(
                        source,
                        f"asks for subject alternative name {name.value!r}; only "
                        "spiffe://<trust domain> is understood",
                        _FIX,
                    )
                domains.add(named)
    if not domains:
        raise PKIError(source, "names no trust domain to constrain the intermediate to", _FIX)
    if len(domains) > 1:
        raise PKIError(
            source,
            f"asks for {len(domains)} trust domains ({', '.join(sorted(domains))}); an "
            "intermediate is constrained to exactly one",
            _FIX,
        )
    (domain,) = domains
    try:
        validate_trust_domain(domain)
    except ValueError as exc:
        raise PKIError(source, str(exc), _FIX) from None
    if mesh is not None:
        if mesh not in trust_domains:
            raise PKIError(source, f"mesh {mesh} is unknown to this root", "check --mesh")
        if trust_domains[mesh] != domain:
            raise PKIError(
                source,
                f"asks for trust domain {domain}, but mesh {mesh} has {trust_domains[mesh]}",
                "a mesh's intermediate may only be constrained to its own trust domain",
            )
    else:
        owners = [m for m, td in trust_domains.items() if td == domain]
        if not owners:
            raise PKIError(
                source,
                f"asks for trust domain {domain}, which is no mesh's under this root "
                f"(known: {', '.join(sorted(trust_domains.values())) or 'none'})",
                "a mesh's intermediate may only be constrained to its own trust domain",
            )
        mesh = owners[0]
    return CheckedRequest(mesh, domain, public_key)


def parse_bundle(data: bytes, source: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(intermediate, root) of what ``pki sign`` wrote: the intermediate, then its root."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PKIError(source, f"is not a PEM certificate bundle ({exc})") from None
    if len(certs) < 2:
        raise PKIError(
            source,
            f"holds {len(certs)} certificate(s); expected the intermediate and its root",
            "use the file meshfed pki sign wrote",
        )
    intermediate = certs[0]
    for cand in certs[1:]:
        if cand.subject != cand.issuer:
            continue
        try:
            intermediate.verify_directly_issued_by(cand)
            cand.verify_directly_issued_by(cand)
        except Exception:
            continue
        return intermediate, cand
    raise PKIError(source, "holds no self-signed root that signed the intermediate")


def utcnow() -> datetime:
    return datetime.now(UTC)
