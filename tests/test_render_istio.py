"""Rendered Istio output: accepted by Istio's schemas, and saying exactly what the plan says."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509

from meshfed.cli.main import main
from meshfed.pki.certs import permitted_uri_domains
from meshfed.pki.verify import verify_chain
from meshfed.render.istio.imports import FAILOVER_LABEL
from meshfed.sinks.files import MARKER

from conftest import EXAMPLES, Rendered, render_example
from k8s_schema import validate_all, validate_kustomization

Obj = dict[str, Any]


def all_rendered(request: pytest.FixtureRequest) -> list[Rendered]:
    return [request.getfixturevalue("bank_rendered"), request.getfixturevalue("partners_rendered")]


@pytest.mark.parametrize("example", ["bank_rendered", "partners_rendered"])
def test_every_manifest_passes_istio_and_kubernetes_schemas(
    example: str, request: pytest.FixtureRequest
) -> None:
    rendered: Rendered = request.getfixturevalue(example)
    for mesh in rendered.meshes:
        mesh_dir = rendered.out / mesh
        docs = rendered.docs(mesh)
        objects = [d for d in docs if d["kind"] != "Kustomization"]
        assert objects
        secrets = rendered.secret_docs(mesh)
        assert {d["kind"] for d in secrets.values()} == {"Secret"}  # kubectl apply -f secrets/
        assert validate_all(objects + list(secrets.values())) == []
        (kustomization,) = [d for d in docs if d["kind"] == "Kustomization"]
        files = {p.name for p in mesh_dir.iterdir()}
        assert validate_kustomization(kustomization, files) == []
        install = set(rendered.meshes[mesh].install_files)
        assert install and install <= files
        # The install settings lie beside the manifests, never in what `apply -k` applies.
        applied = files - {"kustomization.yaml", "secrets"} - install
        assert set(kustomization["resources"]) == applied


def test_only_current_istio_apis(request: pytest.FixtureRequest) -> None:
    for rendered in all_rendered(request):
        for mesh in rendered.meshes:
            for doc in rendered.docs(mesh):
                if doc["kind"] == "EnvoyFilter":
                    # Only where no Istio API can say it (render/istio/filters.py, the
                    # boundary log, path rules and the proxies' own replies; render/istio/
                    # limits.py, the bounds; render/istio/workload.py, XFCC only from the
                    # ingress at an exported workload); EnvoyFilter has no other version.
                    assert doc["apiVersion"] == "networking.istio.io/v1alpha3"
                    name = doc["metadata"]["name"]
                    assert name in (
                        "federation-ingress-boundary",
                        "federation-ingress-limits",
                        "federation-egress-limits",
                    ) or name.startswith(("meshfed-xfcc-", "meshfed-replies-")), name
                elif "istio.io" in doc["apiVersion"]:
                    assert doc["apiVersion"].split("/")[1] == "v1", doc["apiVersion"]
                assert doc["kind"] not in {
                    "MeshPolicy",
                    "ServiceRole",
                    "ServiceRoleBinding",
                    "ClusterRbacConfig",
                    "Policy",
                }


def test_ingress_is_mutual_tls_one_sni_per_export(bank_rendered: Rendered) -> None:
    plan = bank_rendered.workspace.plan
    for mesh in plan.meshes:
        gateways = {g["metadata"]["name"]: g for g in bank_rendered.docs(mesh.name, "Gateway")}
        ingress = gateways.get("federation-ingress")
        if not mesh.ingress.servers:
            assert ingress is None  # nothing exported: no server at all
            continue
        assert ingress is not None
        hosts = []
        for server in ingress["spec"]["servers"]:
            assert server["tls"]["mode"] == "MUTUAL"
            assert server["port"]["number"] == mesh.ingress.port
            assert len(server["hosts"]) == 1
            hosts += server["hosts"]
        assert sorted(hosts) == sorted(s.sni for s in mesh.ingress.servers)
        assert not any("*" in h or h.endswith(".local") for h in hosts)


def test_egress_passes_only_imported_snis(bank_rendered: Rendered) -> None:
    gateways = {g["metadata"]["name"]: g for g in bank_rendered.docs("web", "Gateway")}
    (server,) = gateways["federation-egress"]["spec"]["servers"]
    assert server["tls"] == {"mode": "PASSTHROUGH"}
    assert sorted(server["hosts"]) == ["ledger.payments.bank.global", "tokenizer.payments.global"]
    assert "federation-egress" not in {
        g["metadata"]["name"] for g in bank_rendered.docs("payments", "Gateway")
    }


def test_authorization_is_deny_by_default_with_exact_principals(bank_rendered: Rendered) -> None:
    policies = {
        p["metadata"]["name"]: p["spec"]
        for p in bank_rendered.docs("payments", "AuthorizationPolicy")
        if p["metadata"]["namespace"] == "meshfed-system"  # the workloads' guards: their tests
    }
    baseline = policies.pop("federation-ingress-allow-nothing")
    assert baseline == {
        "selector": {"matchLabels": {"istio": "federation-ingress"}},
        "action": "ALLOW",
    }
    tokenizer = policies["allow-tokenizer-payments-global"]
    assert tokenizer["action"] == "ALLOW"
    assert tokenizer["rules"] == [
        {
            "from": [{"source": {"principals": ["web.bank.example/ns/shop/sa/checkout"]}}],
            "when": [{"key": "connection.sni", "values": ["tokenizer.payments.global"]}],
            "to": [{"operation": {"methods": ["POST"], "paths": ["/v1/tokenize"]}}],
        }
    ]
    ledger = policies["allow-ledger-payments-bank-global"]
    assert "to" not in ledger["rules"][0]  # TCP: no L7 attributes
    for spec in policies.values():
        for rule in spec["rules"]:
            for principal in rule["from"][0]["source"]["principals"]:
                assert not principal.startswith("spiffe://")  # Istio adds the scheme itself
                assert principal != "*"


def test_wildcard_principal_becomes_trust_domain_prefix(tmp_path: Path) -> None:
    text = (
        (EXAMPLES / "bank.yaml")
        .read_text()
        .replace("principals: [ns/shop/sa/checkout]\n  imports", "principals: ['*']\n  imports")
    )
    spec = tmp_path / "bank.yaml"
    spec.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["render", str(spec), "--out", str(out), "--state", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all((out / "payments" / "exports.yaml").read_text()))
    (ledger,) = [d for d in docs if d["metadata"]["name"] == "allow-ledger-payments-bank-global"]
    assert ledger["spec"]["rules"][0]["from"][0]["source"]["principals"] == ["web.bank.example/*"]


def test_strict_mtls_and_boundary_logging(bank_rendered: Rendered) -> None:
    peer = bank_rendered.docs("payments", "PeerAuthentication")
    assert {p["metadata"]["namespace"] for p in peer} == {"cards", "meshfed-system"}
    assert all(p["spec"] == {"mtls": {"mode": "STRICT"}} for p in peer)
    telemetry = bank_rendered.docs("payments", "Telemetry")
    selected = {t["spec"]["selector"]["matchLabels"]["istio"] for t in telemetry}
    assert selected == {"federation-ingress", "federation-egress"}
    providers = {
        p["name"]: p
        for p in bank_rendered.install_docs("payments")["istiod-values.yaml"]["meshConfig"][
            "extensionProviders"
        ]
    }
    for t in telemetry:
        gateway = t["spec"]["selector"]["matchLabels"]["istio"]
        assert t["spec"]["accessLogging"] == [{"providers": [{"name": f"meshfed-{gateway}-log"}]}]
        labels = providers[f"meshfed-{gateway}-log"]["envoyFileAccessLog"]["logFormat"]["labels"]
        # The caller's verified URI SAN and what decided, on every request and connection.
        assert labels["caller"] == "%DOWNSTREAM_PEER_URI_SAN%"
        assert labels["sni"] == "%REQUESTED_SERVER_NAME%"
        assert labels["tls_failure"] == "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%"
        assert labels["termination"] == "%CONNECTION_TERMINATION_DETAILS%"


def _istio_priority(failover_priority: list[str], endpoint_labels: dict[str, str]) -> int:
    """Istio's failoverPriority rule: the index of the first label whose value differs."""
    for index, item in enumerate(failover_priority):
        key, _, value = item.partition("=")
        if endpoint_labels.get(key) != value:
            return len(failover_priority) - index
    return 0


