"""meshfed against real Kubernetes API servers (``MESHFED_TEST_KUBECONFIG``).

Needs two clusters (two contexts with different servers; ``MESHFED_TEST_CONTEXTS=a,b`` picks
them, else the first two such contexts of the file), each reachable with cluster-admin rights,
and for the remote-secret tests the service-account token controller (kube-controller-manager).
The suite installs Istio's CRDs itself (the bundle ../shared/istio/crd-all.gen.yaml where it is
beside the checkout, else CRDs registering the kinds of the npm registry's
@kubernetes-models/istio, whose specs the offline schema tests check), makes its own
credential without any RBAC for the refusal tests (TokenRequest), and removes what it applied.

It starts from bare clusters (Istio's CRDs, no Istio, no application namespaces) and walks
Istio's install order: the first test finds no ``istio-system``, ``meshfed-system`` or
application namespace; namespaces made by an earlier run of the suite (by meshfed for it, or as
its "application") are deleted first, and any other ``istio-system`` stops the suite.
"""

from __future__ import annotations

import base64
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from meshfed.cli.kube import register
from meshfed.cli.main import main
from meshfed.kube.apply import kube_connector
from meshfed.kube.client import KubeClient
from meshfed.kube.config import merged_kubeconfig
from meshfed.kube.diff import diff
from meshfed.kube.errors import ApplyRefused
from meshfed.kube.namespaces import BOOTSTRAP_ANNOTATION, NETWORK_LABEL
from meshfed.kube.remote_secret import READER, TOKEN_PREFIX, token_secrets
from meshfed.kube.targets import FEDERATION_LABEL, PRUNE_KINDS, selector
from meshfed.kube.workspace import open_kube_workspace

from istio_registry import cluster_crds
from k8s_schema import CRD_PATH, bundle_present

ROOT = Path(__file__).resolve().parents[1]
KUBECONFIG = os.environ.get("MESHFED_TEST_KUBECONFIG", "")
FED = "itest"
APP_LABEL = "meshfed.dev/itest-application"
"""Marks the namespaces this suite makes as the applications' (deleted before and after)."""
SUITE_NAMESPACES = ("istio-system", "meshfed-system", "cards", "shop", "no-such-istio")

pytestmark = pytest.mark.skipif(
    not KUBECONFIG,
    reason="MESHFED_TEST_KUBECONFIG is not set: these tests need real Kubernetes API servers "
    "(two contexts with cluster-admin; see the module docstring)",
)

Obj = dict[str, Any]


def _istio_crds() -> list[Obj]:
    if bundle_present():
        return [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    return cluster_crds()


def _contexts() -> tuple[str, str]:
    chosen = os.environ.get("MESHFED_TEST_CONTEXTS")
    if chosen:
        first, second = chosen.split(",")[:2]
        return first, second
    doc = merged_kubeconfig(KUBECONFIG)
    servers = {c["name"]: c["cluster"]["server"] for c in doc["clusters"]}
    picked: list[str] = []
    seen: set[str] = set()
    for ctx in doc["contexts"]:
        server = servers.get(ctx["context"]["cluster"])
        if server and server not in seen:
            seen.add(server)
            picked.append(ctx["name"])
    if len(picked) < 2:
        pytest.skip("MESHFED_TEST_KUBECONFIG needs two contexts on two different API servers")
    return picked[0], picked[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    first, second = _contexts()
    base = tmp_path_factory.mktemp("kube")
    clients = {ctx: KubeClient.for_context(ctx, KUBECONFIG, name=ctx) for ctx in (first, second)}
    crds = _istio_crds()
    for client in clients.values():
        for crd in crds:
            client.apply(crd, force=True)
    for client in clients.values():
        for crd in crds:
            client.wait_for(
                crd["apiVersion"],
                "CustomResourceDefinition",
                crd["metadata"]["name"],
                None,
                lambda o: any(
                    c["type"] == "Established" and c["status"] == "True"
                    for c in (o.get("status") or {}).get("conditions") or []
                ),
            )
    extra = base / "extra-kubeconfig.yaml"
    extra.write_text(yaml.safe_dump(_extra_contexts(clients[first], first, base)))
    kubeconfig = f"{KUBECONFIG}{os.pathsep}{extra}"
    for client in clients.values():
        _cleanup(client)
        _make_bare(client)
    yield {
        "first": first,
        "second": second,
        "clients": clients,
        "kubeconfig": kubeconfig,
        "base": base,
        "state": base / "state",
    }
    for client in clients.values():
        _cleanup(client)
        _make_bare(client, wait=False)
        client.close()


def _made_for_the_suite(namespace: Obj) -> bool:
    meta = namespace["metadata"]
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    return (
        labels.get(APP_LABEL) == "true"
        or labels.get(FEDERATION_LABEL) == FED
        or f"federation {FED}" in notes.get(BOOTSTRAP_ANNOTATION, "")
    )


def _make_bare(client: KubeClient, wait: bool = True) -> None:
    """Delete the namespaces meshfed or this suite made on an earlier run; refuse to run on a
    cluster whose Istio namespace is someone else's."""
    for name in SUITE_NAMESPACES:
        found = client.get("v1", "Namespace", name)
        if found is None:
            continue
        if not _made_for_the_suite(found):
            pytest.fail(
                f"cluster {client.label} is not bare: namespace {name} exists and was not made "
                "by this suite (the suite starts from clusters without Istio)"
            )
        client.delete(found)
    deadline = time.monotonic() + 120
    while wait and any(client.namespace_exists(n) for n in SUITE_NAMESPACES):
        assert time.monotonic() < deadline, f"namespaces on {client.label} are not deleted"
        time.sleep(0.5)


def application_namespace(client: KubeClient, name: str) -> None:
    """What the application team does: its namespace (meshfed never creates one)."""
    client.create(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {APP_LABEL: "true"}},
        }
    )


