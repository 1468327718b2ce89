"""meshfed's Istio output on a running istiod, Istio proxies and kube-apiservers.

Two federations are rendered with ``meshfed render`` and installed as the README says (``kubectl
apply -f`` of the secrets, the install settings as istiod's mesh config and environment,
``kubectl apply -k`` of each mesh's directory), each mesh on its own kube-apiserver with its
own istiod: a **Federated** one (two organisations, separate roots) and a **SharedRoot** one
with an HTTP export, a TCP export with a server-first backend, and failover to a DR mesh. Then,
on the running proxies: every object accepted and every proxy ACKs its config; the cross-mesh
call carries the caller's own identity (XFCC, ``x-meshfed-caller``); the workload guard
(forged caller header and XFCC from a mesh workload refused, two-URI-SAN leaves refused at the
workload, denied callers at the ingress); a workload owner's own DestinationRule is the one the
ingress uses, with meshfed's bounds; override headers stripped unless kept; the limits
(stalled handshakes and half-sent requests closed within the rendered bounds, caps in the
runtime); the boundary log's lines; failover and failback when the primary ingress stops and
comes back (measured three times, written to ``MESHFED_TEST_ISTIO_REPORT`` if set).

Environment (all binaries from the user's own installs; nothing is fetched):

- ``MESHFED_TEST_ISTIO=DIR``: Istio's ``pilot-discovery`` (istiod), ``pilot-agent`` and
  ``envoy`` (Istio's proxy build, or upstream Envoy), and Istio's Envoy bootstrap template
  ``envoy_bootstrap_tmpl.json`` (as in the ``istio/proxyv2`` image), found in ``DIR``,
  ``DIR/bin``, ``DIR/share``, ``DIR/usr/local/bin`` or ``DIR/var/lib/istio/envoy``; or the
  template in ``MESHFED_TEST_ISTIO_BOOTSTRAP=FILE``. Checked with Istio 1.25.5.
- ``MESHFED_TEST_KUBE_APISERVER=FILE``: a ``kube-apiserver`` (checked with v1.32);
  ``MESHFED_TEST_ETCD=FILE`` (default: ``etcd`` on ``PATH``); ``kubectl`` on ``PATH``.
- Istio's CRDs: ``MESHFED_ISTIO_CRDS=FILE`` (``crd-all.gen.yaml``), else the bundle beside the
  checkout, else CRDs registering the kinds of the npm registry's ``@kubernetes-models/istio``.

Without ``MESHFED_TEST_ISTIO`` the module is skipped (CI has none of these). Everything runs on
127.0.0.0/8 and free ports, in a temporary directory; the tests start every process they use
and stop each by its own process group. istiod runs with ``PILOT_ENABLE_METADATA_EXCHANGE=false``
and ``PILOT_ENABLE_ALPN_FILTER=false`` so that upstream Envoy takes its config (Istio's own
proxy takes it either way).

What the harness adds, as there are no Pods, kubelet, iptables or injection webhook (none of it
meshfed's output; tests/istio_live_fed.py): ``bind`` on each Gateway server (the mesh's ingress
address, the egress proxy's address), so listeners stay on loopback; the application's
Services and, for Pods, WorkloadEntries carrying the injector's label
``security.istio.io/tlsMode: istio``; a ``Sidecar`` per workload binding its listeners to the
proxy's own 127.x address; each proxy on its own 127.x address, with the environment the
injector would give it (every ``proxyMetadata`` entry of the mesh config and of the pod's
``proxy.istio.io/config``). Runs in about three minutes on two shared cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import istio_live_subsets as sub
from istio_live_apps import Reply, http_call, issue_leaf, no_cert_context, tcp_session
from istio_live_env import Proxy
from istio_live_fed import LiveFederation, Workload, loopback_block
from istio_live_kube import Kube
from istio_live_procs import Binaries, Processes, binaries, free_ports
from istio_live_stall import stall_probes
from meshfed.spec.headers import STRIPPED_HEADERS

from istio_registry import cluster_crds
from k8s_schema import CRD_PATH, bundle_present

BINS = binaries()
pytestmark = [
    pytest.mark.skipif(isinstance(BINS, str), reason=str(BINS)),
    pytest.mark.timeout(600),  # a class's federation starts in its first test (1-2 min)
]

Obj = dict[str, Any]
CHECKOUT = "spiffe://web.live.test/ns/shop/sa/checkout"
CATALOG = "spiffe://web.live.test/ns/shop/sa/catalog"
TOKENIZER = "tokenizer.shop.svc.cluster.local"
DENIED = b"access denied\n"
"""What a refused caller reads (the plan's local-reply body for 403), from the ingress or the
exported workload's sidecar; Envoy's own is ``RBAC: access denied``."""
LEDGER = "ledger.shop.svc.cluster.local"
TOKENIZER_SVC = "tokenizer.cards.svc.cluster.local"
LEDGER_SVC = "ledger.cards.svc.cluster.local"
"""The exported workloads' own Services (the mesh's names for them)."""
USER_HTTP_POLICY: Obj = {
    "loadBalancer": {"simple": "RANDOM"},
    "outlierDetection": {"consecutive5xxErrors": 7, "interval": "7s", "baseEjectionTime": "70s"},
    "connectionPool": {
        "tcp": {"maxConnections": 70},
        "http": {"http1MaxPendingRequests": 77, "http2MaxRequests": 777},
    },
}
USER_TCP_POLICY: Obj = {
    "outlierDetection": {"consecutive5xxErrors": 8, "interval": "8s", "baseEjectionTime": "80s"},
    "connectionPool": {
        "tcp": {"maxConnections": 71, "idleTimeout": "42s", "maxConnectionDuration": "3600s"}
    },
}
"""What a workload's owner might say about their Service in their own namespace."""
REPORT: dict[str, Any] = {}


