"""The Istio output says and does only what holds on real Istio (issue #13, "On real Istio").

Each test names the Istio behaviour it relies on; the facts were seen on istiod 1.25.5 or read in
Istio's source (tag 1.25.5), as cited. The authorization these objects amount to is checked by
the oracle (tests/test_authz_matrix.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from meshfed.cli.main import main
from meshfed.plan import LocalReplyPolicy
from meshfed.plan.build import CONNECTION_LIFE
from meshfed.render.boundary_log import HANDSHAKE_FIELDS, REFUSED_HANDSHAKE
from meshfed.render.istio.filters import CEL_FILTER, FILE_LOG, HCM
from meshfed.spec.load import load_spec
from meshfed.workspace import preview_istio
from test_render_envoy import ENVOY, envoy_validates, local_reply_body

from conftest import EXAMPLES, Rendered
from k8s_schema import validate_manifest

Obj = dict[str, Any]
FORMS = ("istio-operator.yaml", "istiod-values.yaml", "sail-istio.yaml")


def _forms(rendered: Rendered, mesh: str) -> dict[str, tuple[Obj, dict[str, str]]]:
    """(meshConfig, istiod env) as each install form says them."""
    docs = rendered.install_docs(mesh)
    operator, values, sail = (docs[f] for f in FORMS)
    return {
        "istioctl": (operator["spec"]["meshConfig"], operator["spec"]["values"]["pilot"]["env"]),
        "helm": (values["meshConfig"], values["pilot"]["env"]),
        "sail": (sail["spec"]["values"]["meshConfig"], sail["spec"]["values"]["pilot"]["env"]),
    }


# --- 1. the roots of caCertificates reach the proxies; 7. DNS; all install forms alike -----------


@pytest.mark.parametrize("example", ["bank_rendered", "partners_rendered"])
def test_every_install_form_says_the_same(example: str, request: pytest.FixtureRequest) -> None:
    rendered: Rendered = request.getfixturevalue(example)
    for mesh in rendered.meshes:
        forms = _forms(rendered, mesh)
        first = next(iter(forms.values()))
        assert all(form == first for form in forms.values()), mesh
        config, env = first
        metadata = config["defaultConfig"]["proxyMetadata"]
        # istiod builds the trust bundle (ISTIO_MULTIROOT_MESH) and every pilot-agent fetches it
        # over PCDS (PROXY_CONFIG_XDS_AGENT, pkg/istio-agent/xds_proxy.go): both, or the roots of
        # caCertificates never reach a sidecar (seen on istiod 1.25.5).
        assert env["ISTIO_MULTIROOT_MESH"] == "true"
        assert metadata["PROXY_CONFIG_XDS_AGENT"] == "true"
        # Local names: DNS capture and auto-allocation v2; the deprecated v1 switch is gone.
        assert metadata["ISTIO_META_DNS_CAPTURE"] == "true"
        assert env["PILOT_ENABLE_IP_AUTOALLOCATE"] == "true"
        assert "ISTIO_META_DNS_AUTO_ALLOCATE" not in metadata
        plan = rendered.workspace.plan.mesh(mesh)
        assert config["outboundTrafficPolicy"] == {"mode": plan.boundary.outbound}
        assert plan.boundary.outbound == "REGISTRY_ONLY"


def test_install_forms_are_beside_the_manifests_and_never_applied(bank_rendered: Rendered) -> None:
    for mesh in bank_rendered.meshes:
        mesh_dir = bank_rendered.out / mesh
        assert not (mesh_dir / "secrets" / "istio-operator.yaml").exists()  # moved (README)
        kustomization = yaml.safe_load((mesh_dir / "kustomization.yaml").read_text())
        for name in FORMS:
            assert (mesh_dir / name).is_file() and name not in kustomization["resources"]
        docs = bank_rendered.install_docs(mesh)
        assert docs["istio-operator.yaml"]["kind"] == "IstioOperator"
        assert "kind" not in docs["istiod-values.yaml"]  # Helm values, not an object
        sail = docs["sail-istio.yaml"]
        assert (sail["apiVersion"], sail["kind"]) == ("sailoperator.io/v1", "Istio")
        assert "namespace" not in sail["metadata"]  # cluster-scoped
        assert sail["spec"]["namespace"] == "istio-system"
        assert sail["spec"]["version"].startswith("v1.25")


def _auto_allocated(entry: Obj, env: dict[str, str]) -> bool:
    """Istio 1.25's rule for an address from the allocator in a ServiceEntry's status
    (pilot/pkg/networking/serviceentry/ip_autoallocation.go shouldV2AutoAllocateIPFromPieces)."""
    labels = entry["metadata"].get("labels", {})
    return (
        env.get("PILOT_ENABLE_IP_AUTOALLOCATE", "true") == "true"
        and entry["spec"].get("resolution", "NONE") != "NONE"
        and labels.get("networking.istio.io/enable-autoallocate-ip", "").lower() != "false"
        and not entry["spec"].get("addresses")
    )


def test_import_names_get_an_address_and_resolve(bank_rendered: Rendered) -> None:
    """With an address the DNS proxy's name table answers the name (pkg/dns/server/
    name_table.go skips a service without one) and a TCP import binds <address>:<port>, not
    0.0.0.0:<port> (which sent every connection to that port, to any address, to the
    federation)."""
    plan = bank_rendered.workspace.plan
    _, env = _forms(bank_rendered, "web")["helm"]
    entries = {
        e["spec"]["hosts"][0]: e
        for e in bank_rendered.docs("web", "ServiceEntry")
        if e["metadata"]["name"].startswith("import-")
    }
    imports = plan.mesh("web").imports
    assert sorted(entries) == sorted(i.local_host for i in imports)
    assert any(i.protocol == "TCP" for i in imports)
    for entry in entries.values():
        assert entry["spec"]["resolution"] == "STATIC" and "endpoints" not in entry["spec"]
        assert _auto_allocated(entry, env), entry


# --- 2. no server header; 3. boundary parity of headers ------------------------------------------


def test_gateways_add_no_server_header_and_routes_remove_the_workloads(
    bank_rendered: Rendered,
) -> None:
    plan = bank_rendered.workspace.plan
    for mesh in plan.meshes:
        for deployment in bank_rendered.docs(mesh.name, "Deployment"):
            if deployment["metadata"]["name"] not in ("federation-ingress", "federation-egress"):
                continue
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            config = json.loads(annotations["proxy.istio.io/config"])
            # server.disabled: no server name and PASS_THROUGH (httproute.go
            # GetProxyHeadersFromProxyConfig), local replies (403, 404, 400) included;
            # envoyDebugHeaders.disabled: the router's suppress_envoy_headers.
            assert config["proxyHeaders"] == {
                "server": {"disabled": True},
                "envoyDebugHeaders": {"disabled": True},
            }
            assert config["gatewayTopology"] == {"forwardClientCertDetails": "SANITIZE_SET"}
        for vs in bank_rendered.docs(mesh.name, "VirtualService"):
            if not vs["metadata"]["name"].startswith("ingress-"):
                continue
            for route in vs["spec"].get("http", []):  # Istio: per route only
                headers = route["headers"]
                assert headers["response"]["remove"] == list(mesh.boundary.response_headers_removed)
                assert headers["request"]["remove"] == list(mesh.boundary.request_headers_removed)
                assert "server" in headers["response"]["remove"]
                assert "x-forwarded-for" in headers["request"]["remove"]


# --- 3. boundary monitoring: the caller's identity, every refused handshake ----------------------


def _ingress_filter(rendered: Rendered, mesh: str) -> Obj:
    # The ingress's boundary filter (its limits have their own: render/istio/limits.py).
    (envoy_filter,) = [
        f
        for f in rendered.docs(mesh, "EnvoyFilter")
        if f["metadata"]["name"] == "federation-ingress-boundary"
    ]
    return envoy_filter


def test_refused_handshakes_are_logged_by_one_listener_patch(bank_rendered: Rendered) -> None:
    mesh = bank_rendered.workspace.plan.mesh("payments")
    envoy_filter = _ingress_filter(bank_rendered, "payments")
    assert envoy_filter["apiVersion"] == "networking.istio.io/v1alpha3"  # its only version
    assert validate_manifest(envoy_filter) == []
    spec = envoy_filter["spec"]
    assert spec["workloadSelector"] == {"labels": {"istio": "federation-ingress"}}
    (service,) = [
        s
        for s in bank_rendered.docs("payments", "Service")
        if s["metadata"]["name"] == "federation-ingress"
    ]
    (port,) = service["spec"]["ports"]
    listener, hcm = spec["configPatches"]
    # A listener patch matches the port the gateway binds: the Service's targetPort.
    assert listener["applyTo"] == "LISTENER"
    assert listener["match"] == {
        "context": "GATEWAY",
        "listener": {"portNumber": port["targetPort"]},
    }
    assert listener["patch"]["operation"] == "MERGE"  # appended to Istio's NR log
    (log,) = listener["patch"]["value"]["access_log"]
    assert list(listener["patch"]["value"]) == ["access_log"]
    assert log["filter"]["extension_filter"]["typed_config"] == {
        "@type": CEL_FILTER,
        "expression": REFUSED_HANDSHAKE,
    }
    fields = log["typed_config"]["log_format"]["json_format"]
    assert log["typed_config"]["@type"] == FILE_LOG
    assert {k: fields[k] for k in HANDSHAKE_FIELDS} == HANDSHAKE_FIELDS
    assert fields["mesh"] == mesh.name
    # The path policy, scoped to the ingress's connection managers.
    assert hcm["applyTo"] == "NETWORK_FILTER"
    assert hcm["match"]["listener"]["filterChain"]["filter"]["name"] == (
        "envoy.filters.network.http_connection_manager"
    )
    replies = hcm["patch"]["value"]["typed_config"].pop("local_reply_config")
    assert hcm["patch"] == {
        "operation": "MERGE",
        "value": {
            "typed_config": {
                "@type": HCM,
                "normalize_path": True,
                "merge_slashes": True,
                "path_with_escaped_slashes_action": "REJECT_REQUEST",
            }
        },
    }
    # The replies the gateway makes itself say what their status says (istiod sets no
    # local_reply_config of its own: the merge is the whole of it).
    _assert_neutral(replies, mesh.boundary.local_replies)


def _assert_neutral(config: Obj, policy: LocalReplyPolicy) -> None:
    assert local_reply_body(config, 403) == "access denied\n"  # not "RBAC: access denied"
    assert local_reply_body(config, 503) == "service unavailable\n"
    for status in (400, 404, 426, 431, 500, 501, 502, 504, 418, 599):
        assert local_reply_body(config, status) == policy.body(status)
    assert local_reply_body(config, 302) is None


def test_exported_workloads_sidecars_word_their_own_replies(bank_rendered: Rendered) -> None:
    """The sidecar of each exported HTTP workload answers for it (the application down: 503
    ``upstream connect error ... reset reason: remote connection failure``; its guard: 403
    ``RBAC: access denied``), and the ingress passes that on as the workload's own: each gets
    an EnvoyFilter on its inbound connection managers, and no other workload does."""
    for mesh in bank_rendered.workspace.plan.meshes:
        filters = [
            f
            for f in bank_rendered.docs(mesh.name, "EnvoyFilter")
            if f["metadata"]["name"].startswith("meshfed-replies-")
        ]
        assert len(filters) == len(mesh.workload_guards)
        for guard, envoy_filter in zip(mesh.workload_guards, filters, strict=True):
            assert validate_manifest(envoy_filter) == []
            workload = guard.workload
            assert envoy_filter["metadata"]["namespace"] == workload.namespace
            spec = envoy_filter["spec"]
            # The same pods as its guard (AuthorizationPolicy meshfed-guard-*).
            assert spec["workloadSelector"] == {"labels": {"app": workload.name}}
            (patch,) = spec["configPatches"]
            assert patch["applyTo"] == "NETWORK_FILTER"
            assert patch["match"] == {
                "context": "SIDECAR_INBOUND",
                "listener": {
                    "filterChain": {
                        "filter": {"name": "envoy.filters.network.http_connection_manager"}
                    }
                },
            }
            assert patch["patch"]["operation"] == "MERGE"
            typed = patch["patch"]["value"]["typed_config"]
            assert list(typed) == ["@type", "local_reply_config"] and typed["@type"] == HCM
            _assert_neutral(typed["local_reply_config"], mesh.boundary.local_replies)
    # payments exports cards/tokenizer over HTTP and ledger over TCP: only the tokenizer.
    names = [f["metadata"]["name"] for f in bank_rendered.docs("payments", "EnvoyFilter")]
    assert [n for n in names if n.startswith("meshfed-replies-")] == ["meshfed-replies-tokenizer"]


def test_a_mesh_that_exports_nothing_has_no_filter(bank_rendered: Rendered) -> None:
    # No ingress listener to patch; the egress (web imports) has its limits only.
    names = [f["metadata"]["name"] for f in bank_rendered.docs("web", "EnvoyFilter")]
    assert names == ["federation-egress-limits"]


@pytest.mark.skipif(not os.access(ENVOY, os.X_OK), reason="no envoy binary")
def test_envoy_accepts_what_istio_would_merge(bank_rendered: Rendered, tmp_path: Path) -> None:
    """istiod merges the patch values into a listener and its connection manager, and gives
    the gateway's HCM and tcp_proxy the provider's format: Envoy 1.40 accepts all of it (unknown
    command operators, fields or filter names are refused at load)."""
    envoy_filter = _ingress_filter(bank_rendered, "payments")
    listener_patch, hcm_patch = envoy_filter["spec"]["configPatches"]
    (values,) = bank_rendered.install_docs("payments")["istiod-values.yaml"]["meshConfig"][
        "extensionProviders"
    ][:1]
    provider_log = {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_LOG,
            "path": "/dev/stdout",
            "log_format": {"json_format": values["envoyFileAccessLog"]["logFormat"]["labels"]},
        },
    }
    hcm = {
        **hcm_patch["patch"]["value"]["typed_config"],
        "stat_prefix": "ingress",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "x",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
        "access_log": [provider_log],
    }
    tcp = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp",
        "cluster": "backend",
        "access_log": [provider_log],
    }
    listener = {
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filter_chain_match": {"server_names": ["a.test"]},
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            },
            {
                "filter_chain_match": {"server_names": ["b.test"]},
                "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}],
            },
        ],
        **listener_patch["patch"]["value"],
    }
    config = {
        "static_resources": {
            "listeners": [listener],
            "clusters": [
                {
                    "name": "backend",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "backend", "endpoints": []},
                }
            ],
        }
    }
    envoy_validates(tmp_path / "gateway.json", config)


# --- 4. TCP exports pin their callers in the handshake --------------------------------------------


def test_tcp_exports_list_exactly_their_allowed_identities(bank_rendered: Rendered) -> None:
    plan = bank_rendered.workspace.plan
    for mesh in plan.meshes:
        for gateway in bank_rendered.docs(mesh.name, "Gateway"):
            for server in gateway["spec"]["servers"]:
                planned = mesh.ingress.server(server["hosts"][0])
                if planned is None:
                    continue  # the egress
                tls = server["tls"]
                if planned.protocol == "HTTP":
                    assert "subjectAltNames" not in tls  # a logged 403, as locally
                    continue
                # Full SPIFFE IDs: Istio prepends nothing here (unlike principals).
                assert tls["subjectAltNames"] == sorted(
                    p.value for rule in planned.allow for p in rule.principals
                )
                assert all(s.startswith("spiffe://") for s in tls["subjectAltNames"])


def test_a_tcp_export_admitting_by_prefix_cannot_be_pinned(tmp_path: Path) -> None:
    text = (EXAMPLES / "bank.yaml").read_text()
    text = text.replace(
        "principals: [ns/shop/sa/checkout]\n  imports", "principals: ['ns/shop/*']\n  imports"
    )
    spec = tmp_path / "bank.yaml"
    spec.write_text(text)
    (payments,) = [r for r in preview_istio(load_spec(spec)) if r.mesh == "payments"]
    (gateway,) = [d for d in payments.files["ingress-gateway.yaml"] if d["kind"] == "Gateway"]
    ledger = next(s for s in gateway["spec"]["servers"] if s["hosts"][0].startswith("ledger"))
    assert "subjectAltNames" not in ledger["tls"]  # exact only; audit: tcp-handshake-pins


# --- 6. failback: the life of a pooled connection -------------------------------------------------


def test_http_import_subsets_bound_connection_life_tcp_ones_do_not(bank_rendered: Rendered) -> None:
    plan = bank_rendered.workspace.plan
    web = plan.mesh("web")
    rules = [
        d
        for d in bank_rendered.docs("web", "DestinationRule")
        if d["metadata"]["name"] == "federation-egress-imports"
    ]  # meshfed-system's, and the callers' copies
    assert len(rules) == 1 + len(web.caller_namespaces)
    for rule, route in [(r, i) for r in rules for i in web.imports]:
        subsets = {
            s["trafficPolicy"]["tls"]["sni"]: s["trafficPolicy"] for s in rule["spec"]["subsets"]
        }
        policy = subsets[route.wire_host]
        if route.protocol == "HTTP":
            assert route.connection_life == CONNECTION_LIFE
            assert policy["connectionPool"] == {
                "tcp": {"maxConnectionDuration": f"{CONNECTION_LIFE.total_seconds():g}s"}
            }
        else:
            # A subset's pool never reaches tcp_proxy (networkfilter.go reads the top level):
            # nothing would bound it, and a bound there would cut the application's session.
            assert route.connection_life is None and "connectionPool" not in policy


# --- secrets for GitOps ---------------------------------------------------------------------------


def test_external_secrets_hold_no_key_and_name_every_value(tmp_path: Path) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    args = ["render", str(EXAMPLES / "bank.yaml"), "--out", str(out), "--state", str(state)]
    result = CliRunner().invoke(main, [*args, "--secrets", "external-secrets"])
    assert result.exit_code == 2 and "--secret-store" in result.output
    result = CliRunner().invoke(
        main, [*args, "--secrets", "external-secrets", "--secret-store", "vault"]
    )
    assert result.exit_code == 0, result.output
    for mesh_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        for path in (mesh_dir / "secrets").glob("*.yaml"):
            text = path.read_text()
            assert "BEGIN" not in text and "LS0tLS1" not in text  # no PEM, plain or base64
            (doc,) = yaml.safe_load_all(text)
            assert doc["apiVersion"] == "external-secrets.io/v1"
            assert doc["kind"] == "ExternalSecret"
            spec = doc["spec"]
            assert spec["secretStoreRef"] == {"name": "vault", "kind": "ClusterSecretStore"}
            assert spec["target"]["name"] == doc["metadata"]["name"]
            keys = {d["remoteRef"]["key"] for d in spec["data"]}
            (key,) = keys
            assert key == f"meshfed/bank/{mesh_dir.name}/{doc['metadata']['name']}"
            values = state / "secret-store" / f"{key}.json"
            assert oct(values.stat().st_mode & 0o777) == "0o600"
            stored = json.loads(values.read_text())
            assert sorted(stored) == sorted(d["remoteRef"]["property"] for d in spec["data"])
            assert all(d["secretKey"] == d["remoteRef"]["property"] for d in spec["data"])
        assert oct((state / "secret-store").stat().st_mode & 0o777) == "0o700"
    cacerts = json.loads((state / "secret-store/meshfed/bank/payments/cacerts.json").read_text())
    assert "PRIVATE KEY" in cacerts["ca-key.pem"]  # the values are there, outside the output


def test_a_secret_prefix_cannot_leave_the_state_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "render",
            str(EXAMPLES / "bank.yaml"),
            "--out",
            str(tmp_path / "out"),
            "--state",
            str(tmp_path / "state"),
            "--secrets",
            "external-secrets",
            "--secret-store",
            "vault",
            "--secret-prefix",
            "../../etc",
        ],
    )
    assert result.exit_code == 2 and "--secret-prefix" in result.output
    assert not (tmp_path / "out").exists()