def _extra_contexts(client: KubeClient, context: str, base: Path) -> Obj:
    """A context on the first cluster whose user has no RBAC at all, and one that is down."""
    ns = "default"
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "meshfed-noaccess", "namespace": ns},
    }
    client.apply(sa, force=True)
    review = client.request(
        "POST",
        f"/api/v1/namespaces/{ns}/serviceaccounts/meshfed-noaccess/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    doc = merged_kubeconfig(KUBECONFIG)
    cluster = next(c for c in doc["contexts"] if c["name"] == context)["context"]["cluster"]
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "meshfed-down", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "meshfed-noaccess", "user": {"token": review["status"]["token"]}}],
        "contexts": [
            {
                "name": "meshfed-noaccess",
                "context": {"cluster": cluster, "user": "meshfed-noaccess"},
            },
            {
                "name": "meshfed-down",
                "context": {"cluster": "meshfed-down", "user": "meshfed-noaccess"},
            },
        ],
    }


def _cleanup(client: KubeClient) -> None:
    for api_version, kind in PRUNE_KINDS:
        if client.find(api_version, kind) is None:
            continue
        for obj in client.list(api_version, kind, labels=selector(FED)):
            client.delete(obj)
    for secret in client.list("v1", "Secret", namespace="istio-system"):
        if secret["metadata"]["name"].startswith("istio-remote-secret-") or (
            (secret["metadata"].get("annotations") or {}).get("kubernetes.io/service-account.name")
            == READER
        ):
            client.delete(secret)


def spec(first: str, second: str, **changes: str) -> str:
    text = f"""\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata: {{name: {FED}}}
spec:
  meshes:
    - name: payments
      trustDomain: payments.itest.example
      network: pci
      ingress: {{address: 192.0.2.10, port: 15443}}
      kubernetes: {{context: {first}}}
      workloads:
        - {{name: tokenizer, namespace: cards, serviceAccount: tokenizer, port: 8080,
           protocol: HTTP}}
        - {{name: ledger, namespace: cards, serviceAccount: ledger, port: 9000, protocol: TCP}}
    - name: web
      trustDomain: web.itest.example
      ingress: {{address: 192.0.2.20, port: 15443}}
      kubernetes: {{context: {second}}}
      workloads:
        - {{name: checkout, namespace: shop, serviceAccount: checkout, port: 8080}}
  exports:
    - name: tokenizer
      mesh: payments
      workload: cards/tokenizer
      consumers:
        - mesh: web
          principals: [ns/shop/sa/checkout]
          methods: [POST]
    - name: ledger
      mesh: payments
      workload: cards/ledger
      consumers:
        - mesh: web
          principals: [ns/shop/sa/checkout]
  imports:
    - mesh: web
      host: tokenizer.shop.svc.cluster.local
      from: [payments/tokenizer]
    - mesh: web
      host: ledger.shop.svc.cluster.local
      port: 9000
      from: [payments/ledger]
"""
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def write(env: dict[str, Any], name: str, text: str) -> Path:
    path = Path(env["base"]) / name
    path.write_text(text)
    return path