def _crds() -> list[Obj]:
    if bundle_present():
        return [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    return cluster_crds()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Binaries, Processes, Kube]]:
    assert not isinstance(BINS, str)
    root = Path(os.environ.get("MESHFED_TEST_ISTIO_KEEP") or tmp_path_factory.mktemp("istio"))
    procs = Processes()
    kube = Kube(root / "kube", BINS, procs)
    try:
        yield BINS, procs, kube
    finally:
        procs.stop_all()
        report = os.environ.get("MESHFED_TEST_ISTIO_REPORT")
        if report:
            Path(report).write_text(json.dumps(REPORT, indent=1))


def _mesh(name: str, ip: str, port: int, workloads: list[Obj]) -> Obj:
    return {
        "name": name,
        "trustDomain": f"{name}.live.test",
        "ingress": {"address": ip, "port": port},
        "workloads": workloads,
    }


def _w(name: str, ns: str, port: int, protocol: str = "HTTP") -> Obj:
    return {"name": name, "namespace": ns, "serviceAccount": name, "port": port,
            "protocol": protocol}  # fmt: skip


CONSUMER = {
    "checkout": Workload("checkout", "shop", 8080, imports=[(80, "HTTP"), (9000, "TCP")]),
    "catalog": Workload("catalog", "shop", 8080, imports=[(80, "HTTP"), (9000, "TCP")]),
}
WEB = _w("checkout", "shop", 8080), _w("catalog", "shop", 8080)


def _federation(
    live: tuple[Binaries, Processes, Kube], name: str, spec: Obj,
    workloads: dict[str, dict[str, Workload]],
) -> Iterator[LiveFederation]:  # fmt: skip
    bins, procs, kube = live
    root = kube.directory.parent / name
    shutil.rmtree(root, ignore_errors=True)  # a kept directory of an earlier run
    root.mkdir(parents=True)
    fed = LiveFederation(root, bins, procs, kube, spec, workloads)
    clusters = [f"{name}-{m['name']}" for m in spec["spec"]["meshes"]]
    try:
        fed.render()
        fed.start(_crds())
        yield fed
    finally:
        for mesh in fed.meshes.values():
            for proxy in mesh.proxies.values():
                proxy.stop(procs)
            if mesh.istiod is not None and mesh.istiod.proc is not None:
                procs.stop(mesh.istiod.proc)
        kube.stop([c for c in clusters if c in kube.clusters])
        fed.stop()


@pytest.fixture(scope="class")
def federated(live: tuple[Binaries, Processes, Kube]) -> Iterator[LiveFederation]:
    pay, web = loopback_block(), loopback_block()
    p1, p2 = free_ports(2)
    spec = {
        "apiVersion": "meshfed.dev/v1alpha1",
        "kind": "Federation",
        "metadata": {"name": "fed"},
        "spec": {
            "trust": {"mode": "Federated"},
            "meshes": [
                _mesh("pay", f"{pay}.10", p1,
                      [_w("tokenizer", "cards", 8080), _w("ledger", "cards", 9000, "TCP")]),
                _mesh("web", f"{web}.10", p2, list(WEB)),
            ],
            "exports": [
                {"name": "tokenizer", "mesh": "pay", "workload": "cards/tokenizer",
                 "consumers": [{"mesh": "web", "principals": ["ns/shop/sa/checkout"],
                                "methods": ["GET", "POST"], "paths": ["/v1/*"]}],
                 "keepRequestHeaders": ["X-Forwarded-Host"]},
                {"name": "ledger", "mesh": "pay", "workload": "cards/ledger",
                 "consumers": [{"mesh": "web", "principals": ["ns/shop/sa/checkout"]}]},
            ],
            "imports": [
                {"mesh": "web", "host": TOKENIZER, "port": 80, "from": ["pay/tokenizer"]},
                {"mesh": "web", "host": LEDGER, "port": 9000, "from": ["pay/ledger"]},
            ],
        },
    }  # fmt: skip
    workloads = {
        "pay": {
            "tokenizer": Workload("tokenizer", "cards", 8080, exported=True),
            "ledger": Workload("ledger", "cards", 9000, "TCP", exported=True),
            # a workload of the exporting mesh that calls the tokenizer directly
            "forger": Workload("forger", "cards", 8080, imports=[(8080, "HTTP")]),
        },
        "web": CONSUMER,
    }
    yield from _federation(live, "fed", spec, workloads)


