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


def test_istio_principals_parse_back_to_the_match_istio_applies() -> None:
    assert spiffe.parse_istio_principal("w.t/ns/a/sa/b") == PrincipalMatch("spiffe://w.t/ns/a/sa/b")
    assert spiffe.parse_istio_principal("w.t/ns/a/*") == PrincipalMatch(
        "spiffe://w.t/ns/a/", prefix=True
    )
    # ``*`` (any identity) and a suffix are no PrincipalMatch: they name no trust domain.
    assert spiffe.parse_istio_principal("*") is None
    assert spiffe.parse_istio_principal("*/sa/admin") is None


@given(domains, st.lists(segments, max_size=4).map("/".join), st.booleans())
def test_istio_principal_form_round_trips(domain: str, path: str, prefix: bool) -> None:
    match = PrincipalMatch(spiffe.domain_prefix(domain) + path, prefix=prefix)
    assert spiffe.parse_istio_principal(spiffe.istio_principal(match)) == match


def test_how_far_a_match_reaches() -> None:
    web = "spiffe://web.test/"
    # A prefix short of the trust domain's '/' reaches other trust domains.
    for value in ("spiffe://web", "spiffe://web.test", "spiffe://"):
        match = PrincipalMatch(value, prefix=True)
        assert not match.within_one_domain and not match.covers_domain
        assert match.may_match_domain("web.test")
        assert match.matches("spiffe://web.testx/ns/a/sa/b")
    # Every workload of the domain: the domain, ``ns/``, or any prefix of ``ns/``.
    for value in (web, web + "n", web + "ns", web + "ns/"):
        match = PrincipalMatch(value, prefix=True)
        assert match.within_one_domain and match.covers_domain, value
    for value in (web + "ns/a/", web + "ns/a/sa/b"):
        assert not PrincipalMatch(value, prefix=True).covers_domain
    exact = PrincipalMatch(web + "ns/a/sa/b")
    assert exact.within_one_domain and not exact.covers_domain
    assert exact.may_match_domain("web.test") and not exact.may_match_domain("web")
    assert not PrincipalMatch(web + "ns/", prefix=True).may_match_domain("web.tes")


@given(domains, domains, paths, st.booleans(), st.integers(0, 60))
def test_may_match_domain_agrees_with_matching(
    domain: str, other: str, path: str, prefix: bool, cut: int
) -> None:
    identity = spiffe.domain_prefix(other) + path
    match = PrincipalMatch(identity[:cut] if prefix else identity, prefix=prefix)
    assert match.matches(identity) and match.may_match_domain(other)
    if not match.may_match_domain(domain):
        assert not match.matches(spiffe.domain_prefix(domain) + path)
    if match.within_one_domain:
        assert match.trust_domain == other


def test_completions_are_valid_ids_the_match_admits() -> None:
    exact = PrincipalMatch("spiffe://w.t/ns/a/sa/b")
    assert exact.completions("probe") == ("spiffe://w.t/ns/a/sa/b",)
    assert PrincipalMatch("spiffe://w.t/ns/a/", prefix=True).completions("probe") == (
        "spiffe://w.t/ns/a/probe",
        "spiffe://w.t/ns/a/sa/probe",
    )
    assert PrincipalMatch("spiffe://w.t/ns/a/sa/b", prefix=True).completions("p") == (
        "spiffe://w.t/ns/a/sa/b",
        "spiffe://w.t/ns/a/sa/bp",
        "spiffe://w.t/ns/a/sa/bsa/p",
    )


@given(domains, st.lists(segments, max_size=3).map("/".join), st.booleans(), segments)
def test_every_completion_matches(domain: str, path: str, prefix: bool, name: str) -> None:
    match = PrincipalMatch(spiffe.domain_prefix(domain) + path, prefix=prefix)
    for identity in match.completions(name):
        spiffe.validate_spiffe_id(identity)
        assert match.matches(identity)


def test_matches_within_matches() -> None:
    ns = spiffe.namespace_workloads("w.t", "meshfed-system")
    assert ns == PrincipalMatch("spiffe://w.t/ns/meshfed-system/", prefix=True)
    assert PrincipalMatch("spiffe://w.t/ns/meshfed-system/sa/p").within(ns)
    assert PrincipalMatch("spiffe://w.t/ns/meshfed-system/sa/", prefix=True).within(ns)
    assert not spiffe.whole_domain("w.t").within(ns)
    assert not PrincipalMatch("spiffe://w.t/ns/meshfed-systemx/sa/p").within(ns)
    exact = PrincipalMatch("spiffe://w.t/ns/a/sa/b")
    assert exact.within(exact) and not PrincipalMatch(exact.value, prefix=True).within(exact)
