"""Ingress RBAC as Envoy's unified matcher (render/envoy/rbac.py): its shape, and that it decides
exactly what the plan allows, checked by evaluating the rendered matcher the way Envoy does for
every combination of caller, method and path below (Envoy itself runs it in
tests/test_local_authz.py and validates it here)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from meshfed.plan.model import AllowRule, IngressServer, PathMatch, Workload
from meshfed.render.envoy import rbac, render_local
from meshfed.render.envoy.ingress import tcp_caller_ca
from meshfed.render.envoy.tls import CALLER_CA
from meshfed.spec.headers import CALLER_HEADER
from meshfed.spec.paths import PathError, parse_path
from meshfed.spiffe import PrincipalMatch
from meshfed.workspace import open_workspace
from test_render_envoy import fake_layout, validate_with_envoy, walk

WEB = "spiffe://web.test/"
PARTNER = "spiffe://partner.test/"
OTHER = "spiffe://other.test/"


def exact(path: str) -> PrincipalMatch:
    return PrincipalMatch(path if path.startswith("spiffe://") else WEB + path)


def prefix(value: str) -> PrincipalMatch:
    return PrincipalMatch(value, prefix=True)


def server(*rules: AllowRule, protocol: str = "HTTP") -> IngressServer:
    workload = Workload(
        "pay", "cards", "tokenizer", "tokenizer", 8080, protocol,  # type: ignore[arg-type]
        "spiffe://pay.test/ns/cards/sa/tokenizer", "tokenizer.cards.svc.cluster.local",
    )  # fmt: skip
    return IngressServer("tokenizer.pay.test", "pay/tokenizer", workload, tuple(rules))


MANY = tuple(exact(f"ns/team{i}/sa/caller{i}") for i in range(30))
CHECKOUT = WEB + "ns/shop/sa/checkout"

# Several rules for one mesh (overlapping identities, different permissions), a prefix, a
# second consumer mesh, a rule on one path with a query in the matrix, a whole-mesh rule.
MIXED = server(
    AllowRule(
        "web",
        "web.test",
        (*MANY, exact(CHECKOUT), prefix(WEB + "ns/batch/")),
        ("POST", "GET"),
        (PathMatch("/v1/tokenize"), PathMatch("/v1/status/", prefix=True)),
    ),
    AllowRule("web", "web.test", (prefix(WEB + "ns/shop/"),), ("GET",), (PathMatch("/health"),)),
    AllowRule("web", "web.test", (exact("ns/ops/sa/admin"), exact(CHECKOUT)), ("DELETE",)),
    AllowRule("partner", "partner.test", (exact(PARTNER + "ns/ops/sa/robot"),)),
    AllowRule(
        "partner", "partner.test", (exact(PARTNER + "ns/ops/sa/other"),), (), (PathMatch("/q"),)
    ),
    AllowRule("other", "other.test", (prefix(OTHER),), ("PUT",), (PathMatch("/v1/", prefix=True),)),
)
ONE_RULE = server(
    AllowRule("web", "web.test", (*MANY, exact(CHECKOUT)), ("POST",), (PathMatch("/v1/tokenize"),))
)
ONE_PRINCIPAL = server(AllowRule("web", "web.test", (exact(CHECKOUT),)))
ONLY_PREFIXES = server(
    AllowRule("web", "web.test", (prefix(WEB + "ns/batch/"), prefix(WEB + "ns/jobs/sa/")), ("GET",))
)
TCP = server(
    AllowRule("web", "web.test", (*MANY, exact(CHECKOUT), prefix(WEB + "ns/batch/"))),
    AllowRule("partner", "partner.test", (prefix(PARTNER),)),
    protocol="TCP",
)
SERVERS = {
    "mixed": MIXED,
    "one-rule": ONE_RULE,
    "one-principal": ONE_PRINCIPAL,
    "only-prefixes": ONLY_PREFIXES,
    "tcp": TCP,
}

IDENTITIES = [
    CHECKOUT,
    WEB + "ns/shop/sa/catalog",
    WEB + "ns/team0/sa/caller0",
    WEB + "ns/team29/sa/caller29",
    WEB + "ns/team30/sa/caller30",
    WEB + "ns/batch/sa/nightly",
    WEB + "ns/batchx/sa/nightly",
    WEB + "ns/jobs/sa/x",
    WEB + "ns/ops/sa/admin",
    PARTNER + "ns/ops/sa/robot",
    PARTNER + "ns/ops/sa/other",
    OTHER + "ns/a/sa/b",
    "spiffe://web.test.evil/ns/shop/sa/checkout",
    "spiffe://web.test",
    CHECKOUT + "x",
    "",
]
CALLERS: list[list[str]] = [
    [],
    *([i] for i in IDENTITIES),
    [WEB + "ns/shop/sa/catalog", CHECKOUT],
    [CHECKOUT, WEB + "ns/shop/sa/catalog"],
    [PARTNER + "ns/ops/sa/robot", CHECKOUT],
    [CHECKOUT, CHECKOUT],
    [WEB + "ns/batch/sa/a", OTHER + "ns/a/sa/b"],
]
METHODS = ["GET", "POST", "DELETE", "PUT"]
PATHS = [
    "/v1/tokenize",
    "/v1/tokenize?card=1",
    "/v1/tokenize#top",
    "/v1/tokenize?",
    "/v1/tokenizer",
    "/v1/tokenize/",
    "/v1/status/queue?x=/v1/tokenize",
    "/v1/status",
    "/v1/status/",
    "/v1/",
    "/health",
    "/health?probe",
    "/healthz",
    "/q",
    "/q?x",
    "/",
]


# --- Envoy's matcher semantics, for what rbac.py renders -----------------------------------------


def _input(config: dict[str, Any], sans: list[str], headers: dict[str, str]) -> str | None:
    kind = config["typed_config"]["@type"]
    if kind == rbac.URI_SAN_INPUT:  # source/common/ssl/matching/inputs.h: joined with ","
        return ",".join(sans) if sans else None
    assert kind == rbac.HEADER_INPUT, kind
    return headers.get(config["typed_config"]["header_name"])


def _string(match: dict[str, Any], value: str | None) -> bool:
    if value is None:
        return False
    ((how, expected),) = match.items()
    if how == "exact":
        return bool(value == expected)
    if how == "prefix":
        return value.startswith(expected)
    if how == "safe_regex":  # the only regex rendered: a header with a value
        assert expected == {"google_re2": {}, "regex": "(?s).+"}, expected
        return value != ""
    assert how == "contains", how
    return expected in value


def _predicate(p: dict[str, Any], sans: list[str], headers: dict[str, str]) -> bool:
    if "single_predicate" in p:
        single = p["single_predicate"]
        return _string(single["value_match"], _input(single["input"], sans, headers))
    if "or_matcher" in p:
        assert len(p["or_matcher"]["predicate"]) >= 2
        return any(_predicate(q, sans, headers) for q in p["or_matcher"]["predicate"])
    assert len(p["and_matcher"]["predicate"]) >= 2
    return all(_predicate(q, sans, headers) for q in p["and_matcher"]["predicate"])


def _on_match(on: dict[str, Any], sans: list[str], headers: dict[str, str]) -> tuple[str, str]:
    if "action" in on:
        config = on["action"]["typed_config"]
        assert config["@type"] == rbac.ACTION and config["name"] == on["action"]["name"]
        return config["name"], config["action"]
    return evaluate(on["matcher"], sans, headers)


def evaluate(m: dict[str, Any], sans: list[str], headers: dict[str, str]) -> tuple[str, str]:
    """(action name, ALLOW/DENY). Every matcher rbac.py renders ends in an action: asserted."""
    assert "on_no_match" in m, "deny by default: every matcher has an on_no_match"
    if "matcher_list" in m:
        matchers = m["matcher_list"]["matchers"]
        assert matchers
        for entry in matchers:
            if _predicate(entry["predicate"], sans, headers):
                return _on_match(entry["on_match"], sans, headers)
        return _on_match(m["on_no_match"], sans, headers)
    tree = m["matcher_tree"]
    value = _input(tree["input"], sans, headers)
    if value is not None:
        if "exact_match_map" in tree:
            table = tree["exact_match_map"]["map"]
            if value in table:
                return _on_match(table[value], sans, headers)
        else:
            table = tree["prefix_match_map"]["map"]
            keys = [k for k in table if value.startswith(k)]
            if keys:
                return _on_match(table[max(keys, key=len)], sans, headers)
    return _on_match(m["on_no_match"], sans, headers)


def url_path(path: str) -> str:
    """RBAC ``url_path``: the path without query string and fragment."""
    for i, c in enumerate(path):
        if c in "?#":
            return path[:i]
    return path


def intended(srv: IngressServer, sans: list[str], method: str, path: str) -> bool:
    """The plan's decision, for a caller with exactly one URI SAN (an X.509 SVID)."""
    if len(sans) != 1:
        return False
    if srv.protocol == "TCP":
        return any(any(p.matches(sans[0]) for p in r.principals) for r in srv.allow)
    return srv.allows(sans[0], method, url_path(path))