def test_failover_order_through_egress(bank_rendered: Rendered) -> None:
    docs = bank_rendered.docs("web")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs if "metadata" in d}
    entry = by[("ServiceEntry", "remote-tokenizer-payments-global")]["spec"]
    rule = by[("DestinationRule", "remote-tokenizer-payments-global")]["spec"]
    assert entry["exportTo"] == ["."] and rule["exportTo"] == ["."]
    policy = rule["trafficPolicy"]
    assert policy["outlierDetection"]["maxEjectionPercent"] == 100
    priorities = policy["loadBalancer"]["localityLbSetting"]["failoverPriority"]
    assert all(p.startswith(FAILOVER_LABEL.format("")) for p in priorities)
    order = sorted(
        entry["endpoints"],
        key=lambda e: _istio_priority(priorities, e.get("labels", {})),
    )
    assert [(e["labels"]["meshfed.dev/mesh"], e["ports"]["tls"]) for e in order] == [
        ("payments", 15443),
        ("payments-dr", 15444),
    ]
    assert [_istio_priority(priorities, e["labels"]) for e in order] == [0, 1]
    assert all("network" not in e for e in entry["endpoints"])
    route = by[("VirtualService", "egress-tokenizer-payments-global")]["spec"]
    assert route["gateways"] == ["federation-egress"]
    assert route["tls"][0]["match"][0]["sniHosts"] == ["tokenizer.payments.global"]