def meshfed(
    env: dict[str, Any], command: str, spec_path: Path, *args: str, state: Path | None = None
) -> Result:
    register(main)
    return CliRunner().invoke(
        main,
        [command, str(spec_path), "--state", str(state or env["state"]), *args],
        env={"KUBECONFIG": env["kubeconfig"]},
        catch_exceptions=False,
    )


def kube_env(env: dict[str, Any]) -> dict[str, str]:
    return {"KUBECONFIG": env["kubeconfig"]}


def labelled(client: KubeClient) -> dict[tuple[str, str, str], str]:
    """Every object of the test federation: (kind, namespace, name) -> resourceVersion."""
    out = {}
    for api_version, kind in PRUNE_KINDS:
        for obj in client.list(api_version, kind, labels=selector(FED)):
            meta = obj["metadata"]
            out[(kind, meta.get("namespace", ""), meta["name"])] = meta["resourceVersion"]
    return out


def test_bare_clusters_in_istios_install_order(env: dict[str, Any]) -> None:
    first, second = env["first"], env["second"]
    payments, web = env["clients"][first], env["clients"][second]
    for client in (payments, web):
        assert not [n for n in SUITE_NAMESPACES if client.namespace_exists(n)]
    path = write(env, "fed.yaml", spec(first, second))

    # A dry-run on the bare clusters: Istio's namespace would be created, the application's
    # is missing and said so in plain words; nothing is written.
    dry = meshfed(env, "apply", path, "--dry-run")
    assert dry.exit_code == 1, dry.output
    text = " ".join(dry.output.split())  # rich wraps long lines
    assert (
        f"cluster payments (context {first}): Namespace cards (for EnvoyFilter "
        "cards/meshfed-replies-tokenizer, EnvoyFilter cards/meshfed-xfcc-tokenizer, "
        "AuthorizationPolicy cards/meshfed-guard-tokenizer, PeerAuthentication "
        "cards/meshfed-strict): namespace cards does not exist on this cluster; it belongs to "
        "the applications (the workloads cards/ledger, cards/tokenizer), and meshfed does not "
        "create application namespaces" in text
    ), text
    assert (
        f"cluster web (context {second}): Namespace shop (for DestinationRule "
        "shop/federation-egress-imports): namespace shop does not exist on this cluster; it "
        "belongs to the applications (the workload shop/checkout)" in text
    ), text
    assert "not found" not in text
    for mesh, context in (("payments", first), ("web", second)):
        assert f"cluster {mesh} (context {context}): would create Namespace istio-system" in text
    assert "were validated in namespace default" in text
    for client in (payments, web):
        assert not client.namespace_exists("istio-system")

    # Istio's plug-in CA order: the CA secret before istiod, in the namespace meshfed creates.
    register(main)
    pki = CliRunner().invoke(
        main,
        ["pki", "install", str(path), "--state", str(env["state"])],
        env=kube_env(env),
        catch_exceptions=False,
    )
    assert pki.exit_code == 0, pki.output
    for mesh, context, client, network in (
        ("payments", first, payments, "pci"),
        ("web", second, web, None),
    ):
        assert f"cluster {mesh} (context {context}): created Namespace istio-system" in pki.output
        created = client.get("v1", "Namespace", "istio-system")
        assert created is not None
        assert (created["metadata"].get("labels") or {}).get(NETWORK_LABEL) == network
        assert client.get("v1", "Secret", "cacerts", "istio-system") is not None
    # (istioctl install would run here.) The application team deploys its namespace; meshfed
    # then puts the federation in place and makes its own namespace.
    application_namespace(payments, "cards")
    application_namespace(web, "shop")  # the import's callers: meshfed's copy of the subsets
    dry = meshfed(env, "apply", path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would create Namespace istio-system" not in dry.output
    assert "would be created: Namespace meshfed-system" in dry.output
    result = meshfed(env, "apply", path)
    assert result.exit_code == 0, result.output
    assert payments.get("security.istio.io/v1", "PeerAuthentication", "meshfed-strict", "cards")
    for client in (payments, web):
        assert client.namespace_exists("meshfed-system")


def test_apply_then_reapply_changes_nothing(env: dict[str, Any]) -> None:
    path = write(env, "fed.yaml", spec(env["first"], env["second"]))
    result = meshfed(env, "apply", path)
    assert result.exit_code == 0, result.output
    payments, web = (env["clients"][env["first"]], env["clients"][env["second"]])
    on_payments, on_web = labelled(payments), labelled(web)
    assert (
        "AuthorizationPolicy",
        "meshfed-system",
        "federation-ingress-allow-nothing",
    ) in on_payments
    assert ("Secret", "istio-system", "cacerts") in on_payments
    assert ("ConfigMap", "meshfed-system", f"meshfed-{FED}") in on_payments
    assert ("ServiceEntry", "meshfed-system", "import-tokenizer-shop-svc-cluster-local") in on_web
    # the callers' copy of the egress subsets, labelled: pruned and watched as meshfed's
    assert ("DestinationRule", "shop", "federation-egress-imports") in on_web
    gateway = payments.get(
        "networking.istio.io/v1", "Gateway", "federation-ingress", "meshfed-system"
    )
    assert gateway is not None
    assert gateway["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "meshfed",
        "meshfed.dev/federation": FED,
    }
    assert {m["manager"] for m in gateway["metadata"]["managedFields"]} == {"meshfed"}

    again = meshfed(env, "apply", path)
    assert again.exit_code == 0, again.output
    assert labelled(payments) == on_payments
    assert labelled(web) == on_web
    assert "0 created, 0 configured" in again.output


def test_diff_of_unchanged_spec_is_empty(env: dict[str, Any]) -> None:
    path = write(env, "fed.yaml", spec(env["first"], env["second"]))
    result = meshfed(env, "diff", path)
    assert result.exit_code == 0, result.output
    assert "Security changes (since the apply stored on" in result.output
    assert "  (none)" in result.output
    assert "0 created, 0 configured" in result.output
    assert "configured:" not in result.output


def test_diff_shows_security_and_objects_and_writes_nothing(env: dict[str, Any]) -> None:
    payments = env["clients"][env["first"]]
    before = labelled(payments)
    wider = spec(
        env["first"],
        env["second"],
        **{"          methods: [POST]\n": "          methods: [POST, GET]\n"},
    )
    path = write(env, "wider.yaml", wider)
    result = meshfed(env, "diff", path)
    assert result.exit_code == 0, result.output
    text = result.output
    security = text.index("Security changes")
    objects = text.index("Cluster payments")
    assert security < objects
    assert (
        "+ [payments] tokenizer.payments.itest.global: grants "
        "spiffe://web.itest.example/ns/shop/sa/checkout (GET any path)" in text
    )
    assert (
        "configured: AuthorizationPolicy.security.istio.io meshfed-system/allow-tokenizer" in text
    )
    assert "+            - GET" in text or "+        - GET" in text or "- GET" in text
    assert labelled(payments) == before  # diff writes nothing


def test_prune_removes_what_is_no_longer_rendered(env: dict[str, Any]) -> None:
    web = env["clients"][env["second"]]
    narrower = spec(
        env["first"],
        env["second"],
        **{
            "    - mesh: web\n      host: ledger.shop.svc.cluster.local\n      port: 9000\n"
            "      from: [payments/ledger]\n": ""
        },
    )
    path = write(env, "narrow.yaml", narrower)
    result = meshfed(env, "apply", path)
    assert result.exit_code == 0, result.output
    left = labelled(web)
    assert ("ServiceEntry", "meshfed-system", "import-ledger-shop-svc-cluster-local") not in left
    assert ("ServiceEntry", "meshfed-system", "import-tokenizer-shop-svc-cluster-local") in left
    assert "deleted" in result.output
    # back to the full federation for the next tests
    assert (
        meshfed(env, "apply", write(env, "fed.yaml", spec(env["first"], env["second"]))).exit_code
        == 0
    )


def payments_only(where: str) -> str:
    """A federation of the payments mesh alone; ``where``: its ``kubernetes`` or ``clusters``
    (YAML at the mesh's indentation)."""
    return f"""\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata: {{name: {FED}}}
spec:
  meshes:
    - name: payments
      trustDomain: payments.itest.example
      network: pci
      ingress: {{address: 192.0.2.10, port: 15443}}
      {where}
      workloads:
        - {{name: tokenizer, namespace: cards, serviceAccount: tokenizer, port: 8080}}
"""


def east_west(env: dict[str, Any], primary_extra: str = "") -> str:
    """payments as primary ``east`` on the first cluster and remote ``west`` on the second."""
    return (
        "clusters:\n"
        f"        - {{name: east, context: {env['first']}, role: primary{primary_extra}}}\n"
        f"        - {{name: west, context: {env['second']}, role: remote}}"
    )


def test_apply_empties_the_cluster_of_a_removed_mesh(env: dict[str, Any]) -> None:
    payments, web = env["clients"][env["first"]], env["clients"][env["second"]]
    assert labelled(web)
    text = payments_only(f"kubernetes: {{context: {env['first']}}}")
    path = write(env, "payments-only.yaml", text)
    diff_result = meshfed(env, "diff", path)
    assert diff_result.exit_code == 0, diff_result.output
    assert f"Cluster web (context {env['second']}, no longer in the spec)" in diff_result.output
    assert labelled(web)  # diff wrote nothing
    result = meshfed(env, "apply", path)
    assert result.exit_code == 0, result.output
    assert labelled(web) == {}  # gateways, policies, cacerts and the state ConfigMap
    state = payments.get("v1", "ConfigMap", f"meshfed-{FED}", "meshfed-system")
    assert state is not None
    assert [c["context"] for c in yaml.safe_load(state["data"]["clusters.json"])] == [env["first"]]
    again = meshfed(env, "apply", path)
    assert again.exit_code == 0, again.output
    assert "no longer in the spec" not in again.output
    # back to the full federation for the next tests
    full = meshfed(env, "apply", write(env, "fed.yaml", spec(env["first"], env["second"])))
    assert full.exit_code == 0, full.output
    assert labelled(web)


def test_a_second_federation_on_the_same_clusters_is_refused(env: dict[str, Any]) -> None:
    other = spec(
        env["first"], env["second"], **{f"metadata: {{name: {FED}}}": "metadata: {name: rival}"}
    )
    payments, web = env["clients"][env["first"]], env["clients"][env["second"]]
    before = (labelled(payments), labelled(web))
    result = meshfed(
        env, "apply", write(env, "rival.yaml", other), state=Path(env["base"]) / "rival-state"
    )
    assert result.exit_code == 1, result.output
    assert "nothing was written to any cluster" in result.output
    assert f"of meshfed federation '{FED}'" in result.output
    assert "a mesh can be in one federation only" in result.output
    assert (labelled(payments), labelled(web)) == before
    for client in (payments, web):
        assert not client.list("v1", "ConfigMap", labels=selector("rival"))


def _refused(env: dict[str, Any], text: str) -> tuple[str, dict[Any, str], dict[Any, str]]:
    payments, web = env["clients"][env["first"]], env["clients"][env["second"]]
    before = (labelled(payments), labelled(web))
    result = meshfed(env, "apply", write(env, "refused.yaml", text))
    assert result.exit_code == 1, result.output
    assert "nothing was written to any cluster" in result.output
    assert (labelled(payments), labelled(web)) == before
    return result.output, *before


def test_rbac_refusal_on_one_cluster_writes_nothing_anywhere(env: dict[str, Any]) -> None:
    # A change on payments' cluster, and web's cluster reached by a user without any RBAC.
    text = spec(
        env["first"],
        "meshfed-noaccess",
        **{"          methods: [POST]\n": "          methods: [POST, PUT]\n"},
    )
    output, *_ = _refused(env, text)
    assert "cluster web (context meshfed-noaccess)" in output
    assert "forbidden (RBAC)" in output
    assert "meshfed-system/federation-ingress" in output


def test_unreachable_cluster_writes_nothing(env: dict[str, Any]) -> None:
    text = spec(
        env["first"],
        "meshfed-down",
        **{"          methods: [POST]\n": "          methods: [POST, PUT]\n"},
    )
    output, *_ = _refused(env, text)
    assert "cluster web (context meshfed-down): (connection)" in output
    assert "unreachable" in output


def test_a_missing_istio_namespace_is_one_meshfed_would_create(env: dict[str, Any]) -> None:
    text = spec(
        env["first"],
        env["second"],
        **{
            f"kubernetes: {{context: {env['second']}}}": (
                f"kubernetes: {{context: {env['second']}, istioNamespace: no-such-istio}}"
            )
        },
    )
    web = env["clients"][env["second"]]
    result = meshfed(env, "apply", write(env, "other-istio.yaml", text), "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"cluster web (context {env['second']}): would create Namespace no-such-istio" in (
        " ".join(result.output.split())
    )
    assert "would be created: Secret no-such-istio/cacerts" in result.output
    assert not web.namespace_exists("no-such-istio")


FREEZE = "meshfed-itest-freeze"


def test_server_side_validation_refusal(env: dict[str, Any]) -> None:
    """The cluster's own admission (a ValidatingAdmissionPolicy) refuses a change: the refusal
    names the cluster, the object and the server's reason, and nothing is written."""
    payments = env["clients"][env["first"]]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": FREEZE},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["security.istio.io"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["authorizationpolicies"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "!has(object.spec.rules) || object.spec.rules.all(r, "
                    "!has(r.to) || r.to.all(t, !has(t.operation.methods) || "
                    "!('PUT' in t.operation.methods)))",
                    "message": "PUT is frozen by the platform team",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": FREEZE},
        "spec": {"policyName": FREEZE, "validationActions": ["Deny"]},
    }
    text = spec(
        env["first"],
        env["second"],
        **{"          methods: [POST]\n": "          methods: [POST, PUT]\n"},
    )
    payments.apply(policy, force=True)
    payments.apply(binding, force=True)
    try:
        deadline = time.monotonic() + 30
        path = write(env, "refused.yaml", text)
        while meshfed(env, "apply", path, "--dry-run").exit_code == 0:
            # the API server takes a moment to enforce a new policy
            assert time.monotonic() < deadline, "the admission policy is not enforced after 30 s"
            time.sleep(1)
        output, *_ = _refused(env, text)
        assert (
            f"cluster payments (context {env['first']}): AuthorizationPolicy.security.istio.io "
            "meshfed-system/allow-tokenizer" in output
        )
        assert "PUT is frozen by the platform team" in output
    finally:
        for obj in (binding, policy):
            payments.delete(obj)


def _can_list(server: str, token: str, ca_pem: bytes) -> int:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    request = urllib.request.Request(
        f"{server}/api/v1/namespaces", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _kubeconfig_of(output: str, cluster: str) -> tuple[str, str, bytes]:
    assert output.startswith("# This file is autogenerated, do not edit.\n")
    assert output.endswith("---\n")
    secret = yaml.safe_load(output.split("\n", 1)[1].rsplit("---\n", 1)[0])
    assert secret["metadata"]["name"] == f"istio-remote-secret-{cluster}"
    assert secret["metadata"]["namespace"] == "istio-system"
    assert secret["metadata"]["labels"] == {"istio/multiCluster": "true"}
    assert secret["metadata"]["annotations"] == {"networking.istio.io/cluster": cluster}
    config = yaml.safe_load(secret["stringData"][cluster])
    assert config["current-context"] == cluster
    entry = config["clusters"][0]["cluster"]
    return (
        entry["server"],
        config["users"][0]["user"]["token"],
        base64.b64decode(entry["certificate-authority-data"]),
    )


def test_remote_secret_and_rotation_revokes_old_token(env: dict[str, Any]) -> None:
    remote = env["clients"][env["second"]]
    runner = CliRunner()
    register(main)
    args = ["remote-secret", "--context", env["second"], "--name", "east"]
    first = runner.invoke(main, args, catch_exceptions=False, env=kube_env(env))
    assert first.exit_code == 0, first.output
    server, token, ca = _kubeconfig_of(first.stdout, "east")
    assert server == remote.server
    assert _can_list(server, token, ca) == 200  # the reader may list namespaces
    same = runner.invoke(main, args, catch_exceptions=False, env=kube_env(env))
    assert _kubeconfig_of(same.stdout, "east")[1] == token  # no rotation: same token

    rotated = runner.invoke(main, [*args, "--rotate"], catch_exceptions=False, env=kube_env(env))
    assert rotated.exit_code == 0, rotated.output
    _, new_token, _ = _kubeconfig_of(rotated.stdout, "east")
    assert new_token != token
    assert _can_list(server, new_token, ca) == 200
    # The old token is revoked: the API server refuses it once its authentication cache
    # (kube-apiserver keeps good tokens 10 s by default) lets go of it.
    deadline = time.monotonic() + 30
    while _can_list(server, token, ca) != 401:
        assert time.monotonic() < deadline, "the old token still works 30 s after rotation"
        time.sleep(0.5)
    ours = [
        s["metadata"]["name"]
        for s in token_secrets(remote, "istio-system")
        if s["metadata"]["name"].startswith(TOKEN_PREFIX)
    ]
    assert len(ours) == 1  # (clusters before 1.24 also keep an auto-generated token)


def test_primary_remote_mesh(env: dict[str, Any]) -> None:
    text = payments_only(east_west(env, ", discoveryAddress: 192.0.2.99"))
    path = write(env, "primary-remote.yaml", text)
    result = meshfed(env, "apply", path)
    assert result.exit_code == 0, result.output
    primary, remote = env["clients"][env["first"]], env["clients"][env["second"]]
    assert primary.get("networking.istio.io/v1", "Gateway", "istiod-gateway", "meshfed-system")
    svc = primary.get("v1", "Service", "istio-eastwestgateway", "meshfed-system")
    assert svc is not None
    assert sorted(p["port"] for p in svc["spec"]["ports"]) == [15012, 15017]
    secret = primary.get("v1", "Secret", "istio-remote-secret-west", "istio-system")
    assert secret is not None
    assert secret["metadata"]["annotations"]["networking.istio.io/cluster"] == "west"
    assert secret["metadata"]["labels"]["istio/multiCluster"] == "true"
    config = yaml.safe_load(base64.b64decode(secret["data"]["west"]))
    user = config["users"][0]["user"]["token"]
    ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    assert _can_list(config["clusters"][0]["cluster"]["server"], user, ca) == 200
    # one intermediate CA for both clusters of the mesh
    assert (
        primary.get("v1", "Secret", "cacerts", "istio-system")["data"]
        == remote.get(  # type: ignore[index]
            "v1", "Secret", "cacerts", "istio-system"
        )["data"]
    )
    # the web mesh and its objects on the second cluster were pruned; the remote holds no config
    assert not [k for k in labelled(remote) if k[0] != "Secret"]
    again = meshfed(env, "apply", path)
    assert "0 created, 0 configured" in again.output, again.output


def test_discovery_address_is_read_from_the_eastwest_load_balancer(
    env: dict[str, Any],
) -> None:
    path = write(env, "no-address.yaml", payments_only(east_west(env)))
    first = meshfed(env, "apply", path)
    assert first.exit_code == 0, first.output
    assert "has no load-balancer address yet" in first.output
    # What the cloud's load-balancer controller does once it has an address for the Service.
    primary = env["clients"][env["first"]]
    primary.request(
        "PATCH",
        "/api/v1/namespaces/meshfed-system/services/istio-eastwestgateway/status",
        body={"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.77"}]}}},
        content_type="application/merge-patch+json",
    )
    register(main)
    found = CliRunner().invoke(
        main, ["discover", str(path), "--mesh", "payments"], env=kube_env(env),
        catch_exceptions=False,
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    (mesh,) = yaml.safe_load(found.stdout)["meshes"]
    assert mesh["clusters"][0] == {
        "name": "east",
        "context": env["first"],
        "role": "primary",
        "discoveryAddress": "127.0.0.77",
    }
    again = meshfed(env, "apply", path)
    assert again.exit_code == 0, again.output
    assert "discovered discoveryAddress 127.0.0.77 of mesh payments" in again.output
    assert "has no load-balancer address yet" not in again.output
    state = primary.get("v1", "ConfigMap", f"meshfed-{FED}", "meshfed-system")
    assert state is not None and "discoveryAddress: 127.0.0.77" in state["data"]["spec.yaml"]


def test_discover_services_and_service_exports(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", env["kubeconfig"])
    client = env["clients"][env["first"]]
    for obj in (
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "tok-sa", "namespace": "cards"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "tok", "namespace": "cards"},
            "spec": {"selector": {"app": "tok"}, "ports": [{"name": "http-api", "port": 8080}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db", "namespace": "cards"},
            "spec": {"ports": [{"name": "pg", "port": 5432, "appProtocol": "postgresql"}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "tok-1", "namespace": "cards", "labels": {"app": "tok"}},
            "spec": {"serviceAccountName": "tok-sa", "containers": [{"name": "c", "image": "x"}]},
        },
    ):
        client.apply(obj, force=True)
    text = spec(env["first"], env["second"])
    path = write(env, "discover.yaml", text)
    register(main)
    result = CliRunner().invoke(
        main,
        ["discover", str(path), "--mesh", "payments"],
        env=kube_env(env),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    found = {w["name"]: w for w in yaml.safe_load(result.stdout)["meshes"][0]["workloads"]}
    assert found["tok"] == {
        "name": "tok",
        "namespace": "cards",
        "serviceAccount": "tok-sa",
        "port": 8080,
        "protocol": "HTTP",
    }
    assert found["db"]["protocol"] == "TCP" and found["db"]["serviceAccount"] == "db"

    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "serviceexports.multicluster.x-k8s.io"},
        "spec": {
            "group": "multicluster.x-k8s.io",
            "scope": "Namespaced",
            "names": {
                "plural": "serviceexports",
                "singular": "serviceexport",
                "kind": "ServiceExport",
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    deadline = time.monotonic() + 60
    while (left := client.get(crd["apiVersion"], crd["kind"], crd["metadata"]["name"])) and (
        left["metadata"].get("deletionTimestamp")
    ):
        assert time.monotonic() < deadline, "the ServiceExport CRD of a previous run is stuck"
        time.sleep(0.5)
    client.apply(crd, force=True)
    try:
        client.wait_for(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            crd["metadata"]["name"],
            None,
            lambda o: any(
                c["type"] == "Established" for c in (o.get("status") or {}).get("conditions") or []
            ),
        )
        fresh = KubeClient.for_context(env["first"], KUBECONFIG)
        fresh.apply(
            {
                "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                "kind": "ServiceExport",
                "metadata": {"name": "tok", "namespace": "cards"},
            },
            force=True,
        )
        # A spec that leaves payments' workloads to discovery: only the exported Service counts.
        omitted = f"""\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata: {{name: {FED}}}
spec:
  meshes:
    - name: payments
      trustDomain: payments.itest.example
      ingress: {{address: 192.0.2.10, port: 15443}}
      kubernetes: {{context: {env["first"]}}}
    - name: web
      trustDomain: web.itest.example
      ingress: {{address: 192.0.2.20, port: 15443}}
      kubernetes: {{context: {env["second"]}}}
      workloads:
        - {{name: checkout, namespace: shop, serviceAccount: checkout, port: 8080}}
  exports:
    - name: tokenizer
      mesh: payments
      workload: cards/tok
      consumers:
        - {{mesh: web, principals: [ns/shop/sa/checkout]}}
"""
        kws = open_kube_workspace(
            write(env, "omitted.yaml", omitted), env["state"], kube_connector()
        )
        assert [w.name for w in kws.ws.federation.mesh("payments").workloads] == ["tok"]
        assert kws.discovered[0].source == "ServiceExport"
        assert kws.ws.plan.mesh("payments").ingress.servers[0].workload.service_account == "tok-sa"
        changes = diff(kws.rollout(kws.targets()))
        assert any("cards/tok" in str(c) for c in changes.security)
    finally:
        client.delete(crd)
        for kind, name in (
            ("Pod", "tok-1"),
            ("Service", "tok"),
            ("Service", "db"),
            ("ServiceAccount", "tok-sa"),
        ):
            client.delete(
                {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "cards"}}
            )


def test_refusal_object_names_cluster_object_reason(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", env["kubeconfig"])
    kws = open_kube_workspace(
        write(env, "noaccess.yaml", spec("meshfed-noaccess", env["second"])),
        env["state"],
        kube_connector(),
    )
    with pytest.raises(ApplyRefused) as info:
        kws.rollout(kws.targets()).run()
    refusals = info.value.refusals
    assert refusals
    assert {r.cluster for r in refusals} == {"payments (context meshfed-noaccess)"}
    assert all("forbidden" in r.reason for r in refusals)


def test_dry_run_and_one_mesh_and_pki_install(env: dict[str, Any]) -> None:
    payments, web = env["clients"][env["first"]], env["clients"][env["second"]]
    path = write(env, "fed.yaml", spec(env["first"], env["second"]))
    assert meshfed(env, "apply", path).exit_code == 0
    before = (labelled(payments), labelled(web))
    wider = spec(
        env["first"],
        env["second"],
        **{"          methods: [POST]\n": "          methods: [POST, PATCH]\n"},
    )
    dry = meshfed(env, "apply", write(env, "wider.yaml", wider), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would be configured: AuthorizationPolicy.security.istio.io" in dry.output
    assert (labelled(payments), labelled(web)) == before

    only_web = meshfed(env, "apply", write(env, "wider.yaml", wider), "--mesh", "web")
    assert only_web.exit_code == 0, only_web.output
    assert labelled(payments) == before[0]  # payments' cluster was not touched

    secret = payments.get("v1", "Secret", "cacerts", "istio-system")
    assert secret is not None
    payments.delete(secret)
    register(main)
    result = CliRunner().invoke(
        main,
        ["pki", "install", str(path), "--state", str(env["state"])],
        env=kube_env(env),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    restored = payments.get("v1", "Secret", "cacerts", "istio-system")
    assert restored is not None and restored["data"] == secret["data"]
    assert set(restored["data"]) == {"ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"}