def rendered_matcher(srv: IngressServer) -> dict[str, Any]:
    if srv.protocol == "HTTP":
        config = rbac.http_filter(srv)["typed_config"]
        assert config["@type"] == rbac.HTTP_RBAC
    else:  # in the export's tunnel, on the header the ingress set (render/envoy/tunnel.py)
        config = rbac.tunnel_config(srv, CALLER_HEADER)
        assert config["@type"] == rbac.HTTP_RBAC
    assert "rules" not in config
    matcher: dict[str, Any] = config["matcher"]
    return matcher


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_matcher_decides_exactly_what_the_plan_allows(name: str) -> None:
    srv = SERVERS[name]
    matcher = rendered_matcher(srv)
    allowed = 0
    for sans, method, path in itertools.product(CALLERS, METHODS, PATHS):
        headers = {":method": method, ":path": path}
        if sans:  # %DOWNSTREAM_PEER_URI_SAN%: every URI SAN, joined by ","; none: no header
            headers[CALLER_HEADER] = ",".join(sans)
        action, verdict = evaluate(matcher, sans, headers)
        want = intended(srv, sans, method, path)
        assert (verdict == "ALLOW") == want, (sans, method, path, action)
        allowed += want
        if verdict == "ALLOW":  # the log names the rule, as the `rules` form's policy ids did
            rule = srv.allow[int(action.rpartition("-")[2])]
            assert action == rbac.policy_id(rule, srv.allow.index(rule))
            assert srv.protocol == "TCP" or rule.allows(sans[0], method, url_path(path))
        elif len(sans) > 1:
            assert action == rbac.SEVERAL_URI_SANS
        else:
            assert action == rbac.DEFAULT_DENY
    assert allowed  # the grid exercises both outcomes