def test_consumer_sidecar_uses_its_own_identity_to_the_remote_ingress(
    bank_rendered: Rendered,
) -> None:
    by = {
        (d["kind"], d["metadata"]["name"]): d for d in bank_rendered.docs("web") if "metadata" in d
    }
    local = by[("VirtualService", "import-tokenizer-shop-svc-cluster-local")]["spec"]
    assert local["gateways"] == ["mesh"]
    (http,) = local["http"]
    assert http["rewrite"] == {"authority": "tokenizer.payments.global"}
    destination = http["route"][0]["destination"]
    assert destination["host"] == "federation-egress.meshfed-system.svc.cluster.local"
    subsets = {
        s["name"]: s
        for s in by[("DestinationRule", "federation-egress-imports")]["spec"]["subsets"]
    }
    tls = subsets[destination["subset"]]["trafficPolicy"]["tls"]
    assert tls == {
        "mode": "ISTIO_MUTUAL",
        "sni": "tokenizer.payments.global",
        "subjectAltNames": [
            "spiffe://payments.bank.example/ns/meshfed-system/sa/federation-ingress",
            "spiffe://payments-dr.bank.example/ns/meshfed-system/sa/federation-ingress",
        ],
    }
    assert by[("ServiceEntry", "import-tokenizer-shop-svc-cluster-local")]["spec"]["hosts"] == [
        "tokenizer.shop.svc.cluster.local"
    ]


@pytest.mark.parametrize("example", ["bank_rendered", "partners_rendered"])
def test_each_caller_namespace_gets_its_copy_of_the_egress_subsets(
    example: str, request: pytest.FixtureRequest
) -> None:
    """The plan's caller namespaces, each with a rule for exactly the egress gateway's Service
    carrying the import subsets (istiod prefers it there over any wildcard rule of that
    namespace), private to it, labelled as meshfed's so apply, prune and the drift watches
    handle it; nowhere else."""
    rendered: Rendered = request.getfixturevalue(example)
    plan = rendered.workspace.plan
    egress = "federation-egress.meshfed-system.svc.cluster.local"
    for mesh in plan.meshes:
        rules = [
            d for d in rendered.docs(mesh.name, "DestinationRule") if d["spec"]["host"] == egress
        ]
        if not mesh.imports:
            assert rules == [] and mesh.caller_namespaces == ()
            continue
        (original,) = [r for r in rules if r["metadata"]["namespace"] == "meshfed-system"]
        copies = [r for r in rules if r is not original]
        assert mesh.caller_namespaces
        assert [c["metadata"]["namespace"] for c in copies] == list(mesh.caller_namespaces)
        for copy in copies:
            assert copy["metadata"]["name"] == original["metadata"]["name"]
            assert copy["metadata"]["labels"] == {
                **original["metadata"]["labels"],
                "meshfed.dev/copy-of": "meshfed-system.federation-egress-imports",
            }
            assert copy["spec"] == {**original["spec"], "exportTo": ["."]}
            assert "workloadSelector" not in copy["spec"]
        assert original["spec"]["exportTo"] == ["*"]
        routed = {
            dest["destination"]["subset"]
            for vs in rendered.docs(mesh.name, "VirtualService")
            if vs["spec"].get("gateways") == ["mesh"]
            for proto in ("http", "tcp")
            for route in vs["spec"].get(proto, [])
            for dest in route["route"]
        }
        assert routed == {s["name"] for s in original["spec"]["subsets"]}


def _pem_certs(data: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data.encode())


def _secret_data(doc: Obj, key: str) -> str:
    import base64

    return base64.b64decode(doc["data"][key]).decode()


def test_cacerts_and_ingress_credential(bank_rendered: Rendered) -> None:
    pki = bank_rendered.workspace.pki
    for mesh in bank_rendered.workspace.plan.meshes:
        secrets = bank_rendered.secret_docs(mesh.name)
        cacerts = secrets["cacerts.yaml"]
        assert cacerts["metadata"] == {
            **cacerts["metadata"],
            "name": "cacerts",
            "namespace": "istio-system",
        }
        ca = _pem_certs(_secret_data(cacerts, "ca-cert.pem"))[0]
        chain = _pem_certs(_secret_data(cacerts, "cert-chain.pem"))
        root = _pem_certs(_secret_data(cacerts, "root-cert.pem"))
        assert chain == [ca, pki.meshes[mesh.name].root_cert] and root == [chain[1]]
        credential = secrets["ingress-credential.yaml"]
        leaf, intermediate = _pem_certs(_secret_data(credential, "tls.crt"))
        assert intermediate == ca
        verify_chain(
            leaf, [intermediate], root, datetime.now(UTC), spiffe_id=mesh.ingress.spiffe_id
        )
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(mesh.ingress.dns_names)
        if mesh.ingress.trusted:
            assert _pem_certs(_secret_data(credential, "ca.crt")) == root