@pytest.fixture(scope="class")
def shared(live: tuple[Binaries, Processes, Kube]) -> Iterator[LiveFederation]:
    pay, dr, web = loopback_block(), loopback_block(), loopback_block()
    p1, p2, p3 = free_ports(3)
    consumers = [{"mesh": "web", "principals": ["ns/shop/sa/checkout"],
                  "methods": ["GET", "POST"], "paths": ["/v1/*"]}]  # fmt: skip
    spec = {
        "apiVersion": "meshfed.dev/v1alpha1",
        "kind": "Federation",
        "metadata": {"name": "shr"},
        "spec": {
            "trust": {"mode": "SharedRoot"},
            "meshes": [
                _mesh("pay", f"{pay}.10", p1,
                      [_w("tokenizer", "cards", 8080), _w("ledger", "cards", 9000, "TCP")]),
                _mesh("pay-dr", f"{dr}.10", p2, [_w("tokenizer", "cards", 8080)]),
                _mesh("web", f"{web}.10", p3, list(WEB)),
            ],
            "exports": [
                {"name": "tokenizer", "mesh": "pay", "workload": "cards/tokenizer",
                 "host": "tokenizer.pay.global", "consumers": consumers},
                {"name": "tokenizer", "mesh": "pay-dr", "workload": "cards/tokenizer",
                 "host": "tokenizer.pay-dr.global", "consumers": consumers},
                {"name": "ledger", "mesh": "pay", "workload": "cards/ledger",
                 "consumers": [{"mesh": "web", "principals": ["ns/shop/sa/checkout"]}]},
            ],
            "imports": [
                {"mesh": "web", "host": TOKENIZER, "port": 80,
                 "from": ["pay/tokenizer", "pay-dr/tokenizer"]},
                {"mesh": "web", "host": LEDGER, "port": 9000, "from": ["pay/ledger"]},
            ],
        },
    }  # fmt: skip
    workloads = {
        "pay": {
            "tokenizer": Workload("tokenizer", "cards", 8080, exported=True),
            "ledger": Workload("ledger", "cards", 9000, "TCP", exported=True),
        },
        "pay-dr": {"tokenizer": Workload("tokenizer", "cards", 8080, exported=True)},
        "web": CONSUMER,
    }
    yield from _federation(live, "shr", spec, workloads)


def _xfcc(reply: Reply) -> str:
    return str(reply.json()["headers"].get("x-forwarded-client-cert", ""))


def _user_rule(name: str, policy: Obj) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": f"{name}-owner", "namespace": "cards"},
        "spec": {"host": f"{name}.cards.svc.cluster.local", "trafficPolicy": policy},
    }


def _ingress_clusters(proxy: Proxy) -> dict[str, Obj]:
    dump = proxy.config_dump("?resource=dynamic_active_clusters")
    return {c["cluster"]["name"]: c["cluster"] for c in dump["configs"]}


def _listener(config: Obj, name_part: str) -> Obj:
    for entry in config["configs"]:
        listener = entry.get("active_state", {}).get("listener", {})
        if name_part in listener.get("name", ""):
            return dict(listener)
    raise AssertionError(f"no listener {name_part}")


# ------------------------------------------------------------------------------------------------