def test_every_caller_with_several_uri_sans_is_denied_first() -> None:
    guard = rendered_matcher(MIXED)["matcher_list"]["matchers"][0]
    assert guard["predicate"]["single_predicate"]["value_match"] == {"contains": ","}
    assert guard["predicate"]["single_predicate"]["input"]["typed_config"] == {
        "@type": rbac.URI_SAN_INPUT
    }
    assert guard["on_match"]["action"]["typed_config"]["action"] == "DENY"


def test_one_rule_checks_methods_and_paths_once_then_one_hash_lookup() -> None:
    body = rendered_matcher(ONE_RULE)["on_no_match"]["matcher"]
    domains = body["matcher_tree"]["prefix_match_map"]["map"]
    assert list(domains) == [WEB]
    branch = domains[WEB]["matcher"]["matcher_list"]["matchers"]
    assert len(branch) == 1
    identities = branch[0]["on_match"]["matcher"]["matcher_tree"]
    table = identities["exact_match_map"]["map"]
    assert sorted(table) == sorted(p.value for p in ONE_RULE.allow[0].principals)
    assert all(v == rbac._allow("web-0") for v in table.values())  # one action per identity
    # methods/paths appear once, not per identity
    text = json.dumps(rendered_matcher(ONE_RULE))
    assert text.count('"header_name": ":method"') == 1


def test_small_policies_use_the_matcher_too() -> None:
    # No threshold: `rules` would allow a second URI SAN to pass as the principal.
    matcher = rendered_matcher(ONE_PRINCIPAL)
    branch = matcher["on_no_match"]["matcher"]["matcher_tree"]["prefix_match_map"]["map"][WEB]
    assert branch["matcher"]["matcher_tree"]["exact_match_map"]["map"] == {
        CHECKOUT: rbac._allow("web-0")
    }


