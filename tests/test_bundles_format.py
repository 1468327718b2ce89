"""The SPIFFE bundle format: what meshfed publishes parses with py-spiffe and looks like SPIRE's,
SPIRE's documents are accepted, and bad documents are refused with the peer named."""

from __future__ import annotations

import base64
import contextlib
import json
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.bundles import document
from meshfed.bundles.errors import BundleError
from meshfed.bundles.model import SpiffeBundle
from meshfed.bundles.state import PeerBundles, publish
from meshfed.pki.certs import fingerprint, make_root_ca
from meshfed.pki.keys import generate_key

NOW = datetime.now(UTC)


def ca(
    td: str | None = "globex.example",
    *,
    is_ca: bool = True,
    days: int = 30,
    start: datetime | None = None,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    permitted: str | None = None,
) -> x509.Certificate:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
    start = start or NOW - timedelta(minutes=5)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if td is not None:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{td}")]),
            critical=False,
        )
    if permitted is not None:
        b = b.add_extension(
            x509.NameConstraints([x509.UniformResourceIdentifier(permitted)], None), critical=True
        )
    return b.sign(key, hashes.SHA256())


def der64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def test_published_bundle_is_spires_format_and_parses_with_py_spiffe() -> None:
    roots = (make_root_ca("a", generate_key("ECDSA_P256"), timedelta(days=1), NOW),
             make_root_ca("b", generate_key("RSA_2048"), timedelta(days=1), NOW))  # fmt: skip
    raw = document.encode(SpiffeBundle("acme.example", roots, 7, 300))
    doc = json.loads(raw)
    # SPIRE's documented layout: keys, then spiffe_sequence, then spiffe_refresh_hint; each
    # x509-svid key: use, kty, key parameters, x5c with one certificate; no kid.
    assert list(doc) == ["keys", "spiffe_sequence", "spiffe_refresh_hint"]
    assert list(doc["keys"][0]) == ["use", "kty", "crv", "x", "y", "x5c"]
    assert list(doc["keys"][1]) == ["use", "kty", "n", "e", "x5c"]
    assert doc["spiffe_sequence"] == 7 and doc["spiffe_refresh_hint"] == 300
    assert all(k["use"] == "x509-svid" and len(k["x5c"]) == 1 for k in doc["keys"])
    # py-spiffe reads every x5c as the X.509 authorities of the trust domain...
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from spiffe import JwtBundle, TrustDomain, X509Bundle
    td = TrustDomain("acme.example")
    got = set()
    for key in doc["keys"]:
        got |= X509Bundle.parse_raw(td, base64.b64decode(key["x5c"][0])).x509_authorities
    assert got == set(roots)
    # ... and the JWK key parameters are the certificates' keys (PyJWT via py-spiffe's JWKS
    # reader needs a kid, which x509-svid keys must not have: check through PyJWT directly).
    from jwt.api_jwk import PyJWK

    for key, root in zip(doc["keys"], roots, strict=True):
        public = PyJWK({k: v for k, v in key.items() if k != "use"}).key
        fmt = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        assert public.public_bytes(der, fmt) == root.public_key().public_bytes(der, fmt)
    assert JwtBundle  # imported: py-spiffe's bundle API is what interop means here
    # And meshfed reads its own document back.
    back = document.parse(raw, "acme.example", NOW, "acme")
    assert back == SpiffeBundle("acme.example", roots, 7, 300)


