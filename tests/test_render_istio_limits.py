"""The plan's limits, failover policy and header rules in the Istio output (render/istio/limits.py,
render/istio/workload.py): the same values as the local federation's, where Istio takes them.

The EnvoyFilter patches are merged into an Envoy listener the way istiod's MERGE does (fields
set, maps merged, lists appended) and Envoy 1.40 itself validates the result, so every field
name and value is one Envoy accepts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from local_helpers import numbered_layout
from meshfed.kube.targets import PRUNE_KINDS, prune_set
from meshfed.plan.limits import FailoverPolicy
from meshfed.plan.model import Workload
from meshfed.plan.names import GATEWAY_NAMESPACE
from meshfed.render.envoy import render_local
from meshfed.render.istio.imports import EGRESS_HOST
from meshfed.sinks.files import write_rendered
from meshfed.spec.headers import CALLER_HEADER, STRIPPED_HEADERS
from meshfed.workspace import open_workspace
from test_render_envoy import envoy_validates

from conftest import EXAMPLES, Rendered

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def _proxy_config(rendered: Rendered, mesh: str, gateway: str) -> dict[str, Any]:
    (deployment,) = [
        d for d in rendered.docs(mesh, "Deployment") if d["metadata"]["name"] == gateway
    ]
    annotation = deployment["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
    config: dict[str, Any] = json.loads(annotation)
    return config


def test_gateway_pods_carry_idle_timeout_and_connection_caps(bank_rendered: Rendered) -> None:
    for mesh in bank_rendered.workspace.plan.meshes:
        limits = mesh.limits
        for gateway, listener, port in (
            ("federation-ingress", limits.ingress, mesh.ingress.port),
            ("federation-egress", limits.internal, 15443),
        ):
            config = _proxy_config(bank_rendered, mesh.name, gateway)
            idle = f"{listener.idle_timeout.total_seconds():g}s"
            assert config["proxyMetadata"] == {"ISTIO_META_IDLE_TIMEOUT": idle}
            # istiod names a gateway listener without bind <first wildcard>_<port>: 0.0.0.0
            # on IPv4 and dual-stack pods, :: on IPv6-only ones (gateway.go getListenerName).
            cap = str(listener.max_connections)
            assert config["runtimeValues"] == {
                "overload.global_downstream_max_connections": str(limits.max_connections_per_proxy),
                f"envoy.resource_limits.listener.0.0.0.0_{port}.connection_limit": cap,
                f"envoy.resource_limits.listener.::_{port}.connection_limit": cap,
            }
            assert config["gatewayTopology"] == {"forwardClientCertDetails": "SANITIZE_SET"}


def _merge(base: Any, patch: Any) -> Any:
    """istiod's MERGE (pkg/proto/merge): messages merged field by field, lists appended."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list):
        return base + patch
    return patch


TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _chain(sni: str, hcm: bool) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [
        {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": "x", "cluster": "x"},
        }
    ]
    if hcm:
        filters = [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM,
                    "stat_prefix": "x",
                    "route_config": {"name": "x"},
                    "http_filters": [
                        {
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http."
                                "router.v3.Router"
                            },
                        }
                    ],
                },
            }
        ]
    return {"filter_chain_match": {"server_names": [sni]}, "filters": filters}


def _gateway_listener(port: int, hcm: bool) -> dict[str, Any]:
    """A listener shaped like an Istio gateway's: tls_inspector, one TLS chain per server (an
    ingress: an HTTP export's and a TCP export's; an egress: a passed-through SNI's)."""
    chains = [_chain("a.test", hcm=True), _chain("b.test", hcm=False)] if hcm else []
    return {
        "name": f"0.0.0.0_{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                    "tls_inspector.v3.TlsInspector"
                },
            }
        ],
        "filter_chains": chains or [_chain("a.test", hcm=False)],
    }


