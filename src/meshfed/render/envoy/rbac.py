"""Ingress authorization: the RBAC filter of each exported SNI, exactly as the plan allows.

Always rendered with Envoy's unified matcher (the RBAC filter's ``matcher`` field), never with
its ``rules`` form, for two reasons, both checked against Envoy 1.40:

- **Scale.** ``rules`` tries a policy's principals one by one for every request (HTTP) or
  connection (TCP): with 10,000 allowed principals the ingress's p99 rose x6.9 and its throughput
  fell to 6% (``bench/authz_scale.py``). The matcher finds the caller in a hash map.
- **Failing closed on several URI SANs.** ``authenticated.principal_name`` matches when *any* URI
  SAN of the client certificate matches, while Envoy's SPIFFE validator binds only the *first*
  URI SAN's trust domain to a root. A partner whose root an ingress trusts for the partner's own
  trust domain could therefore put one of its identities first and another mesh's allowed
  identity second, and be authorized as the latter (reproduced in
  ``tests/test_local_authz.py``). The matcher's URI SAN input (``UriSanInput``) joins all URI
  SANs of the certificate with ``,`` (Envoy ``source/common/ssl/matching/inputs.h``); the first
  thing the matcher does is deny such a caller: an X.509 SVID has exactly one URI SAN, and no
  SPIFFE ID contains a ``,``.

The matcher, deny by default (every level ends in DENY; Envoy also denies when nothing matched):

1. the URI SAN input contains ``,`` -> DENY ``several-uri-sans``;
2. a prefix map on the rules' ``AllowRule.id_prefix`` (``spiffe://<trust domain>/``; the plan
   says which domain each rule admits) -> that domain's branch; any other domain -> DENY
   ``default-deny``;
3. a domain's branch. Usually one rule (one consumer entry) names identities of a domain: its
   methods and paths first (HTTP), then an exact map of its identities, then its prefix
   identities (a short list) -> ALLOW. When several rules of one SNI name identities of the same
   domain, each identity in the exact map leads to the methods/paths of every rule that covers
   it (so the predicates repeat per identity: a larger config, still one hash lookup).

The caller's identity is the client certificate's URI SANs at an HTTP export's chain; elsewhere
it is a header the ingress itself set from them (``%DOWNSTREAM_PEER_URI_SAN%``, joined by ``,``
exactly as ``UriSanInput`` joins them, a caller's own copy removed first): in a TCP export's
tunnel, which decides before the workload is connected (`render/envoy/tunnel.py`), and in the
exported workload's sidecar (`sidecar_config`, `meshfed.plan.guard`). One matcher, three places.

ALLOW actions are named like the policies of the ``rules`` form (``<consumer mesh>-<index>``), so
the access log's ``policy`` field names the rule that let a request through.

Paths mean what RBAC's ``url_path`` means: the ``:path`` without its query string or fragment
(Envoy cuts at the first ``?`` or ``#``). An exact path ``/a`` therefore matches ``/a``, ``/a?..``
and ``/a#..``, never ``/ab``; a prefix ``/a`` matches any ``:path`` starting with ``/a`` (the same
with or without a query). A planned path never holds a ``?`` or ``#``: ``meshfed.spec.paths``
refuses such a path, which could never match, in the spec and in the plan alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshfed.plan.guard import WorkloadGuard
from meshfed.plan.model import AllowRule, IngressServer, PathMatch, PrincipalMatch
from meshfed.render.envoy.process import Resource

HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ACTION = "type.googleapis.com/envoy.config.rbac.v3.Action"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
URI_SAN_INPUT = "type.googleapis.com/envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput"

SEVERAL_URI_SANS = "several-uri-sans"
DEFAULT_DENY = "default-deny"
FROM_INGRESS = "from-ingress"
MESH_TRAFFIC = "mesh-traffic"
CALLER_NOT_FROM_INGRESS = "caller-header-not-from-ingress"
XFCC_NOT_FROM_INGRESS = "xfcc-only-from-ingress"

_URI_SAN: Resource = {"name": "uri_san", "typed_config": {"@type": URI_SAN_INPUT}}


def http_config(server: IngressServer) -> Resource:
    """The HTTP RBAC configuration of ``server``'s chain: principals, methods and paths."""
    return {"@type": HTTP_RBAC, "matcher": matcher(server.allow, http=True)}


def http_filter(server: IngressServer) -> Resource:
    """The HTTP RBAC filter of ``server``'s chain, inline."""
    return {"name": "envoy.filters.http.rbac", "typed_config": http_config(server)}