def test_spire_bundle_with_jwt_keys_is_accepted() -> None:
    root = ca("globex.example")
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    jwt_key = {
        "use": "jwt-svid",
        "kty": "EC",
        "kid": "IRsID4VIM3T11TsK43Ny1DgCD5UNWhva",
        "crv": "P-256",
        "x": base64.urlsafe_b64encode(ec_key.x.to_bytes(32, "big")).rstrip(b"=").decode(),
        "y": base64.urlsafe_b64encode(ec_key.y.to_bytes(32, "big")).rstrip(b"=").decode(),
    }
    x509_key = document.jwk(root)
    # As `spire-server bundle show -format spiffe` prints it (4-space indent, SPIRE's order).
    spire = json.dumps(
        {"keys": [x509_key, jwt_key], "spiffe_sequence": 3, "spiffe_refresh_hint": 300}, indent=4
    ).encode()
    got = document.parse(spire, "globex.example", NOW, "globex")
    assert got.x509_authorities == (root,)
    assert got.sequence == 3 and got.refresh_hint == 300
    assert got.jwt_authorities == (jwt_key,)
    # Without sequence or hint (both optional), and unknown uses/types ignored.
    minimal = json.dumps(
        {"keys": [x509_key, {"use": "x509-svid", "kty": "oct", "k": "AA"}, {"kty": "EC"}]}
    ).encode()
    assert document.parse(minimal, "globex.example", NOW, "globex").x509_authorities == (root,)


def refused(raw: bytes | str, td: str = "globex.example") -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    with pytest.raises(BundleError) as info:
        document.parse(data, td, NOW, "globex")
    assert info.value.source == "globex"
    return str(info.value)


def bundle_of(*keys: dict[str, object], **extra: object) -> str:
    return json.dumps({"keys": list(keys), **extra})


def test_bad_documents_are_refused_naming_the_peer() -> None:
    good = document.jwk(ca())
    assert "not a JSON document" in refused("<html>oops</html>")
    assert "not UTF-8" in refused(b"\xff\xfe{}")
    assert "not a JSON object" in refused("[]")
    assert "no 'keys' array" in refused('{"spiffe_sequence": 1}')
    assert "duplicate JSON key" in refused('{"keys": [], "keys": []}')
    assert "not an integer" in refused(bundle_of(good, spiffe_sequence="5"))
    assert "not an integer" in refused(bundle_of(good, spiffe_sequence=1.5))
    assert "not an integer" in refused(bundle_of(good, spiffe_refresh_hint=True))
    assert "outside" in refused(bundle_of(good, spiffe_sequence=-1))
    assert "outside" in refused(bundle_of(good, spiffe_refresh_hint=0))
    assert "not a JSON number" in refused('{"keys": [], "spiffe_sequence": NaN}')
    assert "over the" in refused(b'{"keys": [' + b" " * document.MAX_DOCUMENT_BYTES + b"]}")
    assert "not base64 DER" in refused(bundle_of({**good, "x5c": ["%%%"]}))
    assert "x5c[0]" in refused(bundle_of({**good, "x5c": ["AAAA"]}))


def test_certificates_must_be_cas_of_that_trust_domain_valid_now() -> None:
    assert "not a CA" in refused(bundle_of(document.jwk(ca(is_ca=False))))
    assert "names trust domain 'acme.example'" in refused(
        bundle_of(document.jwk(ca("acme.example")))
    )
    # Read as a SPIFFE ID, not as a URL: a port, user or upper case is not the trust domain.
    for near in ("globex.example:443", "x@globex.example", "Globex.example"):
        assert f"names trust domain '{near}'" in refused(bundle_of(document.jwk(ca(near))))
    expired = ca(start=NOW - timedelta(days=40), days=30)
    assert "expired" in refused(bundle_of(document.jwk(expired)))
    constrained = ca(None, permitted="acme.example")
    assert "may only vouch for acme.example" in refused(bundle_of(document.jwk(constrained)))
    # A JWK whose key parameters are another key's: tampered.
    other = document.jwk(ca())
    mixed = {**document.jwk(ca()), "x": other["x"]}
    assert "not the key of its certificate" in refused(bundle_of(mixed))
    weak = ca(key=rsa.generate_private_key(65537, 1024))
    assert "1024-bit RSA" in refused(bundle_of(document.jwk(weak)))
    # The same root constrained to its own domain, and without any SAN, is fine.
    assert document.parse(bundle_of(document.jwk(ca(None, permitted="globex.example"))).encode(),
                          "globex.example", NOW, "globex").x509_authorities  # fmt: skip


