"""The SPIFFE bundle format: a JWK Set with ``spiffe_sequence`` and ``spiffe_refresh_hint``.

``encode`` writes what ``spire-server bundle show -format spiffe`` prints for an X.509-only
bundle (the same members in the same order: ``keys``, each ``use``/``kty``/key parameters/``x5c``,
then ``spiffe_sequence`` and ``spiffe_refresh_hint``). ``parse`` reads any SPIFFE bundle, SPIRE's
included (``jwt-svid`` keys are kept but not used), and refuses anything that is not exactly a
set of CA certificates for the trust domain asked for. The certificates themselves are parsed by
py-spiffe (``X509Bundle.parse_raw``), the trust domain checked by its ``TrustDomain``.

Rules (SPIFFE Trust Domain and Bundle 4, X509-SVID 6): ``keys`` must be present; a JWK with a
missing or unknown ``use`` or ``kty`` is ignored; an ``x509-svid`` JWK without ``x5c`` is
ignored, and of ``x5c`` only the first certificate counts. meshfed is stricter than the spec
where a bundle would otherwise put trust where it does not belong: every X.509 authority must be
a CA (BasicConstraints cA, keyCertSign), valid now, of a supported key type, its JWK key
parameters must be its certificate's key, and a certificate that names a trust domain (a
``spiffe://`` URI SAN, a URI name constraint) must name this one. Duplicate JSON keys, numbers
that are not integers, and documents over ``MAX_DOCUMENT_BYTES`` are refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshfed.bundles import spiffelib
from meshfed.bundles.errors import BundleError
from meshfed.bundles.model import SpiffeBundle
from meshfed.pki.certs import as_utc, describe, fingerprint, spiffe_ids
from meshfed.spiffe import split

MAX_DOCUMENT_BYTES = 1 << 20
"""A bundle of a few roots is a few kB; SPIRE's with JWT keys stays far below this."""
MAX_KEYS = 256
MAX_SEQUENCE = (1 << 64) - 1
MAX_REFRESH_HINT = 7 * 24 * 3600
X509_USE = "x509-svid"
JWT_USE = "jwt-svid"
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_MIN_RSA_BITS = 2048
_FIX_PEER = "ask the peer to publish a valid SPIFFE bundle; meshfed keeps its last good bundle"


# --- encoding ----------------------------------------------------------------------------------


def _b64url_uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(value.to_bytes(length, "big")).rstrip(b"=").decode()


def jwk(cert: x509.Certificate) -> dict[str, Any]:
    """The ``x509-svid`` JWK of a CA certificate, members in SPIRE's order."""
    key = cert.public_key()
    der = cert.public_bytes(serialization.Encoding.DER)
    x5c = [base64.b64encode(der).decode()]
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = next((n for n, c in _CURVES.items() if isinstance(key.curve, c)), None)
        if crv is None:
            raise ValueError(f"{describe(cert)}: curve {key.curve.name} has no JWK name")
        numbers = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        return {
            "use": X509_USE,
            "kty": "EC",
            "crv": crv,
            "x": _b64url_uint(numbers.x, size),
            "y": _b64url_uint(numbers.y, size),
            "x5c": x5c,
        }
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        return {
            "use": X509_USE,
            "kty": "RSA",
            "n": _b64url_uint(rsa_numbers.n),
            "e": _b64url_uint(rsa_numbers.e),
            "x5c": x5c,
        }
    raise ValueError(f"{describe(cert)}: unsupported key type {type(key).__name__}")


def encode(bundle: SpiffeBundle) -> bytes:
    """The bundle as a SPIFFE bundle document (UTF-8 JSON, 4-space indent as SPIRE prints)."""
    doc: dict[str, Any] = {
        "keys": [jwk(c) for c in bundle.x509_authorities] + list(bundle.jwt_authorities)
    }
    if bundle.sequence is not None:
        doc["spiffe_sequence"] = bundle.sequence
    if bundle.refresh_hint is not None:
        doc["spiffe_refresh_hint"] = bundle.refresh_hint
    return (json.dumps(doc, indent=4) + "\n").encode()