def _apply(listener: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    for patch in patches:
        assert patch["match"]["context"] == "GATEWAY"
        assert patch["patch"]["operation"] == "MERGE"
        value = patch["patch"]["value"]
        if patch["applyTo"] == "LISTENER":
            listener = _merge(listener, value)
        elif patch["applyTo"] == "FILTER_CHAIN":
            listener["filter_chains"] = [_merge(c, value) for c in listener["filter_chains"]]
        else:
            assert patch["applyTo"] == "NETWORK_FILTER"
            name = patch["match"]["listener"]["filterChain"]["filter"]["name"]
            for chain in listener["filter_chains"]:
                chain["filters"] = [
                    _merge(f, value) if f["name"] == name else f for f in chain["filters"]
                ]
    return listener


def test_envoy_filters_reach_only_the_gateways_and_envoy_accepts_them(
    bank_rendered: Rendered, tmp_path: Path
) -> None:
    plan = bank_rendered.workspace.plan
    for mesh in plan.meshes:
        filters = {
            f["metadata"]["name"]: f
            for f in bank_rendered.docs(mesh.name, "EnvoyFilter")
            if f["metadata"]["name"].endswith("-limits")
        }
        gateways = [
            (name, port, hcm)
            for name, port, hcm, present in (
                ("federation-ingress", mesh.ingress.port, True, mesh.ingress.servers),
                ("federation-egress", 15443, False, mesh.egress.routes),
            )
            if present  # no Gateway, no listener to patch
        ]
        assert set(filters) == {f"{name}-limits" for name, _, _ in gateways}
        for name, port, hcm in gateways:
            spec = filters[f"{name}-limits"]["spec"]
            assert filters[f"{name}-limits"]["metadata"]["namespace"] == "meshfed-system"
            assert spec["workloadSelector"] == {"labels": {"istio": name}}
            for patch in spec["configPatches"]:
                assert patch["match"]["listener"]["portNumber"] == port
            listener = _apply(_gateway_listener(port, hcm), spec["configPatches"])
            limits = mesh.limits.ingress if hcm else mesh.limits.internal
            handshake = f"{limits.handshake_timeout.total_seconds():g}s"
            assert listener["listener_filters_timeout"] == handshake
            assert listener["per_connection_buffer_limit_bytes"] == limits.buffer_limit_bytes
            tcp_idle = f"{limits.tcp_idle_timeout.total_seconds():g}s"
            tcp_exports = any(s.protocol == "TCP" for s in mesh.ingress.servers)
            if hcm:
                http_chain, tcp_chain = listener["filter_chains"]
                assert http_chain["transport_socket_connect_timeout"] == handshake
                config = http_chain["filters"][0]["typed_config"]
                assert config["request_headers_timeout"] == "5s"
                assert config["common_http_protocol_options"]["max_headers_count"] == 64
                assert "idle_timeout" not in config  # ISTIO_META_IDLE_TIMEOUT's (istiod)
                tcp = tcp_chain["filters"][0]["typed_config"]
                assert tcp.get("idle_timeout") == (tcp_idle if tcp_exports else None)
            else:  # the egress passes TLS through: every chain is a tcp_proxy
                (chain,) = listener["filter_chains"]
                assert chain["filters"][0]["typed_config"]["idle_timeout"] == tcp_idle
            boot = {"static_resources": {"listeners": [listener]}}
            envoy_validates(tmp_path / f"{mesh.name}-{name}.json", boot)


def _selected_rule(
    rules: list[dict[str, Any]], proxy_ns: str, host: str, service_ns: str, root_ns: str
) -> dict[str, Any] | None:
    """The DestinationRule istiod 1.25 gives a proxy in ``proxy_ns`` for ``host`` (a Service
    of ``service_ns``): the rules of ONE namespace, the proxy's own first (exported or not),
    then the service's, then the root namespace's, each only if exported to the proxy's
    namespace (pilot/pkg/model/push_context.go ``destinationRule``,
    ``getExportedDestinationRuleFromNamespace``). Exact hosts and ``*``-prefixed wildcards, as
    meshfed and the tests here write them; the oldest rule of a namespace wins (rules of one
    namespace are merged, but only their subsets)."""

    def matches(rule: dict[str, Any]) -> bool:
        pattern = rule["spec"]["host"]
        return pattern == host or (pattern.startswith("*") and host.endswith(pattern[1:]))

    def exported(rule: dict[str, Any]) -> bool:
        to = rule["spec"].get("exportTo", ["*"])
        namespace = rule["metadata"]["namespace"]
        return "*" in to or proxy_ns in to or ("." in to and namespace == proxy_ns)

    for namespace, local in ((proxy_ns, True), (service_ns, False), (root_ns, False)):
        found = [
            r
            for r in rules
            if r["metadata"]["namespace"] == namespace and matches(r) and (local or exported(r))
        ]
        if found:
            exact = [r for r in found if r["spec"]["host"] == host]
            return (exact or found)[0]
    return None


def _owner_rule(workload: Workload) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": f"{workload.name}-owner", "namespace": workload.namespace},
        "spec": {
            "host": workload.fqdn,
            "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 7}},
        },
    }


