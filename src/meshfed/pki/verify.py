"""Chain verification of SPIFFE leaves under name-constrained intermediates.

Two independent verifiers:

- `verify_chain`: in-process path validation. Signatures are checked by `cryptography`
  (`Certificate.verify_directly_issued_by`); the RFC 5280 rules our chains depend on are checked
  explicitly here: validity at `now`, BasicConstraints cA and pathLenConstraint, KeyUsage
  keyCertSign on CAs, leaf EKU, unknown critical extensions, and URI/DNS NameConstraints.
  `cryptography.x509.verification` (PolicyBuilder/ClientVerifier) cannot be used for these chains:
  it rejects every chain that contains a URI name constraint with "unsupported name constraint"
  (measured with cryptography 50; see tests/test_pki_verify.py, which fails once that changes).
- `openssl_verify`: `openssl verify -x509_strict` in a subprocess, for cross-checks in tests.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshfed.pki.certs import as_utc, cert_to_pem, certs_to_pem, describe, issued_by, spiffe_ids
from meshfed.pki.errors import PKIError

Purpose = Literal["client", "server"]

MAX_DEPTH = 6
MIN_RSA_BITS = 2048
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
# Extensions whose semantics verify_chain applies (or that carry no constraint), so they may be
# critical. Any other critical extension fails verification (RFC 5280 6.1.4 (o)).
_HANDLED = (
    x509.BasicConstraints,
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
    x509.SubjectAlternativeName,
    x509.NameConstraints,
    x509.SubjectKeyIdentifier,
    x509.AuthorityKeyIdentifier,
)
_FIX = "issue the certificate from the mesh's own intermediate CA, or trust the right root"


class _Invalid(Exception):
    """One candidate path failed; the message says why."""


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
    spiffe_id: str | None = None,
    *,
    purpose: Purpose = "client",
) -> None:
    """Verify that `leaf` chains through `intermediates` to one of `roots` at time `now`.

    The leaf must be an X.509-SVID (exactly one spiffe:// URI SAN, equal to `spiffe_id` if given)
    with EKU clientAuth (or serverAuth for purpose="server"). Raises PKIError with the reason.
    """
    if not roots:
        raise PKIError(describe(leaf), "no trusted roots given", "pass the roots to verify against")
    now = as_utc(now)
    errors: list[str] = []
    for path in _candidate_paths(leaf, list(intermediates), list(roots)):
        try:
            _validate_path(path, now, purpose)
        except _Invalid as exc:
            errors.append(str(exc))
            continue
        _check_svid(leaf, spiffe_id)
        return
    reason = errors[0] if errors else "no path to a trusted root (unknown issuer or bad signature)"
    raise PKIError(describe(leaf), f"chain verification failed: {reason}", _FIX)


def _candidate_paths(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: list[x509.Certificate],
) -> list[list[x509.Certificate]]:
    """All signature-valid paths leaf -> ... -> root (a trust anchor), shortest first."""
    found: list[list[x509.Certificate]] = []

    def walk(path: list[x509.Certificate]) -> None:
        tip = path[-1]
        for root in roots:
            if issued_by(tip, root):
                found.append([*path, root])
        if len(path) >= MAX_DEPTH:
            return
        for cand in intermediates:
            if any(cand == p for p in path) or any(cand == r for r in roots):
                continue
            if issued_by(tip, cand):
                walk([*path, cand])

    if any(leaf == r for r in roots):
        raise PKIError(describe(leaf), "the leaf is itself a trusted root", _FIX)
    walk([leaf])
    found.sort(key=len)
    return found


def _validate_path(path: list[x509.Certificate], now: datetime, purpose: Purpose) -> None:
    for cert in path:
        _check_basic(cert, now)
    _check_leaf(path[0], purpose)
    for depth, ca in enumerate(path[1:], start=1):
        _check_ca(ca, cas_below=depth - 1)
        _check_name_constraints(ca, path[:depth])


def _check_basic(cert: x509.Certificate, now: datetime) -> None:
    who = describe(cert)
    if cert.version != x509.Version.v3:
        raise _Invalid(f"{who} is not an X.509 v3 certificate")
    if now < cert.not_valid_before_utc:
        raise _Invalid(f"{who} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise _Invalid(f"{who} expired at {cert.not_valid_after_utc.isoformat()}")
    for ext in cert.extensions:
        if ext.critical and not isinstance(ext.value, _HANDLED):
            raise _Invalid(f"{who} has an unhandled critical extension {ext.oid.dotted_string}")
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise _Invalid(f"{who} has a {key.key_size}-bit RSA key (minimum {MIN_RSA_BITS})")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _EC_CURVES):
            raise _Invalid(f"{who} uses unsupported curve {key.curve.name}")
    else:
        raise _Invalid(f"{who} has an unsupported key type {type(key).__name__}")


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_leaf(leaf: x509.Certificate, purpose: Purpose) -> None:
    who = describe(leaf)
    bc = _ext(leaf, x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        raise _Invalid(f"{who} is a CA certificate, not a leaf")
    ku = _ext(leaf, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.digital_signature:
        raise _Invalid(f"{who} lacks KeyUsage digitalSignature")
    wanted = (
        ExtendedKeyUsageOID.CLIENT_AUTH if purpose == "client" else ExtendedKeyUsageOID.SERVER_AUTH
    )
    eku = _ext(leaf, x509.ExtendedKeyUsage)
    if not isinstance(eku, x509.ExtendedKeyUsage) or wanted not in list(eku):
        raise _Invalid(f"{who} lacks ExtendedKeyUsage {purpose}Auth")


def _check_ca(ca: x509.Certificate, cas_below: int) -> None:
    who = describe(ca)
    bc = _ext(ca, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise _Invalid(f"{who} issued a certificate but is not a CA (BasicConstraints cA)")
    if bc.path_length is not None and cas_below > bc.path_length:
        raise _Invalid(
            f"{who} has pathLenConstraint {bc.path_length} but {cas_below} CA certificate(s) "
            "follow it in the chain"
        )
    ku = _ext(ca, x509.KeyUsage)
    if not isinstance(ku, x509.KeyUsage) or not ku.key_cert_sign:
        raise _Invalid(f"{who} lacks KeyUsage keyCertSign")


def _check_name_constraints(ca: x509.Certificate, below: list[x509.Certificate]) -> None:
    nc = _ext(ca, x509.NameConstraints)
    if not isinstance(nc, x509.NameConstraints):
        return
    who = describe(ca)
    subtrees = [*(nc.permitted_subtrees or ()), *(nc.excluded_subtrees or ())]
    for tree in subtrees:
        if not isinstance(tree, x509.UniformResourceIdentifier | x509.DNSName):
            # Fail closed on constraint kinds this verifier does not evaluate.
            raise _Invalid(f"{who} has an unsupported name constraint {tree!r}")
    for cert in below:
        san = _ext(cert, x509.SubjectAlternativeName)
        names = list(san) if isinstance(san, x509.SubjectAlternativeName) else []
        for kind, host_of, match in (
            (x509.UniformResourceIdentifier, _uri_host, _uri_matches),
            (x509.DNSName, _dns_host, _dns_matches),
        ):
            permitted = [t.value for t in nc.permitted_subtrees or () if isinstance(t, kind)]
            excluded = [t.value for t in nc.excluded_subtrees or () if isinstance(t, kind)]
            for name in names:
                if not isinstance(name, kind):
                    continue
                host = host_of(name.value)
                if host is None:
                    if permitted or excluded:
                        raise _Invalid(f"{describe(cert)}: name {name.value!r} has no host")
                    continue
                if permitted and not any(match(host, p) for p in permitted):
                    raise _Invalid(
                        f"name constraint violated: {name.value!r} of {describe(cert)} is not "
                        f"within the permitted {', '.join(permitted)} of {who}"
                    )
                if any(match(host, e) for e in excluded):
                    raise _Invalid(
                        f"name constraint violated: {name.value!r} of {describe(cert)} is "
                        f"excluded by {who}"
                    )


def _uri_host(uri: str) -> str | None:
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    return host or None


def _dns_host(name: str) -> str | None:
    return name.lower().rstrip(".") or None


def _uri_matches(host: str, constraint: str) -> bool:
    """RFC 5280 4.2.1.10: a URI constraint is a host, or (leading '.') any host within a domain."""
    c = constraint.lower()
    return host.endswith(c) if c.startswith(".") else host == c


def _dns_matches(host: str, constraint: str) -> bool:
    """RFC 5280 4.2.1.10: the name itself or any name with labels added on the left."""
    c = constraint.lower().rstrip(".")
    if not c:
        return True
    if c.startswith("."):
        return host.endswith(c)
    return host == c or host.endswith("." + c)


def _check_svid(leaf: x509.Certificate, spiffe_id: str | None) -> None:
    ids = spiffe_ids(leaf)
    if len(ids) != 1:
        raise PKIError(
            describe(leaf),
            f"has {len(ids)} SPIFFE IDs; an X.509-SVID has exactly one URI SAN",
            "issue the certificate with exactly one spiffe:// URI SAN",
        )
    if spiffe_id is not None and ids[0] != spiffe_id:
        raise PKIError(
            describe(leaf),
            f"SPIFFE ID is {ids[0]}, expected {spiffe_id}",
            "issue a certificate for the expected identity",
        )


def openssl_verify(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
    spiffe_id: str | None = None,
    *,
    purpose: Purpose = "client",
    openssl: str = "openssl",
) -> None:
    """Verify with `openssl verify -x509_strict -purpose ssl<purpose>` at time `now`.

    Roots are the only trust anchors (no system store). Also checks the X.509-SVID SPIFFE ID
    like `verify_chain`. Raises PKIError with openssl's output, or if openssl is not installed.
    """
    exe = shutil.which(openssl)
    if exe is None:
        raise PKIError(openssl, "openssl executable not found", "install openssl")
    if not roots:
        raise PKIError(describe(leaf), "no trusted roots given", "pass the roots to verify against")
    with tempfile.TemporaryDirectory(prefix="meshfed-verify-") as tmp:
        d = Path(tmp)
        (d / "roots.pem").write_bytes(certs_to_pem(roots))
        (d / "leaf.pem").write_bytes(cert_to_pem(leaf))
        args = [exe, "verify", "-x509_strict", "-purpose", f"ssl{purpose}"]
        args += ["-attime", str(int(as_utc(now).timestamp()))]
        args += ["-CAfile", str(d / "roots.pem"), "-no-CApath", "-no-CAstore"]
        if intermediates:
            (d / "untrusted.pem").write_bytes(certs_to_pem(intermediates))
            args += ["-untrusted", str(d / "untrusted.pem")]
        args.append(str(d / "leaf.pem"))
        proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            out = " ".join((proc.stdout + proc.stderr).replace(str(d) + "/", "").split())
            raise PKIError(describe(leaf), f"openssl verify failed: {out}", _FIX)
    _check_svid(leaf, spiffe_id)