# --- parsing -----------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_json(data: bytes, source: str) -> dict[str, Any]:
    """The document as a JSON object; BundleError naming ``source`` otherwise."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise BundleError(
            source,
            f"the bundle document is {len(data)} bytes, over the {MAX_DOCUMENT_BYTES} allowed",
            _FIX_PEER,
        )
    try:
        text = data.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise BundleError(source, "the bundle document is not UTF-8", _FIX_PEER) from None
    except (ValueError, RecursionError) as exc:
        raise BundleError(source, f"not a JSON document ({exc})", _FIX_PEER) from None
    if not isinstance(doc, dict):
        raise BundleError(source, "the bundle document is not a JSON object", _FIX_PEER)
    return doc


def _integer(doc: dict[str, Any], name: str, low: int, high: int, source: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(source, f"{name} is {value!r}, not an integer", _FIX_PEER)
    if not low <= value <= high:
        raise BundleError(source, f"{name} {value} is outside {low}..{high}", _FIX_PEER)
    return value


def _b64url_int(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big")


def _key_matches(entry: dict[str, Any], cert: x509.Certificate) -> bool:
    """True if the JWK's own key parameters (when present) are the certificate's key."""
    key = cert.public_key()
    kty = entry.get("kty")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if kty != "EC":
            return False
        if "x" not in entry and "y" not in entry and "crv" not in entry:
            return True
        curve = _CURVES.get(entry.get("crv", ""))
        numbers = key.public_numbers()
        return (
            curve is not None
            and isinstance(key.curve, curve)
            and _b64url_int(entry.get("x")) == numbers.x
            and _b64url_int(entry.get("y")) == numbers.y
        )
    if isinstance(key, rsa.RSAPublicKey):
        if kty != "RSA":
            return False
        if "n" not in entry and "e" not in entry:
            return True
        rsa_numbers = key.public_numbers()
        return _b64url_int(entry.get("n")) == rsa_numbers.n and (
            _b64url_int(entry.get("e")) == rsa_numbers.e
        )
    return False


def check_authority(cert: x509.Certificate, trust_domain: str, now: datetime, source: str) -> None:
    """BundleError unless ``cert`` may stand as an X.509 authority of ``trust_domain`` now."""
    who = describe(cert)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise BundleError(
            source,
            f"{who} is not a CA certificate (no BasicConstraints cA); a bundle holds only the "
            "trust domain's CA certificates",
            _FIX_PEER,
        )
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.key_cert_sign:
        raise BundleError(source, f"{who} lacks KeyUsage keyCertSign: not a CA", _FIX_PEER)
    now = as_utc(now)
    if now > cert.not_valid_after_utc:
        raise BundleError(
            source,
            f"{who} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
            "ask the peer to remove expired CAs from its bundle; meshfed keeps its last good "
            "bundle",
        )
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise BundleError(source, f"{who} has a {key.key_size}-bit RSA key", _FIX_PEER)
    elif not (
        isinstance(key, ec.EllipticCurvePublicKey)
        and any(isinstance(key.curve, c) for c in _CURVES.values())
    ):
        raise BundleError(source, f"{who} has an unsupported key type", _FIX_PEER)
    for uri in spiffe_ids(cert):
        domain = split(uri)[0]
        if domain != trust_domain:
            raise BundleError(
                source,
                f"{who} names trust domain {domain!r} ({uri}), not {trust_domain!r}: a bundle "
                "holds only its own trust domain's CAs",
                "check that the endpoint URL is this peer's; " + _FIX_PEER,
            )
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        nc = None
    if nc is not None:
        permitted = [
            t.value
            for t in nc.permitted_subtrees or ()
            if isinstance(t, x509.UniformResourceIdentifier)
        ]
        if permitted and not any(
            trust_domain == p.lower() or (p.startswith(".") and trust_domain.endswith(p.lower()))
            for p in permitted
        ):
            raise BundleError(
                source,
                f"{who} may only vouch for {', '.join(permitted)}, not trust domain "
                f"{trust_domain!r}",
                _FIX_PEER,
            )


def parse(data: bytes, trust_domain: str, now: datetime, source: str) -> SpiffeBundle:
    """A SPIFFE bundle document of ``trust_domain``, checked (see the module docstring).

    ``source`` names the peer in every error. An empty ``keys`` array is a valid bundle: the
    trust domain revoked every key, and nothing of it is to be trusted any more.
    """
    try:
        domain = spiffelib.trust_domain(trust_domain)
    except ValueError as exc:
        raise BundleError(source, str(exc), "fix the peer's trustDomain in the spec") from None
    doc = load_json(data, source)
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise BundleError(source, "the bundle has no 'keys' array: not a SPIFFE bundle", _FIX_PEER)
    if len(keys) > MAX_KEYS:
        raise BundleError(source, f"the bundle has {len(keys)} keys, over {MAX_KEYS}", _FIX_PEER)
    sequence = _integer(doc, "spiffe_sequence", 0, MAX_SEQUENCE, source)
    hint = _integer(doc, "spiffe_refresh_hint", 1, MAX_REFRESH_HINT, source)
    certs: list[x509.Certificate] = []
    jwts: list[dict[str, Any]] = []
    for i, entry in enumerate(keys):
        if not isinstance(entry, dict):
            raise BundleError(source, f"keys[{i}] is not a JSON object", _FIX_PEER)
        use, kty = entry.get("use"), entry.get("kty")
        if not isinstance(kty, str) or kty not in ("EC", "RSA", "OKP"):
            continue  # unknown key type: ignored (SPIFFE bundle 4.2.1)
        if use == JWT_USE:
            jwts.append(entry)
            continue
        if use != X509_USE:
            continue  # missing or unknown use: ignored (4.2.2)
        x5c = entry.get("x5c")
        if not isinstance(x5c, list) or not x5c:
            continue  # X509-SVID 6.2: an entry without x5c is ignored
        first = x5c[0]
        try:
            der = base64.b64decode(first, validate=True) if isinstance(first, str) else b""
        except (binascii.Error, ValueError):
            der = b""
        if not der:
            raise BundleError(source, f"keys[{i}].x5c[0] is not base64 DER", _FIX_PEER)
        try:
            cert = spiffelib.parse_der_authority(domain, der)
        except ValueError as exc:
            raise BundleError(source, f"keys[{i}].x5c[0]: {exc}", _FIX_PEER) from None
        if not _key_matches(entry, cert):
            raise BundleError(
                source,
                f"keys[{i}]: its key parameters are not the key of its certificate "
                f"{describe(cert)}",
                _FIX_PEER,
            )
        check_authority(cert, domain, now, source)
        if all(fingerprint(cert) != fingerprint(c) for c in certs):
            certs.append(cert)
    return SpiffeBundle(domain, tuple(certs), sequence, hint, tuple(jwts))


def parse_bootstrap(data: bytes, trust_domain: str, now: datetime, source: str) -> SpiffeBundle:
    """An operator-supplied bundle: a SPIFFE bundle document, or PEM CA certificates."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise BundleError(source, f"not a readable PEM bundle ({exc})", None) from None
        for cert in certs:
            check_authority(cert, trust_domain, now, source)
        return SpiffeBundle(trust_domain, tuple(certs))
    return parse(data, trust_domain, now, source)