@pytest.mark.parametrize("example", ["bank", "partners"])
def test_an_exported_workloads_own_destination_rule_is_the_ingress_s(
    example: str, request: pytest.FixtureRequest
) -> None:
    """The owner of an exported workload wrote a DestinationRule for its Service in its own
    namespace: among everything meshfed renders, it is the one istiod gives the federation
    ingress for that host (meshfed's former DestinationRule for the host in the gateways'
    namespace, ``ingress-limits-<host>``, hid it: seen on istiod 1.25.5)."""
    rendered: Rendered = request.getfixturevalue(f"{example}_rendered")
    checked = 0
    for mesh in rendered.workspace.plan.meshes:
        ours = rendered.docs(mesh.name, "DestinationRule")
        for server in mesh.ingress.servers:
            workload = server.workload
            owner = _owner_rule(workload)
            rules = [*ours, owner]
            got = _selected_rule(rules, GATEWAY_NAMESPACE, workload.fqdn, workload.namespace,
                                 "istio-system")  # fmt: skip
            assert got is owner, (mesh.name, workload.fqdn, got and got["metadata"])
            checked += 1
    assert checked


def test_meshfed_destination_rules_are_for_its_own_names_only(bank_rendered: Rendered) -> None:
    """The only hosts meshfed writes DestinationRules for are names it owns: the egress
    gateway's Service (its subsets per imported host) and each imported wire host (a
    ServiceEntry of the gateways' namespace). A mesh's own Services keep their owners'."""
    for mesh in bank_rendered.workspace.plan.meshes:
        hosts = {d["spec"]["host"] for d in bank_rendered.docs(mesh.name, "DestinationRule")}
        wire = {r.wire_host for r in mesh.egress.routes}
        own = {EGRESS_HOST} if mesh.egress.routes else set()
        assert hosts == own | wire, mesh.name
        assert not hosts & {w.fqdn for w in mesh.workloads}


def test_an_upgrade_prunes_the_former_ingress_rules(bank_rendered: Rendered) -> None:
    """The ``ingress-limits-<host>`` DestinationRules an older meshfed applied carry its labels
    and are no longer rendered: ``meshfed apply`` (and the controller) delete them."""
    assert ("networking.istio.io/v1", "DestinationRule") in PRUNE_KINDS
    desired = [d for d in bank_rendered.docs("payments") if d["kind"] != "Kustomization"]
    former = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {
            "name": "ingress-limits-ledger-cards-svc-cluster-local",
            "namespace": GATEWAY_NAMESPACE,
            "labels": desired[0]["metadata"]["labels"],
        },
        "spec": {"host": "ledger.cards.svc.cluster.local", "exportTo": ["."]},
    }
    assert prune_set([*desired, former], desired, "bank") == [former]


def test_the_tcp_idle_bound_is_the_local_federations(
    bank_rendered: Rendered, tmp_path: Path
) -> None:
    """The plan's idle bound on a TCP session, at the ingress's tcp_proxy of a TCP export and
    at the egress's: the value the local federation's tcp_proxies carry."""
    ws = bank_rendered.workspace
    local = {p.name: p for p in render_local(ws.plan, numbered_layout(ws.plan), tmp_path / "run")}
    for mesh in ws.plan.meshes:
        filters = {
            f["metadata"]["name"]: f["spec"]["configPatches"]
            for f in bank_rendered.docs(mesh.name, "EnvoyFilter")
            if f["metadata"]["name"].endswith("-limits")
        }
        for gateway, process in (
            ("federation-ingress", "ingress"),
            ("federation-egress", "egress"),
        ):
            local_idle = {
                f["typed_config"].get("idle_timeout")
                for listener in local[f"{mesh.name}/{process}"].listeners
                if "address" in listener  # the socket listener (not an ingress's tunnels)
                for chain in listener["filter_chains"]
                for f in chain["filters"]
                if f["name"] == "envoy.filters.network.tcp_proxy"
                and f["typed_config"]["cluster"] != "probe"
            }
            istio_idle = {
                p["patch"]["value"]["typed_config"]["idle_timeout"]
                for p in filters.get(f"{gateway}-limits", [])
                if p["applyTo"] == "NETWORK_FILTER"
                and p["match"]["listener"]["filterChain"]["filter"]["name"]
                == "envoy.filters.network.tcp_proxy"
            }
            tcp = gateway == "federation-egress" or any(
                s.protocol == "TCP" for s in mesh.ingress.servers
            )
            present = mesh.egress.routes if process == "egress" else mesh.ingress.servers
            if not present:
                assert not istio_idle
                continue
            assert istio_idle == (local_idle if tcp else set()), (mesh.name, gateway)