def test_federated_ingress_trusts_only_its_consumers(partners_rendered: Rendered) -> None:
    pki = partners_rendered.workspace.pki
    credential = partners_rendered.secret_docs("globex")["ingress-credential.yaml"]
    # Federated: never a consumer root itself, but globex's federation anchor and a
    # cross-certificate of acme's root limited to acme's trust domain (tests/test_pki_cross.py).
    anchor, cross = _pem_certs(_secret_data(credential, "ca.crt"))
    assert anchor.subject.rfc4514_string() == "CN=globex federation anchor,O=meshfed"
    assert cross.subject == pki.roots["acme"].subject and cross != pki.roots["acme"]
    assert cross.public_key() == pki.roots["acme"].public_key()
    assert permitted_uri_domains(cross) == ["acme.example"]
    cross.verify_directly_issued_by(anchor)
    operator = partners_rendered.install_docs("acme")["istio-operator.yaml"]
    mesh_config = operator["spec"]["meshConfig"]
    assert mesh_config["trustDomain"] == "acme.example"
    assert mesh_config["outboundTrafficPolicy"] == {"mode": "REGISTRY_ONLY"}
    entries = {
        tuple(e["trustDomains"]): _pem_certs(e["pem"]) for e in mesh_config["caCertificates"]
    }
    assert entries == {
        ("globex.example",): [pki.roots["globex"]],
        ("initech.example",): [pki.roots["initech"]],
    }
    assert operator["spec"]["values"]["pilot"]["env"]["ISTIO_MULTIROOT_MESH"] == "true"
    shared = partners_rendered.install_docs("initech")["istio-operator.yaml"]
    assert "caCertificates" not in shared["spec"]["meshConfig"]  # initech imports nothing


def test_keys_only_in_secrets_and_private(request: pytest.FixtureRequest) -> None:
    for rendered in all_rendered(request):
        for path in rendered.out.rglob("*"):
            if path.is_dir():
                continue
            text = path.read_text()
            if path.parent.name == "secrets":
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            else:
                assert "PRIVATE KEY" not in text and "LS0tLS1CRUdJTiBQUklW" not in text, path
        for secrets in rendered.out.glob("*/secrets"):
            assert stat.S_IMODE(secrets.stat().st_mode) == 0o700


def test_render_is_reproducible(tmp_path: Path) -> None:
    first = render_example("bank", tmp_path)
    before = {p: p.read_bytes() for p in first.out.rglob("*.yaml")}
    second = render_example("bank", tmp_path)
    assert {p: p.read_bytes() for p in second.out.rglob("*.yaml")} == before


def test_failed_render_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    state = tmp_path / "state"
    args = ["render", str(EXAMPLES / "bank.yaml"), "--out", str(out), "--state", str(state)]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # Corrupt the trust state: render must refuse and leave the old output untouched.
    (state / "pki" / "payments" / "ca-cert.pem").write_text("garbage")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "ca-cert.pem" in result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["out", "state"]  # no staging directory left


def test_render_refuses_a_directory_it_does_not_own(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(
        main,
        [
            "render",
            str(EXAMPLES / "bank.yaml"),
            "--out",
            str(mine),
            "--state",
            str(tmp_path / "state"),
        ],
    )
    assert result.exit_code == 1
    assert "not written by meshfed" in result.output
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert not (mine / MARKER).exists()


def test_bad_spec_writes_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text((EXAMPLES / "bank.yaml").read_text().replace("mode: SharedRoot", "mode: X"))
    result = CliRunner().invoke(
        main,
        ["render", str(spec), "--out", str(tmp_path / "out"), "--state", str(tmp_path / "state")],
    )
    assert result.exit_code == 1
    assert "spec.trust.mode" in result.output
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml"]


def test_gateway_pods_can_be_injected(request: pytest.FixtureRequest) -> None:
    """Istio's injection webhook skips namespaces labelled istio-injection=disabled entirely;
    the gateway pods (image: auto) exist only through injection."""
    for rendered in all_rendered(request):
        for mesh in rendered.meshes:
            docs = rendered.docs(mesh)
            for ns in (d for d in docs if d["kind"] == "Namespace"):
                assert ns["metadata"]["labels"].get("istio-injection") != "disabled"
            for deployment in (d for d in docs if d["kind"] == "Deployment"):
                template = deployment["spec"]["template"]
                assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
                assert template["metadata"]["annotations"]["inject.istio.io/templates"] == "gateway"