def test_empty_keys_is_a_valid_bundle_that_revokes_everything() -> None:
    got = document.parse(b'{"keys": [], "spiffe_sequence": 9}', "globex.example", NOW, "globex")
    assert got.x509_authorities == () and got.sequence == 9


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(["keys", "use", "kty", "x5c", "spiffe_sequence", "crv", "x", "y"])
                | st.text(max_size=8),
                inner,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
def test_any_json_is_parsed_or_refused_with_a_bundle_error(doc: object) -> None:
    raw = json.dumps(doc).encode()
    try:
        got = document.parse(raw, "globex.example", NOW, "globex")
    except BundleError as exc:
        assert exc.source == "globex"
        return
    assert isinstance(got, SpiffeBundle)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_parsed_or_refused(raw: bytes) -> None:
    with contextlib.suppress(BundleError):
        document.parse(raw, "globex.example", NOW, "globex")


# --- state: sequences published, history kept --------------------------------------------------


def test_published_sequence_changes_exactly_when_content_does(tmp_path: Path) -> None:
    a, b = ca("acme.example"), ca("acme.example")
    first = publish(tmp_path, "acme", "acme.example", [a], 300)
    assert first.sequence == 1
    assert publish(tmp_path, "acme", "acme.example", [a], 300).sequence == 1
    assert publish(tmp_path, "acme", "acme.example", [a, b], 300).sequence == 2
    assert publish(tmp_path, "acme", "acme.example", [b], 300).sequence == 3
    assert publish(tmp_path, "acme", "acme.example", [b], 60).sequence == 4
    assert publish(tmp_path, "acme", "acme.example", [a], 60).sequence == 5  # never reused


def test_peer_history_refuses_sequences_going_backwards(tmp_path: Path) -> None:
    store = PeerBundles(tmp_path)
    r1, r2 = ca(), ca()
    b1 = SpiffeBundle("globex.example", (r1,), 1, 5)
    change = store.accept("globex", b1, document.encode(b1), "https://x/b", NOW)
    assert change.changed and change.added == (fingerprint(r1),)
    assert not store.accept("globex", b1, document.encode(b1), "https://x/b", NOW).changed
    b3 = SpiffeBundle("globex.example", (r1, r2), 3, 5)
    assert store.accept("globex", b3, document.encode(b3), "https://x/b", NOW).changed
    b2 = SpiffeBundle("globex.example", (r2,), 2, 5)
    with pytest.raises(BundleError, match="older than the kept 3"):
        store.accept("globex", b2, document.encode(b2), "https://x/b", NOW)
    same_seq = SpiffeBundle("globex.example", (r2,), 3, 5)
    with pytest.raises(BundleError, match="must have a new sequence"):
        store.accept("globex", same_seq, document.encode(same_seq), "https://x/b", NOW)
    kept = store.current("globex")
    assert kept is not None and kept.sequence == 3 and kept.x509_authorities == (r1, r2)
    assert [h["sequence"] for h in store.history("globex")] == [1, 3]
    assert sorted(p.name for p in (tmp_path / "bundles/peers/globex/history").iterdir()) == [
        "1.json",
        "2.json",
    ]
    b4 = SpiffeBundle("globex.example", (r2,), 4, 5)
    change = store.accept("globex", b4, document.encode(b4), "https://x/b", NOW)
    assert change.removed == (fingerprint(r1),) and change.previous_sequence == 3


def test_damaged_kept_bundle_is_an_error_not_a_silent_rebootstrap(tmp_path: Path) -> None:
    store = PeerBundles(tmp_path)
    b1 = SpiffeBundle("globex.example", (ca(),), 1, 5)
    store.accept("globex", b1, document.encode(b1), "https://x/b", NOW)
    (tmp_path / "bundles/peers/globex/current.pem").write_text("garbage")
    with pytest.raises(BundleError, match="damaged"):
        store.current("globex")