def tunnel_config(server: IngressServer, header: str) -> Resource:
    """The HTTP RBAC configuration of a TCP export's tunnel (`render/envoy/tunnel.py`): the
    export's principals, on the ``header`` the ingress set to the caller's verified URI SANs,
    decided when the tunnel opens, before the workload is connected."""
    identity = header_input(header)
    return {"@type": HTTP_RBAC, "matcher": matcher(server.allow, http=False, identity=identity)}


def sidecar_config(forwarder: str, guard: WorkloadGuard | None) -> Resource:
    """The HTTP RBAC configuration of a workload's inbound sidecar listener.

    From the mesh's federation ingress (``forwarder``): with a guard (an exported workload),
    the guard's rules on the caller header the ingress set (`meshfed.plan.guard`), the same
    matcher as the ingress's; without, allowed. From any other peer: refused if it carries the
    caller header (guard) or its own XFCC element (a ``,``: the sidecar appends its element
    before filters run); else allowed (the mesh's own traffic).
    """
    if guard is None:
        from_ingress = _allow(FROM_INGRESS)
    else:
        identity = header_input(guard.header)
        from_ingress = _nested(matcher(guard.rules, http=True, identity=identity))
    entries = [(_single(_URI_SAN, {"exact": forwarder}), from_ingress)]
    if guard is not None:
        present = {"safe_regex": {"google_re2": {}, "regex": "(?s).+"}}
        forged = _single(header_input(guard.header), present)
        entries.append((forged, _deny(CALLER_NOT_FROM_INGRESS)))
    xfcc = _single(header_input("x-forwarded-client-cert"), {"contains": ","})
    entries.append((xfcc, _deny(XFCC_NOT_FROM_INGRESS)))
    return {"@type": HTTP_RBAC, "matcher": _list(entries, _allow(MESH_TRAFFIC))}


def policy_id(rule: AllowRule, index: int) -> str:
    return f"{rule.consumer_mesh}-{index}"


# --- the matcher ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """An allow rule as the matcher uses it: its action name and its request predicate."""

    name: str
    permission: Resource | None
    """Methods AND paths; None: any request."""
    exact: tuple[str, ...]
    prefixes: tuple[PrincipalMatch, ...]


def header_input(name: str) -> Resource:
    """A request header as the matcher's identity input (a header the proxy itself set from
    the caller's verified URI SANs, joined by ``,`` exactly as ``UriSanInput`` joins them)."""
    return {"name": name, "typed_config": {"@type": HEADER_INPUT, "header_name": name}}


def matcher(rules: Sequence[AllowRule], http: bool, identity: Resource = _URI_SAN) -> Resource:
    """The unified matcher for ``rules`` (see the module docstring for its shape), reading the
    caller's identity from ``identity``: the client certificate's URI SANs, or a header."""
    domains: dict[str, list[_Rule]] = {}
    keys: dict[str, str] = {}
    for i, rule in enumerate(rules):
        domains.setdefault(rule.trust_domain, []).append(_compile(rule, i, http))
        keys[rule.trust_domain] = rule.id_prefix
    body = _deny(DEFAULT_DENY)
    if domains:
        branches = {
            keys[domain]: _branch(in_domain, identity)
            for domain, in_domain in sorted(domains.items())
        }
        body = _nested(_tree(identity, "prefix_match_map", branches, _deny(DEFAULT_DENY)))
    several = _single(identity, {"contains": ","})
    return _list([(several, _deny(SEVERAL_URI_SANS))], body)


def _compile(rule: AllowRule, index: int, http: bool) -> _Rule:
    permission: Resource | None = None
    if http:
        parts: list[Resource] = []
        if rule.methods:
            parts.append(_any_of([_header(":method", {"exact": m}) for m in rule.methods]))
        if rule.paths:
            parts.append(_any_of([p for path in rule.paths for p in _path(path)]))
        permission = _all_of(parts) if parts else None
    return _Rule(
        name=policy_id(rule, index),
        permission=permission,
        exact=tuple(p.value for p in rule.principals if not p.prefix),
        prefixes=tuple(p for p in rule.principals if p.prefix),
    )


def _path(path: PathMatch) -> list[Resource]:
    """``url_path`` semantics on ``:path``: compare the part before the first '?' or '#' (a
    planned path holds neither, `meshfed.spec.paths`)."""
    if path.prefix:
        return [_header(":path", {"prefix": path.value})]
    return [
        _header(":path", {"exact": path.value}),
        _header(":path", {"prefix": path.value + "?"}),
        _header(":path", {"prefix": path.value + "#"}),
    ]