class TestFederated:
    """Two organisations, separate roots: pay exports to web."""

    def test_every_object_accepted_and_every_proxy_acks(self, federated: LiveFederation) -> None:
        assert federated.unacked() == []
        mesh = federated.meshes["pay"]
        ingress = federated.proxy("pay", "federation-ingress")
        _address, port = federated.ingress("pay")
        listener = _listener(ingress.config_dump("?resource=dynamic_listeners"), f"_{port}")
        # the EnvoyFilters reached the gateway: limits, refused-handshake log, path rules
        assert listener["listener_filters_timeout"] == "5s"
        assert listener["per_connection_buffer_limit_bytes"] == 32768
        assert any("refused-handshake" in json.dumps(log) for log in listener.get("access_log", []))
        for chain in listener["filter_chains"]:
            assert chain["transport_socket_connect_timeout"] == "5s"
            for f in chain["filters"]:
                config = f.get("typed_config", {})
                if f["name"] == "envoy.filters.network.http_connection_manager":
                    assert config["request_headers_timeout"] == "5s"
                    assert config["stream_idle_timeout"] == "15s"
                    assert config["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
                    assert config["server_header_transformation"] == "PASS_THROUGH"
                    assert config["forward_client_cert_details"] == "SANITIZE_SET"
                if f["name"] == "envoy.filters.network.tcp_proxy":
                    assert config["idle_timeout"] == "300s"  # limits.yaml's EnvoyFilter
        runtime = json.loads(ingress.admin("/runtime"))["entries"]
        assert runtime["overload.global_downstream_max_connections"]["final_value"] == "8192"
        for wildcard in ("0.0.0.0", "::"):
            key = f"envoy.resource_limits.listener.{wildcard}_{port}.connection_limit"
            assert runtime[key]["final_value"] == "8000"
        # the workload's sidecar has the XFCC filter (guards.yaml)
        sidecar = federated.proxy("pay", "tokenizer")
        dump = json.dumps(sidecar.config_dump("?resource=dynamic_listeners"))
        assert "meshfed.xfcc-only-from-ingress" in dump
        assert mesh.istiod is not None
        REPORT["federated_proxies"] = sorted(
            f"{m.name}/{p}" for m in federated.meshes.values() for p in m.proxies
        )

    def test_a_users_destination_rule_reaches_the_ingress(self, federated: LiveFederation) -> None:
        """The exported workloads' owner has DestinationRules of their own (in the service's
        namespace): the federation ingress uses them, together with meshfed's bounds. istiod
        takes one namespace's DestinationRules for a host, the proxy's own first
        (push_context.go ``destinationRule``): a meshfed DestinationRule for the host in the
        gateways' namespace would hide the user's."""
        cluster = federated.meshes["pay"].cluster
        ingress = federated.proxy("pay", "federation-ingress")
        _address, port = federated.ingress("pay")
        user = [_user_rule("tokenizer", USER_HTTP_POLICY), _user_rule("ledger", USER_TCP_POLICY)]
        before = _ingress_clusters(ingress)
        cluster.apply(user)
        try:
            deadline = time.monotonic() + 30
            while True:
                clusters = _ingress_clusters(ingress)
                seen = (
                    clusters[f"outbound|8080||{TOKENIZER_SVC}"],
                    clusters[f"outbound|9000||{LEDGER_SVC}"],
                )
                if all("outlier_detection" in c for c in seen) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            tokenizer, ledger = seen
            # the user's outlier detection, load balancer and connection pool are the ingress's
            assert tokenizer.get("outlier_detection", {}).get("consecutive_5xx") == 7, tokenizer
            assert tokenizer.get("lb_policy") == "RANDOM"
            (threshold,) = tokenizer["circuit_breakers"]["thresholds"]
            assert threshold["max_connections"] == 70
            assert threshold["max_pending_requests"] == 77
            assert threshold["max_requests"] == 777
            assert ledger.get("outlier_detection", {}).get("consecutive_5xx") == 8, ledger
            (threshold,) = ledger["circuit_breakers"]["thresholds"]
            assert threshold["max_connections"] == 71
            # the ingress still reaches the workloads over the mesh's mTLS (auto mTLS)
            for c in seen:
                assert (
                    c["transport_socket_matches"] == before[c["name"]]["transport_socket_matches"]
                )
            # meshfed's bound on an idle TCP session holds at the ingress; the user's session
            # length reaches its tcp_proxy
            listener = _listener(ingress.config_dump("?resource=dynamic_listeners"), f"_{port}")
            (tcp,) = [
                f["typed_config"]
                for chain in listener["filter_chains"]
                for f in chain["filters"]
                if f["name"] == "envoy.filters.network.tcp_proxy"
            ]
            assert tcp["idle_timeout"] == "300s"
            assert tcp["max_downstream_connection_duration"] == "3600s"
            reply = federated.call("web", "checkout", 80, TOKENIZER, "GET", "/v1/a")
            assert reply.status == 200, reply.body
            assert _tcp_through_sidecar(federated, "checkout") == (b"LEDGER READY\n", b"ping\n")
        finally:
            for rule in user:
                cluster.kubectl(
                    "-n", "cards", "delete", "destinationrule", rule["metadata"]["name"]
                )

    def test_a_callers_namespace_rule_does_not_hide_the_imports(
        self, federated: LiveFederation
    ) -> None:
        """A user's ``*.local`` rule in the callers' namespace (shop) covers the egress
        gateway's Service; istiod takes a sidecar's rules from its own namespace first
        (push_context.go ``destinationRule``), so without meshfed's copy there the subsets
        vanish and the imports fail. With the copy (exact host: ``MostSpecificHostMatch``) the
        imports keep working. Then the same-host cases of ``mergeDestinationRule``, each
        checked against the audit's emulation of it over the live objects."""
        cluster = federated.meshes["web"].cluster
        checkout = federated.proxy("web", "checkout")
        catalog = federated.proxy("web", "catalog")
        subset = "tokenizer-pay-fed-global"
        local = f"outbound|80||{TOKENIZER}"  # the import's own name: reached by *.local too
        copy = sub.applied_form(cluster.get("destinationrule", sub.COPY, "shop"))
        assert copy["spec"]["exportTo"] == ["."]
        assert subset in sub.subset_clusters(checkout)
        # (a marker istiod would not set by itself: its default balancer is LEAST_REQUEST)
        random = {"loadBalancer": {"simple": "RANDOM"}}
        wildcard = sub.rule("user-wildcard", "shop", "*.local", trafficPolicy=random)

        def works() -> None:
            reply = federated.call("web", "checkout", 80, TOKENIZER, "GET", "/v1/a")
            assert reply.status == 200, reply.body
            assert _tcp_through_sidecar(federated, "checkout") == (b"LEDGER READY\n", b"ping\n")

        def has_subsets(proxy: Proxy) -> Callable[[], bool]:
            return lambda: subset in sub.subset_clusters(proxy)

        def lacks_subsets(proxy: Proxy) -> Callable[[], bool]:
            return lambda: subset not in sub.subset_clusters(proxy)

        def outliers(errors: int) -> Obj:
            return {"outlierDetection": {"consecutive5xxErrors": errors, "interval": "9s"}}

        def ejects_after(errors: int) -> Callable[[], bool]:
            def seen() -> bool:
                found = sub.subset_clusters(checkout).get(subset, {})
                return bool(found.get("outlier_detection", {}).get("consecutive_5xx") == errors)

            return seen

        def delete(*names: str) -> None:
            for name in names:
                cluster.kubectl("-n", "shop", "delete", "destinationrule", name,
                                "--ignore-not-found")  # fmt: skip

        try:
            cluster.apply([wildcard])
            sub.wait_until(  # the user's rule reached the sidecar
                "*.local on the import's cluster",
                lambda: sub.clusters(checkout)[local].get("lb_policy") == "RANDOM",
            )
            assert subset in sub.subset_clusters(checkout)
            works()
            REPORT["shadow_with_copy"] = "200 and TCP greeting"
            # without meshfed's copy: the rule of *.local hides the subsets
            delete(sub.COPY)
            sub.wait_until("subsets gone without the copy", lacks_subsets(checkout))
            reply = federated.call("web", "checkout", 80, TOKENIZER, "GET", "/v1/a")
            tcp = _tcp_through_sidecar(federated, "checkout")
            REPORT["shadow_without_copy"] = {"http": reply.status, "tcp": repr(tcp)}
            assert reply.status == 503 and tcp[1] == b"", (reply.status, tcp)
            cluster.apply([copy])
            sub.wait_until("subsets back with the copy", has_subsets(checkout))
            works()
            # a user's rule for exactly the egress host, created after the copy, exportTo
            # other than the copy's: not merged, the one created last (the user's) is used
            time.sleep(1.1)  # creation times are in seconds: a later second
            exact = sub.rule("user-exact", "shop", sub.EGRESS, exportTo=["*"])
            cluster.apply([exact])
            sub.wait_until("an exact, later rule hides the copy", lacks_subsets(checkout))
            entries, used = sub.emulated(cluster, "shop")
            assert len(entries) == 2 and used is not None
            assert [r.name for r in used.rules] == ["user-exact"]
            delete("user-exact")
            sub.wait_until("subsets back", has_subsets(checkout))
            # the same with exportTo ["."]: merged into the copy, its top-level policy applies
            merged = sub.rule("user-exact", "shop", sub.EGRESS, exportTo=["."],
                              trafficPolicy=outliers(9))  # fmt: skip
            cluster.apply([merged])
            sub.wait_until("a merged rule's policy on the subset", ejects_after(9))
            works()
            entries, used = sub.emulated(cluster, "shop")
            assert len(entries) == 1 and used is not None
            assert sorted(r.name for r in used.rules) == [sub.COPY, "user-exact"]
            delete("user-exact")
            sub.wait_until("the merged policy gone", lambda: not ejects_after(9)())
            # exportTo strictly containing the copy's, created later: merged into the copy
            # and (both without selectors) not kept on its own, whatever the comment in
            # mergeDestinationRule says: the subsets stay, the user's policy reaches them
            time.sleep(1.1)
            wider = sub.rule("user-exact", "shop", sub.EGRESS, exportTo=[".", "cards"],
                             trafficPolicy=outliers(11))  # fmt: skip
            cluster.apply([wider])
            sub.wait_until("a wider, later rule merged into the copy", ejects_after(11))
            works()
            entries, used = sub.emulated(cluster, "shop")
            assert len(entries) == 1 and used is not None
            assert [r.name for r in used.rules] == [sub.COPY, "user-exact"]
            delete("user-exact")
            # a selector rule for exactly the egress host takes the copy in (equal exportTo
            # once a selector makes its own ["."]): the sidecars it does not select get none
            selected = sub.rule("user-selected", "shop", sub.EGRESS,
                                workloadSelector={"matchLabels": {"app": "catalog"}})  # fmt: skip
            cluster.apply([selected])
            sub.wait_until("unselected sidecar without subsets", lacks_subsets(checkout))
            assert subset in sub.subset_clusters(catalog)  # the selected one: merged
            entries, used = sub.emulated(cluster, "shop")
            assert used is None and len(entries) == 1
            assert [r.name for r in entries[0].rules] == ["user-selected", sub.COPY]
            REPORT["selector_rule_swallows_copy"] = True
        finally:
            delete("user-wildcard", "user-exact", "user-selected")
            cluster.apply([copy])
        sub.wait_until("subsets back at the end", has_subsets(checkout))
        works()

    def test_the_cross_mesh_call_carries_the_callers_identity(
        self, federated: LiveFederation
    ) -> None:
        reply = federated.call("web", "checkout", 80, TOKENIZER, "POST", "/v1/charge")
        assert reply.status == 200, reply.body
        seen = reply.json()["headers"]
        first = seen["x-forwarded-client-cert"].split(",")[0]
        assert f"URI={CHECKOUT}" in first
        assert first.startswith("By=spiffe://pay.live.test/ns/meshfed-system/sa/")
        assert seen["x-meshfed-caller"] == CHECKOUT
        # straight at the ingress: nothing about the mesh's insides comes back
        address, port = federated.ingress("pay")
        context = federated.leaf("web", "checkout", [CHECKOUT]).context()
        context.set_alpn_protocols(["http/1.1"])
        sni = "tokenizer.pay.fed.global"
        direct = http_call(address, port, sni, "GET", "/v1/a", context=context, sni=sni)
        assert direct.status == 200
        for header in ("server", "x-powered-by", "x-envoy-upstream-service-time"):
            assert header not in direct.headers

    def test_the_workload_guard(self, federated: LiveFederation) -> None:
        host = "tokenizer.cards.svc.cluster.local"
        # a workload of the exporting mesh, through its own sidecar: its own traffic passes,
        # the caller header (only the ingress sets it) is refused at the workload's sidecar
        assert federated.call("pay", "forger", 8080, host, "GET", "/v1/a").status == 200
        forged = {"x-meshfed-caller": CHECKOUT}
        reply = federated.call("pay", "forger", 8080, host, "GET", "/v1/a", forged)
        assert reply.status == 403
        # its own sidecar drops an XFCC its application sends (outbound SANITIZE)
        xfcc = {"x-forwarded-client-cert": f"By=spiffe://x;URI={CHECKOUT}"}
        reply = federated.call("pay", "forger", 8080, host, "GET", "/v1/a", xfcc)
        assert reply.status == 200 and CHECKOUT not in _xfcc(reply)
        # a mesh workload speaking mTLS itself with its own certificate: the XFCC it sends is
        # refused by the workload's sidecar (the EnvoyFilter of guards.yaml)
        raw = federated.leaf("pay", "forger-raw", ["spiffe://pay.live.test/ns/cards/sa/forger"])
        sidecar = federated.proxy("pay", "tokenizer")
        for headers, status in (({}, 200), (xfcc, 403), ({**xfcc, **forged}, 403)):
            context = raw.context()
            context.set_alpn_protocols(["istio-http/1.1"])
            reply = http_call(sidecar.ip, 8080, host, "GET", "/v1/a", headers, context=context,
                              sni=f"outbound_.8080_._.{host}")  # fmt: skip
            assert reply.status == status, (headers, reply.body)
            if status == 403:  # the sidecar's own reply, worded by its local-reply EnvoyFilter
                assert reply.body == DENIED, reply.body
        # a caller the export does not allow is refused at the ingress, in the plan's words
        reply = federated.call("web", "catalog", 80, TOKENIZER, "GET", "/v1/a")
        assert (reply.status, reply.body) == (403, DENIED)
        address, port = federated.ingress("pay")
        sni = "tokenizer.pay.fed.global"
        # straight at the ingress: no "RBAC: access denied", no "server: istio-envoy"
        context = federated.leaf("web", "catalog", [CATALOG]).context()
        context.set_alpn_protocols(["http/1.1"])
        reply = http_call(address, port, sni, "GET", "/v1/a", context=context, sni=sni)
        assert (reply.status, reply.body) == (403, DENIED)
        assert "server" not in reply.headers, reply.headers
        # two URI SANs, one allowed: the ingress lets it through (Istio: any SAN), the
        # workload's guard refuses it (x-meshfed-caller is both, joined by ','); the sidecar's
        # 403 reaches the caller in the same words
        for order in ([CHECKOUT, CATALOG], [CATALOG, CHECKOUT]):
            context = federated.leaf("web", "two-" + order[0][-7:], order).context()
            context.set_alpn_protocols(["http/1.1"])
            reply = http_call(address, port, sni, "GET", "/v1/a", context=context, sni=sni)
            assert (reply.status, reply.body) == (403, DENIED), order
        time.sleep(2.5)  # Envoy flushes its access log every second
        lines = federated.access_log("pay", "federation-ingress")
        two = [x for x in lines if x.get("caller") == f"{CHECKOUT},{CATALOG}"]
        assert two and two[-1]["decision"] == "allowed" and two[-1]["code"] == 403
        denied = [x for x in lines if x.get("caller") == CATALOG and x.get("code") == 403]
        assert denied and denied[-1]["decision"] == "denied"

    def test_override_headers_do_not_reach_the_workload(self, federated: LiveFederation) -> None:
        sent = {h: "forged" for h in STRIPPED_HEADERS}
        reply = federated.call("web", "checkout", 80, TOKENIZER, "GET", "/v1/a", sent)
        assert reply.status == 200
        seen = reply.json()["headers"]
        leaked = sorted(h for h in STRIPPED_HEADERS if "forged" in seen.get(h, ""))
        assert leaked == ["x-forwarded-host"]  # the one this export keeps
        assert seen["x-meshfed-caller"] == CHECKOUT

    def test_every_phase_of_a_connection_is_bounded(self, federated: LiveFederation) -> None:
        """Each stalled connection is closed by the ingress before a deadline that lies past
        the plan's bound and short of Istio's own default (handshake 15 s, no request-headers
        bound, stream idle off, idle 1 h): the rendered bound is the one that holds. The
        times are in the report; how long is bench's business, not an assertion here."""
        address, port = federated.ingress("pay")
        leaf = federated.leaf("web", "stall", [CHECKOUT])
        deadlines = {
            "nothing": 12.0,  # plan: 5 s (listener filters); Istio: 15 s
            "partial ClientHello": 12.0,
            "whole ClientHello": 12.0,  # plan: 5 s (handshake); Istio: 15 s
            "half-sent headers": 12.0,  # plan: 5 s (+1 s delayed close); Istio: none
            "half-sent body": 25.0,  # plan: 15 s stream idle (+1 s); Istio: off
            "idle connection": 45.0,  # plan: 30 s; Istio: 1 h
        }
        sni = "tokenizer.pay.fed.global"
        closed = stall_probes(address, port, sni, leaf.context(), deadlines)
        REPORT["federated_stalls_s"] = closed
        assert [probe for probe, seconds in closed.items() if seconds is None] == []

    def test_the_boundary_log_names_the_caller(self, federated: LiveFederation) -> None:
        address, port = federated.ingress("pay")
        assert federated.call("web", "checkout", 80, TOKENIZER, "GET", "/v1/log").status == 200
        assert federated.call("web", "catalog", 80, TOKENIZER, "GET", "/v1/log").status == 403
        # the allowed identity, from a CA the ingress does not trust
        stranger = issue_leaf(federated.root / "callers", "stranger", [CHECKOUT], None, None)
        refused = {
            "unknown CA": (stranger.context(), "tokenizer.pay.fed.global"),
            "no client certificate": (no_cert_context(), "tokenizer.pay.fed.global"),
            "SAN not admitted": (
                federated.leaf("web", "catalog", [CATALOG]).context(),
                "ledger.pay.fed.global",
            ),
        }
        for context, sni in refused.values():
            before, after, error = tcp_session(address, port, sni, context)
            assert (before, after) == (b"", b"") and error
        time.sleep(2.5)
        lines = federated.access_log("pay", "federation-ingress")
        requests = [x for x in lines if x.get("path") == "/v1/log"]
        assert {(x["caller"], x["decision"], x["code"]) for x in requests} == {
            (CHECKOUT, "allowed", 200),
            (CATALOG, "denied", 403),
        }
        handshakes = [x for x in lines if x.get("kind") == "refused-handshake"]
        failures = {x["tls_failure"] for x in handshakes}
        assert any("self_signed_certificate_in_certificate_chain" in f for f in failures)
        assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in f for f in failures)
        san = [x for x in handshakes if "SAN_matcher" in x["tls_failure"]]
        assert san and san[-1]["caller_presented"] == CATALOG
        assert san[-1]["sni"] == "ledger.pay.fed.global"


