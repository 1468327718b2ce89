"""An evaluator of Istio's semantics for the objects meshfed renders: what a real istiod 1.25
makes its federation ingress gateway do with one request.

Written from Istio's documentation and source, each rule where it is implemented (Istio 1.25.5,
github.com/istio/istio):

- Gateway servers become filter chains matched by SNI (``server_names`` = the server's hosts);
  ``tls.mode: MUTUAL`` requires a client certificate verified against the ``credentialName``
  CA bundle; ``tls.subjectAltNames`` become ``match_subject_alt_names`` exact matchers, any SAN
  matching any entry passes (pilot/pkg/networking/core/gateway.go
  ``buildGatewayListenerTLSContext``, pilot/pkg/security/model/authentication.go,
  ``util.StringToExactMatch``). HTTPS servers terminate into an HTTP connection manager, TLS
  servers (terminated) into ``tcp_proxy`` with the VirtualService's ``tcp`` routes.
- Each HTTPS server has its own route configuration holding the VirtualServices bound to the
  gateway whose hosts match the server's (``gatewayRDSRouteName``): a request whose
  :authority names another server's host finds no route (404).
- The connection manager normalizes the path before any filter: ``meshConfig.pathNormalization``
  (default BASE: RFC 3986 only; pilot/pkg/networking/core/listener_builder.go), then what an
  EnvoyFilter MERGE sets on it. Istio's authorization filter runs before routing.
- AuthorizationPolicy (https://istio.io/latest/docs/reference/config/security/authorization-policy/,
  pilot/pkg/security/authz/builder, model, matcher): CUSTOM, then DENY, then ALLOW; with no ALLOW
  policy the request is allowed, with one it must match a rule; a policy without rules matches
  nothing. A rule matches when all of from/to/when do; entries of from and to are ORed, the
  fields of one entry ANDed, values ORed, notValues negated. ``principals`` get ``spiffe://``
  prepended and match any URI SAN (``authenticated.principal_name``): ``x`` exact, ``x*``
  prefix, ``*x`` suffix, ``*`` any (``StringMatcherWithPrefix``). ``paths`` match the path
  without query (``url_path``), methods and headers the request's (``HeaderMatcher``: exact,
  prefix ``x*``, suffix ``*x``, presence ``*``), ``connection.sni`` the requested server name.
  On a TCP chain an ALLOW rule holding an HTTP-only attribute is skipped and a DENY rule's
  HTTP-only attributes are dropped (``rule.checkError``).
- VirtualService ``headers.request`` ``remove`` then ``set`` reach the upstream request
  (route.go ``TranslateHeadersOperations``); ``%DOWNSTREAM_PEER_URI_SAN%`` is the caller's URI
  SANs joined by ``,``; the gateway sets XFCC (SANITIZE_SET) from the verified certificate,
  one ``URI=`` per URI SAN.

Anything outside these (CUSTOM actions, JWT, IP blocks, templates, ``targetRefs``) raises
``Unsupported``: the oracle never guesses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from authz_cases import Case, normalize, url_path

Obj = dict[str, Any]

HTTP_PROTOCOLS = {"HTTP", "HTTPS", "HTTP2", "GRPC"}
HCM = "envoy.filters.network.http_connection_manager"
HTTP_ONLY = ("methods", "notMethods", "paths", "notPaths", "hosts", "notHosts")
"""Operation fields an ALLOW rule cannot hold on a TCP chain."""
DEFAULT_ROOT_NAMESPACE = "istio-system"


class Unsupported(Exception):
    """The objects use an Istio feature this oracle does not model."""


@dataclass(frozen=True)
class Verdict:
    stage: str
    """no-chain | handshake | bad-request | forbidden | no-route | routed"""
    detail: str = ""
    destination: str | None = None
    upstream_headers: dict[str, str] = field(default_factory=dict)
    upstream_path: str = ""
    """The path the upstream request carries (after the connection manager's normalization)."""

    @property
    def allowed(self) -> bool:
        return self.stage == "routed"


# --- matchers -------------------------------------------------------------------------------------


def _string_match(pattern: str, value: str | None, prefix: str = "") -> bool:
    """Istio's ``StringMatcherWithPrefix(pattern, prefix)`` applied to ``value``."""
    if value is None:
        return False
    if pattern == "*":
        return len(value) > 0  # regex ".+"
    if pattern.startswith("*"):
        return value.startswith(prefix) and value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(prefix + pattern[:-1])
    return value == prefix + pattern


def _header_match(pattern: str, value: str | None) -> bool:
    """Istio's ``HeaderMatcher``: presence, suffix, prefix or exact."""
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def _values(values: Iterable[str], not_values: Iterable[str], test: Any) -> bool:
    values, not_values = list(values), list(not_values)
    ok = True
    if values:
        ok = any(test(v) for v in values)
    if not_values:
        ok = ok and not any(test(v) for v in not_values)
    return ok


@dataclass(frozen=True)
class AuthzRequest:
    sans: tuple[str, ...]
    sni: str
    port: int
    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def principal(self, pattern: str) -> bool:
        # Envoy's `authenticated.principal_name`: every URI SAN, then (none here) DNS SANs,
        # then the subject (empty for meshfed's leaves).
        names = list(self.sans) or [""]
        return any(_string_match(pattern, n, "spiffe://") for n in names)

    def namespace(self, ns: str) -> bool:
        # srcNamespaceGenerator: principal regex `.*/ns/<ns>/.*`.
        return any(f"/ns/{ns}/" in s for s in self.sans)


def _source(src: Obj, req: AuthzRequest) -> bool:
    for key in src:
        if key not in ("principals", "notPrincipals", "namespaces", "notNamespaces"):
            raise Unsupported(f"source.{key}")
    return _values(src.get("principals", []), src.get("notPrincipals", []), req.principal) and (
        _values(src.get("namespaces", []), src.get("notNamespaces", []), req.namespace)
    )


def _operation(op: Obj, req: AuthzRequest, tcp: bool, action: str) -> bool:
    for key in op:
        if key not in (*HTTP_ONLY, "ports", "notPorts"):
            raise Unsupported(f"operation.{key}")
    ok = _values(op.get("ports", []), op.get("notPorts", []), lambda p: str(req.port) == str(p))
    if tcp:
        return ok  # DENY: HTTP-only fields dropped (ALLOW rules holding them are skipped)
    if op.get("hosts") or op.get("notHosts"):
        raise Unsupported("operation.hosts")
    return (
        ok
        and _values(
            op.get("methods", []), op.get("notMethods", []), lambda m: _header_match(m, req.method)
        )
        and _values(
            op.get("paths", []),
            op.get("notPaths", []),
            lambda p: _string_match(p, url_path(req.path)),
        )
    )


def _condition(cond: Obj, req: AuthzRequest, tcp: bool) -> bool:
    key = cond["key"]
    values, not_values = cond.get("values", []), cond.get("notValues", [])
    if key == "connection.sni":
        return _values(values, not_values, lambda v: _string_match(v, req.sni))
    if key == "source.principal":
        return _values(values, not_values, req.principal)
    if key == "source.namespace":
        return _values(values, not_values, req.namespace)
    if key == "destination.port":
        return _values(values, not_values, lambda p: str(req.port) == str(p))
    if key.startswith("request.headers[") and key.endswith("]"):
        if tcp:
            return True  # a DENY rule's HTTP-only condition is dropped on TCP
        name = key[len("request.headers[") : -1].lower()
        return _values(values, not_values, lambda v: _header_match(v, req.headers.get(name)))
    raise Unsupported(f"when key {key}")


def _http_only(rule: Obj) -> bool:
    ops = [t.get("operation", {}) for t in rule.get("to", [])]
    return any(k in op for op in ops for k in HTTP_ONLY) or any(
        c["key"].startswith("request.") for c in rule.get("when", [])
    )


def rule_matches(rule: Obj, req: AuthzRequest, tcp: bool, action: str) -> bool:
    """One rule of a policy (an empty rule matches everything)."""
    if tcp and action == "ALLOW" and _http_only(rule):
        return False  # skipped on a TCP chain: the allow gets smaller
    # from, to and when are ANDed: the cheap conditions (the SNI) first.
    if not all(_condition(c, req, tcp) for c in rule.get("when", [])):
        return False
    sources = [f.get("source", {}) for f in rule.get("from", [])]
    if sources and not any(_source(s, req) for s in sources):
        return False
    ops = [t.get("operation", {}) for t in rule.get("to", [])]
    return not ops or any(_operation(o, req, tcp, action) for o in ops)


def authorize(policies: list[Obj], req: AuthzRequest, tcp: bool) -> tuple[bool, str]:
    """(allowed, why) for the policies that apply to one workload."""
    by_action: dict[str, list[Obj]] = {"ALLOW": [], "DENY": [], "AUDIT": []}
    for policy in policies:
        spec = policy.get("spec") or {}
        if spec.get("targetRefs") or spec.get("targetRef"):
            raise Unsupported("targetRefs")
        action = spec.get("action", "ALLOW")
        if action == "CUSTOM":
            raise Unsupported("CUSTOM")
        by_action[action].append(policy)
    for policy in by_action["DENY"]:
        for i, rule in enumerate(policy["spec"].get("rules") or []):
            if rule_matches(rule, req, tcp, "DENY"):
                return False, f"denied by {policy['metadata']['name']} rule {i}"
    allows = by_action["ALLOW"]
    if not allows:
        return True, "no ALLOW policy"
    for policy in allows:
        for i, rule in enumerate(policy["spec"].get("rules") or []):
            if rule_matches(rule, req, tcp, "ALLOW"):
                return True, f"allowed by {policy['metadata']['name']} rule {i}"
    return False, "no ALLOW rule matched"


# --- the gateway ----------------------------------------------------------------------------------


def _selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    wanted = (selector or {}).get("matchLabels", selector or {})
    return all(labels.get(k) == v for k, v in wanted.items())


def _host_matches(pattern: str, host: str) -> bool:
    pattern = pattern.partition("/")[2] if "/" in pattern else pattern
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


@dataclass
class Gateway:
    """One gateway workload of a mesh: its pod labels, namespace, and the mesh's objects."""

    docs: list[Obj]
    name: str
    namespace: str
    mesh_config: Obj
    handshake_domains: frozenset[str]

    def __post_init__(self) -> None:
        (deployment,) = self.of("Deployment", name=self.name)
        self.labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
        (service,) = self.of("Service", name=self.name)
        self.ports = {p["port"]: p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
        self.root = self.mesh_config.get("rootNamespace", DEFAULT_ROOT_NAMESPACE)
        self._cache: dict[Any, Any] = {}

    def _cached(self, key: Any, compute: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def of(self, kind: str, name: str | None = None) -> list[Obj]:
        return [
            d
            for d in self.docs
            if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
        ]

    def _applies(self, doc: Obj, selector_key: str = "selector") -> bool:
        ns = doc["metadata"].get("namespace")
        spec = doc.get("spec") or {}
        if ns == self.namespace:
            return _selects(spec.get(selector_key), self.labels)
        return ns == self.root and not spec.get(selector_key)

    def _reaches(self, envoy_filter: Obj) -> bool:
        """An EnvoyFilter reaches the workloads its ``workloadSelector.labels`` pick in its
        namespace, all of its namespace without one, all of the mesh from the root namespace."""
        ns = envoy_filter["metadata"].get("namespace")
        wanted = (envoy_filter["spec"].get("workloadSelector") or {}).get("labels") or {}
        if envoy_filter["spec"].get("targetRefs"):
            raise Unsupported("EnvoyFilter targetRefs")
        if ns == self.namespace:
            return all(self.labels.get(k) == v for k, v in wanted.items())
        return ns == self.root and not wanted

    def servers(self, port: int) -> list[Obj]:
        out = []
        for gw in self.of("Gateway"):
            if not _selects(gw["spec"].get("selector"), self.labels):
                continue
            out += [s for s in gw["spec"]["servers"] if self.ports.get(s["port"]["number"]) == port]
        return out

    def hcm_settings(self, port: int) -> tuple[bool, bool, str]:
        """(normalize_path, merge_slashes, path_with_escaped_slashes_action) of the chain's
        connection manager: the mesh's pathNormalization, then EnvoyFilter MERGEs."""
        mode = (self.mesh_config.get("pathNormalization") or {}).get("normalization", "BASE")
        settings = {
            "NONE": (False, False, "KEEP_UNCHANGED"),
            "BASE": (True, False, "KEEP_UNCHANGED"),
            "DEFAULT": (True, False, "KEEP_UNCHANGED"),
            "MERGE_SLASHES": (True, True, "KEEP_UNCHANGED"),
            "DECODE_AND_MERGE_SLASHES": (True, True, "UNESCAPE_AND_FORWARD"),
        }[mode]
        normalize_path, merge, escaped = settings
        for ef in self.of("EnvoyFilter"):
            if not self._reaches(ef):
                continue
            for patch in ef["spec"].get("configPatches", []):
                match = patch.get("match", {})
                listener = match.get("listener", {})
                if patch.get("applyTo") != "NETWORK_FILTER":
                    continue
                if match.get("context", "ANY") not in ("ANY", "GATEWAY"):
                    continue
                if listener.get("portNumber", port) != port:
                    continue
                if (listener.get("filterChain", {}).get("filter") or {}).get("name") != HCM:
                    continue
                if patch["patch"]["operation"] != "MERGE":
                    raise Unsupported(f"EnvoyFilter {patch['patch']['operation']}")
                typed = patch["patch"]["value"].get("typed_config", {})
                normalize_path = typed.get("normalize_path", normalize_path)
                merge = typed.get("merge_slashes", merge)
                escaped = typed.get("path_with_escaped_slashes_action", escaped)
        return normalize_path, merge, escaped

    def policies(self) -> list[Obj]:
        return [p for p in self.of("AuthorizationPolicy") if self._applies(p)]

    def route(self, server: Obj, host: str, tcp: bool, port: int) -> Obj | None:
        """The first route of a VirtualService bound to this gateway for ``host``."""
        for vs in self.of("VirtualService"):
            ns = vs["metadata"].get("namespace")
            gateways = vs["spec"].get("gateways", [])
            names = {g if "/" in g else f"{ns}/{g}" for g in gateways}
            if not any(
                f"{gw['metadata']['namespace']}/{gw['metadata']['name']}" in names
                for gw in self.of("Gateway")
                if server in gw["spec"]["servers"]
            ):
                continue
            hosts = vs["spec"]["hosts"]
            if not any(_host_matches(h, host) for h in hosts):
                continue
            if not any(_host_matches(s, host) for s in server["hosts"]):
                continue
            for route in vs["spec"].get("tcp" if tcp else "http", []):
                matches = route.get("match") or [{}]
                for m in matches:
                    extra = set(m) - {"port"}
                    if extra:
                        raise Unsupported(f"route match {sorted(extra)}")
                    if m.get("port", port) == port:
                        return route  # type: ignore[no-any-return]
        return None

    def request(self, case: Case, port: int) -> Verdict:
        """What the gateway does with ``case`` on ``port`` (the container port)."""
        chains = self._cached(
            ("chains", port, case.sni),
            lambda: [
                s for s in self.servers(port) if any(_host_matches(h, case.sni) for h in s["hosts"])
            ],
        )
        if not chains:
            return Verdict("no-chain", f"no server for SNI {case.sni}")
        server = chains[0]
        tls = server.get("tls") or {}
        mode = tls.get("mode")
        if mode != "MUTUAL":
            raise Unsupported(f"tls mode {mode}")
        if case.sans is None:
            return Verdict("handshake", "no client certificate")
        if case.sans and case.domain not in self.handshake_domains:
            return Verdict("handshake", f"chain of {case.domain} not trusted")
        pinned = tls.get("subjectAltNames")
        if pinned and not any(s in pinned for s in case.sans):
            return Verdict("handshake", "no SAN in subjectAltNames")
        tcp = server["port"]["protocol"].upper() not in HTTP_PROTOCOLS
        if tcp:
            req = AuthzRequest(case.sans, case.sni, port)
            ok, why = authorize(self._cached("policies", self.policies), req, tcp=True)
            if not ok:
                return Verdict("forbidden", why)
            route = self._cached(
                ("route", id(server), case.sni, True),
                lambda: self.route(server, case.sni, True, port),
            )
            if route is None:
                return Verdict("no-route", "no tcp route")
            (dest,) = route["route"]
            return Verdict("routed", why, dest["destination"]["host"])
        normalize_path, merge, escaped = self._cached(
            ("hcm", port), lambda: self.hcm_settings(port)
        )
        path = normalize(case.path, normalize_path, merge, escaped)
        if path is None:
            return Verdict("bad-request", "escaped slash")
        xfcc = "".join(f";URI={s}" for s in case.sans)
        headers = {
            ":authority": case.host,
            "x-forwarded-client-cert": f'By=ingress;Hash=h;Subject=""{xfcc}',
        }
        req = AuthzRequest(case.sans, case.sni, port, case.method, path, headers)
        ok, why = authorize(self._cached("policies", self.policies), req, tcp=False)
        if not ok:
            return Verdict("forbidden", why)
        route = self._cached(
            ("route", id(server), case.host, False),
            lambda: self.route(server, case.host, False, port),
        )
        if route is None:
            return Verdict("no-route", f"no route for {case.host}")
        (dest,) = route["route"]
        ops = (route.get("headers") or {}).get("request") or {}
        upstream = {k: v for k, v in headers.items() if k not in ops.get("remove", [])}
        for k, v in (ops.get("set") or {}).items():
            upstream[k.lower()] = v.replace("%DOWNSTREAM_PEER_URI_SAN%", ",".join(case.sans))
        return Verdict("routed", why, dest["destination"]["host"], upstream, path)


# --- the exported workload's sidecar --------------------------------------------------------------


@dataclass
class Sidecar:
    """The sidecar of an exported workload: the AuthorizationPolicies that select its pods
    (meshfed's workload guard among them). Its inbound HTTP chain authorizes the request the
    gateway forwarded, with the gateway's identity as the mTLS peer and the headers the gateway
    set (XFCC is appended before authorization runs, which no rule here reads)."""

    docs: list[Obj]
    namespace: str
    labels: dict[str, str]
    root: str = DEFAULT_ROOT_NAMESPACE

    def policies(self) -> list[Obj]:
        out = []
        for p in self.docs:
            if p.get("kind") != "AuthorizationPolicy":
                continue
            ns = p["metadata"].get("namespace")
            spec = p.get("spec") or {}
            if (ns == self.namespace and _selects(spec.get("selector"), self.labels)) or (
                ns == self.root and not spec.get("selector")
            ):
                out.append(p)
        return out

    def request(self, peer: str, port: int, routed: Verdict, method: str) -> Verdict:
        """What the sidecar does with a request the gateway routed (``routed``)."""
        req = AuthzRequest((peer,), "", port, method, routed.upstream_path, routed.upstream_headers)
        ok, why = authorize(self.policies(), req, tcp=False)
        return routed if ok else Verdict("workload-forbidden", why, routed.destination)