def _branch(rules: list[_Rule], identity: Resource) -> Resource:
    """What decides a caller of the rules' trust domain (a single URI SAN in it), as an
    OnMatch."""
    in_domain = [(rule, list(rule.exact), list(rule.prefixes)) for rule in rules]
    if len(in_domain) == 1:
        ((rule, exact, prefixes),) = in_domain
        allow = _allow(rule.name)
        prefixed = (
            [(_any_of([_single(identity, {"prefix": q.value}) for q in prefixes]), allow)]
            if prefixes
            else []
        )
        identities = _identities(identity, {p: allow for p in exact}, prefixed)
        if rule.permission is None:
            return identities
        return _nested(_list([(rule.permission, identities)], _deny(DEFAULT_DENY)))
    covering: dict[str, list[_Rule]] = {}
    for rule, exact, _ in in_domain:
        for p in exact:
            covering.setdefault(p, []).append(rule)
    for p, found in covering.items():
        for rule, _, prefixes in in_domain:
            if rule not in found and any(q.matches(p) for q in prefixes):
                found.append(rule)
    table = {
        p: _decide(sorted(found, key=lambda r: rules.index(r))) for p, found in covering.items()
    }
    # Not in the map: each rule's prefixes AND its permission, in turn (a failed permission
    # must not end the search: a later rule may allow the same caller).
    fallback = [
        (
            _all_of(
                [
                    _any_of([_single(identity, {"prefix": q.value}) for q in prefixes]),
                    *_maybe(r.permission),
                ]
            ),
            _allow(r.name),
        )
        for r, _, prefixes in in_domain
        if prefixes
    ]
    return _identities(identity, table, fallback)


def _decide(rules: list[_Rule]) -> Resource:
    """An identity covered by ``rules``: allowed if any of their permissions holds."""
    for rule in rules:
        if rule.permission is None:
            return _allow(rule.name)
    entries = [(r.permission, _allow(r.name)) for r in rules if r.permission is not None]
    return _nested(_list(entries, _deny(DEFAULT_DENY)))


def _identities(
    identity: Resource, exact: dict[str, Resource], prefixed: list[tuple[Resource, Resource]]
) -> Resource:
    """An exact map of identities, else the (predicate, outcome) list in order, else DENY; as
    an OnMatch."""
    otherwise = _nested(_list(prefixed, _deny(DEFAULT_DENY))) if prefixed else _deny(DEFAULT_DENY)
    if not exact:
        return otherwise
    return _nested(_tree(identity, "exact_match_map", dict(sorted(exact.items())), otherwise))


# --- xds.type.matcher.v3 building blocks ---------------------------------------------------------


def _action(name: str, action: str) -> Resource:
    return {
        "action": {"name": name, "typed_config": {"@type": ACTION, "name": name, "action": action}}
    }


def _allow(name: str) -> Resource:
    return _action(name, "ALLOW")


def _deny(name: str) -> Resource:
    return _action(name, "DENY")


def _nested(matcher: Resource) -> Resource:
    return {"matcher": matcher}


def _list(entries: Iterable[tuple[Resource, Resource]], on_no_match: Resource) -> Resource:
    return {
        "matcher_list": {
            "matchers": [{"predicate": p, "on_match": on_match} for p, on_match in entries]
        },
        "on_no_match": on_no_match,
    }


def _tree(
    identity: Resource, kind: str, table: dict[str, Resource], on_no_match: Resource
) -> Resource:
    return {"matcher_tree": {"input": identity, kind: {"map": table}}, "on_no_match": on_no_match}


def _single(input_: Resource, value_match: Resource) -> Resource:
    return {"single_predicate": {"input": input_, "value_match": value_match}}


def _header(name: str, value_match: Resource) -> Resource:
    config = {"@type": HEADER_INPUT, "header_name": name}
    return _single({"name": name, "typed_config": config}, value_match)


def _maybe(predicate: Resource | None) -> list[Resource]:
    return [] if predicate is None else [predicate]


def _any_of(predicates: list[Resource]) -> Resource:
    return predicates[0] if len(predicates) == 1 else {"or_matcher": {"predicate": predicates}}


def _all_of(predicates: list[Resource]) -> Resource:
    return predicates[0] if len(predicates) == 1 else {"and_matcher": {"predicate": predicates}}