def test_the_egress_fails_over_on_refused_and_timed_out_connects(bank_rendered: Rendered) -> None:
    failover = FailoverPolicy()
    for rule in bank_rendered.docs("web", "DestinationRule"):
        if not rule["metadata"]["name"].startswith("remote-"):
            continue
        policy = rule["spec"]["trafficPolicy"]
        assert policy["connectionPool"]["tcp"]["connectTimeout"] == "1s"
        outlier = policy["outlierDetection"]
        assert outlier["splitExternalLocalOriginErrors"] is True
        assert outlier["consecutiveLocalOriginFailures"] == failover.consecutive_failures
        assert outlier["baseEjectionTime"] == "1s" and outlier["maxEjectionPercent"] == 100


@pytest.fixture(scope="module")
def keeping(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The bank, with payments' tokenizer keeping X-Forwarded-Host."""
    base = tmp_path_factory.mktemp("keep")
    text = (EXAMPLES / "bank.yaml").read_text()
    anchor = "      host: tokenizer.payments.global\n"
    spec = base / "bank.yaml"
    spec.write_text(text.replace(anchor, anchor + "      keepRequestHeaders: [X-Forwarded-Host]\n"))
    ws = open_workspace(spec, base / "state")
    meshes = {rendered.mesh: rendered for rendered in ws.istio()}
    write_rendered(base / "out", list(meshes.values()))
    return Rendered(ws, meshes, base / "out")


def test_every_ingress_route_strips_the_override_headers_and_sets_the_caller(
    keeping: Rendered,
) -> None:
    for mesh in keeping.workspace.plan.meshes:
        for vs in keeping.docs(mesh.name, "VirtualService"):
            if not vs["metadata"]["name"].startswith("ingress-"):
                continue
            (sni,) = vs["spec"]["hosts"]
            for route in vs["spec"].get("http", []):
                request = route["headers"]["request"]
                assert request["set"] == {CALLER_HEADER: "%DOWNSTREAM_PEER_URI_SAN%"}
                keeps = mesh.name == "payments" and sni == "tokenizer.payments.global"
                kept = {"x-forwarded-host"} if keeps else set()
                assert set(request["remove"]) == (set(STRIPPED_HEADERS) - kept) | {CALLER_HEADER}


def test_http_imports_retry_across_envoys_late_second_ejection(bank_rendered: Rendered) -> None:
    """A consumer's HTTP import retries a call that reached no workload for longer than the
    second in which Envoy still sends connections to an exporter it re-ejected (seen on
    istiod 1.25.5: two retries let 20-30 calls of an 8 s outage fail, sixteen none or two);
    Istio 1.25's HTTPRetry has no back-off, so Envoy's default is the plan's. TCP imports have
    no retries (the application reconnects)."""
    plan = bank_rendered.workspace.plan
    (web,) = [m for m in plan.meshes if m.name == "web"]
    by_host = {r.local_host: r for r in web.imports}
    routes = {
        d["spec"]["hosts"][0]: d["spec"]
        for d in bank_rendered.docs("web", "VirtualService")
        if d["metadata"]["name"].startswith("import-")
    }
    checked = 0
    for host, spec in routes.items():
        route = by_host[host]
        if route.protocol == "TCP":
            assert route.retries is None and "http" not in spec
            continue
        retries = route.retries
        assert retries is not None
        assert spec["http"][0]["retries"] == {
            "attempts": retries.attempts,
            "retryOn": ",".join(retries.retry_on),
        }
        # Envoy's jittered back-off: the n-th retry waits up to min(base * (2^n - 1), max),
        # on average half of it; together well over the second of the late ejection.
        base = retries.base_interval.total_seconds()
        cap = retries.max_interval.total_seconds()
        mean = sum(min(base * (2**n - 1), cap) / 2 for n in range(1, retries.attempts + 1))
        assert mean > 1.5
        assert (base, cap) == (0.025, 0.25)  # Envoy's default: what Istio 1.25 uses
        assert set(retries.retry_on) == {"connect-failure", "refused-stream", "reset"}
        checked += 1
    assert checked