class TestSharedRoot:
    """One root; pay exports tokenizer (HTTP) and ledger (TCP, server-first) to web, and pay-dr
    answers the tokenizer when pay is down."""

    def test_every_proxy_acks(self, shared: LiveFederation) -> None:
        assert shared.unacked() == []

    def test_cross_mesh_http_and_a_server_first_tcp_export(self, shared: LiveFederation) -> None:
        reply = shared.call("web", "checkout", 80, TOKENIZER, "POST", "/v1/tokenize")
        assert reply.status == 200
        assert reply.json()["workload"] == "pay/cards/tokenizer"
        assert reply.json()["headers"]["x-meshfed-caller"] == CHECKOUT
        assert shared.call("web", "catalog", 80, TOKENIZER, "POST", "/v1/tokenize").status == 403
        greeting = _tcp_through_sidecar(shared, "checkout")
        assert greeting == (b"LEDGER READY\n", b"ping\n")
        # a caller the TCP export does not name: refused in the handshake, no byte
        assert _tcp_through_sidecar(shared, "catalog") == (b"", b"")

    def test_failover_and_failback(self, shared: LiveFederation) -> None:
        runs = [_outage(shared, outage=8.0) for _ in range(3)]
        REPORT["shared_failover_runs"] = runs
        for run in runs:
            assert run["answered_by_dr_during_outage"] > 0
            assert run["back_on_primary"]
            assert run["failed"] <= max(2, run["calls"] // 50), run


def _tcp_through_sidecar(fed: LiveFederation, workload: str) -> tuple[bytes, bytes]:
    import socket

    sock = socket.create_connection((fed.proxy("web", workload).ip, 9000), timeout=5)
    before, after = b"", b""
    try:
        sock.settimeout(1.5)
        with contextlib.suppress(TimeoutError):
            before = sock.recv(4096)
        try:
            sock.sendall(b"ping\n")
            sock.settimeout(3)
            after = sock.recv(4096)
        except OSError:
            pass
    finally:
        sock.close()
    return before, after


def _outage(fed: LiveFederation, outage: float) -> dict[str, Any]:
    """Calls every 50 ms while the primary's ingress stops for ``outage`` seconds and starts
    again; who answered each, and when calls were all back on the primary."""
    samples: list[tuple[float, int | str, str | None]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:
                reply = fed.call("web", "checkout", 80, TOKENIZER, "POST", "/v1/t", timeout=10)
                who = reply.json()["workload"].split("/")[0] if reply.status == 200 else None
                samples.append((t, reply.status, who))
            except OSError as exc:
                samples.append((t, type(exc).__name__, None))
            time.sleep(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(2)
    ingress = fed.proxy("pay", "federation-ingress")
    t_stop = time.monotonic()
    ingress.stop(fed.procs)
    time.sleep(outage)
    t_start = time.monotonic()
    ingress.start(fed.procs)
    t_ready = time.monotonic()
    deadline = t_ready + 60
    while time.monotonic() < deadline:
        recent = [s for s in samples if s[0] > time.monotonic() - 3]
        if len(recent) > 10 and all(s[2] == "pay" for s in recent):
            break
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    thread.join()
    after = [s for s in samples if s[0] >= t_start]
    last_dr = max((s[0] for s in after if s[2] == "pay-dr"), default=t_start)
    return {
        "calls": len(samples),
        "failed": sum(1 for s in samples if s[1] != 200),
        "answered_by_dr_during_outage": sum(
            1 for s in samples if t_stop < s[0] < t_start and s[2] == "pay-dr"
        ),
        "first_dr_after_stop_s": round(
            min((s[0] for s in samples if s[0] > t_stop and s[2] == "pay-dr"), default=0)
            - t_stop, 2,
        ),
        "restart_to_ready_s": round(t_ready - t_start, 2),
        "back_on_primary": any(s[2] == "pay" for s in after),
        "failback_after_ready_s": round(max(0.0, last_dr - t_ready), 2),
        "failback_after_restart_s": round(max(0.0, last_dr - t_start), 2),
    }  # fmt: skip