def test_exact_paths_allow_a_query_but_not_a_longer_path() -> None:
    predicates = [
        m["single_predicate"]["value_match"]
        for m in walk(rendered_matcher(ONE_RULE))
        if isinstance(m, dict)
        and m.get("single_predicate", {}).get("input", {}).get("name") == ":path"
    ]
    assert predicates == [
        {"exact": "/v1/tokenize"},
        {"prefix": "/v1/tokenize?"},
        {"prefix": "/v1/tokenize#"},
    ]


def test_a_path_that_could_match_nothing_is_never_planned() -> None:
    # Authorization compares the path without its query: the plan holds no such path, so the
    # renderer never has to decide what one would mean.
    for text in ("/a?b", "/a#b", "/a?*"):
        with pytest.raises(PathError, match="query or fragment"):
            parse_path(text)
    with pytest.raises(PathError):
        PathMatch("/a?b")


def test_a_principal_outside_the_rules_domain_or_with_a_comma_is_never_planned() -> None:
    for bad in (CHECKOUT + ",x", PARTNER + "ns/ops/sa/robot"):
        with pytest.raises(ValueError, match=r"is not an identity of web\.test"):
            AllowRule("web", "web.test", (exact(bad),))
    with pytest.raises(ValueError, match="names no principal"):
        AllowRule("web", "web.test", ())


# --- the real renderer, many principals, checked by Envoy ----------------------------------------


SPEC = """
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata: {name: big}
spec:
  trust: {mode: Federated, keyAlgorithm: ECDSA_P256}
  meshes:
    - name: pay
      trustDomain: pay.test
      ingress: {address: 127.0.0.1, port: 18443}
      workloads:
        - {name: tokenizer, namespace: cards, serviceAccount: tokenizer, port: 8080}
        - {name: ledger, namespace: cards, serviceAccount: ledger, port: 9000, protocol: TCP}
    - name: web
      trustDomain: web.test
      ingress: {address: 127.0.0.1, port: 18444}
      workloads: [{name: checkout, namespace: shop, serviceAccount: checkout, port: 8080}]
    - name: partner
      trustDomain: partner.test
      ingress: {address: 127.0.0.1, port: 18445}
      workloads: [{name: robot, namespace: ops, serviceAccount: robot, port: 8080}]
  exports:
    - name: tokenizer
      mesh: pay
      workload: cards/tokenizer
      consumers:
        - mesh: web
          principals: [PRINCIPALS, "ns/batch/*"]
          methods: [POST]
          paths: [/v1/tokenize]
        - {mesh: web, principals: ["ns/shop/*"], methods: [GET], paths: ["/v1/status/*"]}
        - {mesh: partner, principals: ["*"], methods: [GET]}
    - name: ledger
      mesh: pay
      workload: cards/ledger
      consumers: [{mesh: web, principals: [PRINCIPALS]}]
"""


def test_envoy_accepts_large_policies_and_tcp_chains_trust_only_their_consumers(
    tmp_path: Path,
) -> None:
    names = ", ".join(f"ns/team{i}/sa/caller{i}" for i in range(2000))
    spec = tmp_path / "big.yaml"
    spec.write_text(SPEC.replace("PRINCIPALS", names + ", ns/shop/sa/checkout"))
    ws = open_workspace(spec, tmp_path / "state")
    processes = {p.name: p for p in render_local(ws.plan, fake_layout(ws), tmp_path / "run")}
    ingress = processes["pay/ingress"]
    (ledger,) = [s for s in ws.plan.mesh("pay").ingress.servers if s.protocol == "TCP"]
    domains = {
        name: [t["name"] for t in v["custom_validator_config"]["typed_config"]["trust_domains"]]
        for name, v in ingress.trust.items()
    }
    assert domains[CALLER_CA] == ["partner.test", "web.test"]
    assert domains[tcp_caller_ca(ledger)] == ["web.test"]
    listener = ingress.listeners[0]  # then the TCP exports' tunnels (internal listeners)
    (chain,) = [c for c in listener["filter_chains"] if c["name"] == ledger.sni]
    validation = chain["transport_socket"]["typed_config"]["common_tls_context"][
        "combined_validation_context"
    ]
    assert validation["validation_context_sds_secret_config"]["name"] == tcp_caller_ca(ledger)
    validate_with_envoy(ws, tmp_path / "run", processes)
