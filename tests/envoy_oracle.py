"""An evaluator of what a local federation ingress (the Envoy configuration meshfed renders)
does with one request: filter chain by SNI, the handshake's validation (Envoy's SPIFFE
validator picks the trust bundle by the first URI SAN; typed SAN matchers admit a certificate
if any URI SAN matches one), the connection manager's path handling, the RBAC matcher
(evaluated as Envoy does, tests/test_render_envoy_rbac.py), and the route; for a TCP export,
the tunnel's RBAC on the headers the chain set (render/envoy/tunnel.py).

Real Envoy runs the same configurations in tests/test_local_*.py; this evaluator lets the
matrix of tests/authz_cases.py run over every bundled example and many generated federations
in a second.
"""

from __future__ import annotations

from typing import Any

from authz_cases import Case, normalize
from istio_oracle import Verdict
from meshfed.render.envoy.process import ProcessConfig
from test_render_envoy_rbac import evaluate

Obj = dict[str, Any]


def _validation(process: ProcessConfig, chain: Obj) -> tuple[list[str], list[Obj]]:
    """(trust domains, URI SAN matchers) the chain's handshake checks."""
    context = chain["transport_socket"]["typed_config"]
    assert context["require_client_certificate"] is True
    combined = context["common_tls_context"]["combined_validation_context"]
    secret = process.trust[combined["validation_context_sds_secret_config"]["name"]]
    validator = secret["custom_validator_config"]["typed_config"]
    domains = [t["name"] for t in validator["trust_domains"]]
    matchers = [
        *combined["default_validation_context"].get("match_typed_subject_alt_names", []),
        *secret.get("match_typed_subject_alt_names", []),
    ]
    return domains, matchers


def _san_matches(matcher: Obj, san: str) -> bool:
    assert matcher["san_type"] == "URI"
    ((how, value),) = matcher["matcher"].items()
    return san == value if how == "exact" else san.startswith(value)


def _rbac(process: ProcessConfig, filt: Obj) -> Obj:
    inline = "typed_config" in filt
    config = filt["typed_config"] if inline else process.extensions[filt["name"]]
    matcher: Obj = config["matcher"]
    return matcher


def _tunnel(process: ProcessConfig, proxy: Obj, case: Case) -> Verdict:
    """A TCP export's tcp_proxy: a CONNECT to the export's internal listener, carrying the
    headers the chain set from the verified certificate; that listener's RBAC decides before
    the workload is connected (render/envoy/tunnel.py)."""
    assert proxy["upstream_connect_mode"] == "ON_DOWNSTREAM_TLS_HANDSHAKE"
    values = {"%DOWNSTREAM_PEER_URI_SAN%": ",".join(case.sans or ())}
    headers = {
        h["header"]["key"]: values.get(h["header"]["value"], "fingerprint")
        for h in proxy["tunneling_config"]["headers_to_add"]
    }
    (internal,) = [item for item in process.listeners if item["name"] == proxy["cluster"]]
    assert "internal_listener" in internal
    (chain,) = internal["filter_chains"]
    hcm = chain["filters"][0]["typed_config"]
    (rbac_filter,) = [f for f in hcm["http_filters"] if "rbac" in f["name"]]
    _, action = evaluate(_rbac(process, rbac_filter), [], {":method": "CONNECT", **headers})
    if action != "ALLOW":
        return Verdict("forbidden", "tunnel RBAC")
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    (route,) = vhost["routes"]
    assert route["match"] == {"connect_matcher": {}}
    return Verdict("routed", "", route["route"]["cluster"])


def request(process: ProcessConfig, case: Case) -> Verdict:
    (listener,) = [item for item in process.listeners if "address" in item]
    chains = [
        c
        for c in listener["filter_chains"]
        if case.sni in c.get("filter_chain_match", {}).get("server_names", [])
    ]
    if not chains:
        return Verdict("no-chain", f"no chain for {case.sni}")
    (chain,) = chains
    if case.sans is None:
        return Verdict("handshake", "no client certificate")
    domains, matchers = _validation(process, chain)
    if not case.sans or not case.sans[0].startswith("spiffe://"):
        return Verdict("handshake", "no SPIFFE URI SAN")
    if case.domain not in domains:
        return Verdict("handshake", f"no trust bundle for {case.domain}")
    if matchers and not any(_san_matches(m, s) for m in matchers for s in case.sans):
        return Verdict("handshake", "no SAN admitted")
    filters = chain["filters"]
    if filters[0]["name"] != "envoy.filters.network.http_connection_manager":
        (proxy,) = filters
        return _tunnel(process, proxy["typed_config"], case)
    hcm = filters[0]["typed_config"]
    path = normalize(
        case.path,
        hcm.get("normalize_path", False),
        hcm.get("merge_slashes", False),
        hcm.get("path_with_escaped_slashes_action", "KEEP_UNCHANGED"),
    )
    if path is None:
        return Verdict("bad-request", "escaped slash")
    (rbac_filter,) = [f for f in hcm["http_filters"] if "rbac" in f["name"]]
    headers = {":method": case.method, ":path": path}
    _, action = evaluate(_rbac(process, rbac_filter), list(case.sans), headers)
    if action != "ALLOW":
        return Verdict("forbidden", "RBAC")
    host = case.host.partition(":")[0] if hcm.get("strip_any_host_port") else case.host
    for vhost in hcm["route_config"]["virtual_hosts"]:
        if host in vhost["domains"]:
            (route,) = vhost["routes"]
            assert route["match"] == {"prefix": "/"}
            return Verdict("routed", "", route["route"]["cluster"])
    return Verdict("no-route", f"no virtual host for {host}")
