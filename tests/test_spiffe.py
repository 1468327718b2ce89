"""SPIFFE IDs, trust domains and Istio's principal form: the one module that parses them."""

from __future__ import annotations

import contextlib
import importlib.util
import string
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed import spiffe
from meshfed.spec.principals import parse_principal
from meshfed.spiffe import PrincipalMatch

DOMAIN_CHARS = string.ascii_lowercase + string.digits + ".-_"
SEGMENT_CHARS = string.ascii_letters + string.digits + ".-_"

domains = st.text(DOMAIN_CHARS, min_size=1, max_size=20).filter(lambda d: not d.startswith("."))
segments = st.text(SEGMENT_CHARS, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
paths = st.lists(segments, min_size=1, max_size=5).map("/".join)
anything = st.text(string.printable, max_size=40)


@given(domains, paths)
def test_a_standard_id_is_valid_and_splits_back(domain: str, path: str) -> None:
    identity = f"spiffe://{domain}/{path}"
    spiffe.validate_spiffe_id(identity)
    assert spiffe.split(identity) == (domain, path)
    assert spiffe.spiffe_trust_domain(identity) == domain
    assert spiffe.trust_domain_of(identity) == domain
    assert spiffe.relative_to(identity, domain) == path
    assert identity.startswith(spiffe.domain_prefix(domain))


@given(domains, segments, segments)
def test_workload_ids_are_istios_form(domain: str, ns: str, sa: str) -> None:
    identity = spiffe.workload_id(domain, ns, sa)
    assert identity == f"spiffe://{domain}/ns/{ns}/sa/{sa}"
    spiffe.validate_spiffe_id(identity)


@given(anything)
def test_validation_never_raises_anything_but_value_error(text: str) -> None:
    for check in (spiffe.validate_spiffe_id, spiffe.validate_trust_domain, spiffe.trust_domain_of):
        with contextlib.suppress(ValueError):
            check(text)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "web.test/ns/a/sa/b",
        "spiffe://web.test",
        "spiffe://web.test/",
        "spiffe://Web.test/ns/a",
        "spiffe://.web/ns/a",
        "spiffe://web.test/ns//a",
        "spiffe://web.test/ns/a/",
        "spiffe://web.test/ns/./a",
        "spiffe://web.test/ns/../a",
        "spiffe://web.test/ns/a?b",
        "spiffe://web.test/ns/a#b",
        "spiffe://web.test/ns/a%20b",
        "spiffe://web.test/ns/a b",
        "spiffe://web:80/ns/a",
    ],
)
def test_invalid_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        spiffe.validate_spiffe_id(bad)


def test_trust_domain_of_ids_and_prefixes() -> None:
    assert spiffe.trust_domain_of("spiffe://web.test/ns/shop/sa/checkout") == "web.test"
    assert spiffe.trust_domain_of("spiffe://web.test/") == "web.test"
    for bad in ("web.test/ns/a", "spiffe://web.test"):
        with pytest.raises(ValueError):
            spiffe.trust_domain_of(bad)


def test_trust_domain_ids() -> None:
    assert spiffe.trust_domain_id("web.test") == "spiffe://web.test"
    assert spiffe.parse_trust_domain_id("spiffe://web.test") == "web.test"
    assert spiffe.parse_trust_domain_id("spiffe://web.test/ns/a") is None
    assert spiffe.parse_trust_domain_id("https://web.test") is None


def test_istio_principal_form() -> None:
    assert spiffe.istio_principal(PrincipalMatch("spiffe://w.t/ns/a/sa/b")) == "w.t/ns/a/sa/b"
    assert spiffe.istio_principal(PrincipalMatch("spiffe://w.t/ns/a/", prefix=True)) == "w.t/ns/a/*"
    assert spiffe.istio_principal(spiffe.whole_domain("w.t")) == "w.t/*"


@given(domains, segments, segments)
def test_spec_principals_resolve_to_matches_of_the_consumer_domain(
    domain: str, ns: str, sa: str
) -> None:
    ns, sa = ns.lower().strip("._-") or "a", sa.lower().strip("._-") or "b"
    ns, sa = ns.replace("_", "-"), sa.replace("_", "-")
    for text in (f"ns/{ns}/sa/{sa}", f"spiffe://{domain}/ns/{ns}/sa/{sa}", f"ns/{ns}/*", "*"):
        match = parse_principal(text, domain)
        assert match.trust_domain == domain
        assert match.matches(spiffe.workload_id(domain, ns, sa))
        assert not match.matches(spiffe.workload_id(domain + "x", ns, sa))


@pytest.mark.skipif(
    importlib.util.find_spec("spiffe") is None,
    reason="py-spiffe (the SPIFFE project's library) is not installed: nothing to compare with",
)
@settings(max_examples=300)
@given(st.one_of(anything, st.builds(lambda d, p: f"spiffe://{d}/{p}", domains, paths)))
def test_agrees_with_py_spiffe(text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from spiffe import SpiffeId  # type: ignore[import-not-found]

    try:
        theirs = SpiffeId(text)
    except Exception:
        theirs = None
    try:
        spiffe.validate_spiffe_id(text)
        ours = True
    except ValueError:
        ours = False
    if ours:
        assert theirs is not None and str(theirs) == text
        assert str(theirs.trust_domain) == spiffe.spiffe_trust_domain(text)
    elif theirs is not None:
        # py-spiffe also takes what meshfed refuses on purpose: a bare trust domain (meshfed
        # names workloads only) and upper case (it lower-cases, meshfed asks for lower case).
        assert theirs.path == "" or text != str(theirs)
