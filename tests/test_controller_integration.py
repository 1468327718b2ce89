"""The federation controller against real kube-apiservers (``MESHFED_TEST_KUBECONFIG``).

Needs three clusters (contexts ``MESHFED_TEST_CONTEXTS=a,b,c``, else the first three contexts
on different servers), cluster-admin on each, the service-account token controller
(kube-controller-manager), and Istio's CRDs (installed from ../shared/istio/crd-all.gen.yaml).
The first cluster is also the management cluster. The unreachable-cluster test needs the
kube-apiserver of the second cluster to be a process of this machine it may pause
(``MESHFED_TEST_KUBE_DIR``: the directory ``/work/tools/kube/start.sh --dir`` made).

The controller runs as ``meshfed controller run`` subprocesses with the identities and RBAC
that ``meshfed controller install`` gives it: its ServiceAccount on the management cluster (a
TokenRequest token) and the remote secrets to each mesh cluster (never cluster-admin).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.kube.client import KubeClient
from meshfed.kube.config import merged_kubeconfig

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT.parent / "shared" / "istio" / "crd-all.gen.yaml"
KUBECONFIG = os.environ.get("MESHFED_TEST_KUBECONFIG", "")
KUBE_DIR = os.environ.get("MESHFED_TEST_KUBE_DIR", "")
FED = "ctest"
NS = "meshfed-system"
FED_API = "meshfed.dev/v1alpha1"
MESHFED = str(Path(sys.executable).parent / "meshfed")

pytestmark = pytest.mark.skipif(
    not KUBECONFIG,
    reason="MESHFED_TEST_KUBECONFIG is not set: the controller's integration tests need three "
    "real Kubernetes API servers (see the module docstring); its decisions are tested in "
    "test_controller_ordering.py and test_controller_decisions.py",
)

Obj = dict[str, Any]


def _contexts() -> list[str]:
    chosen = os.environ.get("MESHFED_TEST_CONTEXTS")
    if chosen:
        return chosen.split(",")[:3]
    doc = merged_kubeconfig(KUBECONFIG)
    servers = {c["name"]: c["cluster"]["server"] for c in doc["clusters"]}
    picked, seen = [], set()
    for ctx in doc["contexts"]:
        server = servers.get(ctx["context"]["cluster"])
        if server and server not in seen:
            seen.add(server)
            picked.append(ctx["name"])
    if len(picked) < 3:
        pytest.skip("MESHFED_TEST_KUBECONFIG needs three contexts on three different API servers")
    return picked[:3]


def wait(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _spec(contexts: list[str]) -> Obj:
    """The bank example on the three clusters: payments' workloads and ingress address are
    left to its cluster (discovery, the federation-ingress load balancer)."""
    doc = yaml.safe_load((ROOT / "src/meshfed/examples/bank.yaml").read_text())
    doc["metadata"]["name"] = FED
    meshes = {m["name"]: m for m in doc["spec"]["meshes"]}
    for mesh, ctx in zip(("payments", "payments-dr", "web"), contexts, strict=True):
        meshes[mesh]["kubernetes"] = {"context": ctx}
    del meshes["payments"]["workloads"]
    del meshes["payments"]["ingress"]["address"]
    return dict(doc)


def service_account_token(context: str, duration: str) -> tuple[str, Obj]:
    """A token of the controller's ServiceAccount (TokenRequest API) and the kubeconfig's
    cluster entry (name, server, CA) of ``context``."""
    token = subprocess.run(
        ["kubectl", "--kubeconfig", KUBECONFIG, "--context", context, "-n", NS,
         "create", "token", "meshfed-controller", "--duration", duration],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    doc = merged_kubeconfig(KUBECONFIG)
    ctx = next(c for c in doc["contexts"] if c["name"] == context)
    cluster = next(c for c in doc["clusters"] if c["name"] == ctx["context"]["cluster"])
    return token, cluster


def _service_account_kubeconfig(context: str, base: Path) -> Path:
    """A kubeconfig for the management cluster as the controller's ServiceAccount, so the
    tests run with the RBAC `install` gives it."""
    token, cluster = service_account_token(context, "2h")
    path = base / "controller-sa.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "mgmt", "cluster": cluster["cluster"]}],
                "users": [{"name": "meshfed-controller", "user": {"token": token}}],
                "contexts": [
                    {"name": "mgmt", "context": {"cluster": "mgmt", "user": "meshfed-controller"}}
                ],
                "current-context": "mgmt",
            }
        )
    )
    return path


class Controllers:
    """``meshfed controller run`` processes started by a test, stopped by it."""

    def __init__(self, kubeconfig: Path, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        env = {**os.environ, "POD_NAME": name}
        proc = subprocess.Popen(
            [
                MESHFED, "controller", "run",
                "--kubeconfig", str(self.kubeconfig), "--context", "mgmt",
                "--namespace", NS, "--health-port", "0", "--resync", "60",
                "--lease-duration", "4", "--work-dir", str(self.log_dir / f"work-{name}"),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], kill: bool = False) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


def prepared_clients(contexts: list[str], namespaces: tuple[str, ...]) -> dict[str, KubeClient]:
    """A client of each test cluster, which has Istio's CRDs and ``namespaces``."""
    clients = {c: KubeClient.for_context(c, KUBECONFIG, name=c) for c in contexts}
    crds = [d for d in yaml.safe_load_all(CRDS.read_text()) if d]
    for client in clients.values():
        for crd in crds:
            client.apply(crd, force=True)
        for ns in namespaces:
            if not client.namespace_exists(ns):
                client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    return clients


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    contexts = _contexts()
    base = tmp_path_factory.mktemp("controller")
    clients = prepared_clients(contexts, ("istio-system", "cards", "shop"))
    payments = clients[contexts[0]]
    for name, port, port_name in (("tokenizer", 8080, "http"), ("ledger", 9000, "tcp")):
        payments.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "cards"},
                "spec": {"ports": [{"name": port_name, "port": port}], "selector": {"app": name}},
            },
            force=True,
        )
    install = [
        MESHFED, "controller", "install",
        "--kubeconfig", KUBECONFIG, "--context", contexts[0],
        *[arg for c in contexts for arg in ("--target-context", c)],
    ]  # fmt: skip
    done = subprocess.run(install, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    # The CRD (without the controller's Deployment: it runs here, as subprocesses).
    manifests = subprocess.run(
        [MESHFED, "controller", "manifests"],
        capture_output=True,
        text=True,
        check=True,
    )
    crd = next(
        d
        for d in yaml.safe_load_all(manifests.stdout)
        if d and d["kind"] == "CustomResourceDefinition"
    )
    payments.apply(crd, force=True)

    def served() -> bool:
        payments.rediscover()
        return payments.find(FED_API, "Federation") is not None

    wait("the Federation CRD", served, 30)
    # The controllers run as the ServiceAccount `install` made, with exactly its RBAC.
    controllers = Controllers(_service_account_kubeconfig(contexts[0], base), base)
    yield {"contexts": contexts, "clients": clients, "ctl": controllers, "base": base}
    if payments.get(FED_API, "Federation", FED) is not None:
        # While a controller runs: its finalizer cleans the clusters, then lets the object go.
        payments.delete({"apiVersion": FED_API, "kind": "Federation", "metadata": {"name": FED}})
        with contextlib.suppress(AssertionError):
            wait("the Federation deleted", lambda: payments.get(FED_API, "Federation", FED) is None)
    controllers.stop_all()
    for client in clients.values():
        client.close()


def federation(env: dict[str, Any]) -> Obj | None:
    client: KubeClient = env["clients"][env["contexts"][0]]
    return client.get(FED_API, "Federation", FED)


def condition(fed: Obj | None, kind: str) -> Obj:
    for cond in ((fed or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def ready(env: dict[str, Any]) -> bool:
    fed = federation(env)
    gen = ((fed or {}).get("metadata") or {}).get("generation")
    cond = condition(fed, "Ready")
    return cond.get("status") == "True" and cond.get("observedGeneration") == gen


def events(env: dict[str, Any], reason: str) -> list[str]:
    client: KubeClient = env["clients"][env["contexts"][0]]
    found = client.list("v1", "Event", namespace=NS)
    return [
        e.get("message", "")
        for e in found
        if e.get("reason") == reason and (e.get("involvedObject") or {}).get("name") == FED
    ]


def service_entry_addresses(client: KubeClient) -> set[str]:
    out = set()
    for se in client.list("networking.istio.io/v1", "ServiceEntry", namespace=NS):
        for endpoint in (se.get("spec") or {}).get("endpoints") or []:
            out.add(endpoint.get("address"))
    return out


def set_lb(client: KubeClient, ip: str) -> None:
    """What a cloud's load-balancer controller does: the Service's status gets the address."""
    res = client.resource("v1", "Service")
    client.request(
        "PATCH",
        res.path(NS, "federation-ingress") + "/status",
        body={"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
        content_type="application/merge-patch+json",
    )


def test_a_federation_applied_with_kubectl_converges(env: dict[str, Any]) -> None:
    contexts = env["contexts"]
    payments, web = env["clients"][contexts[0]], env["clients"][contexts[2]]
    env["leader"] = env["ctl"].start("replica-a")
    doc = _spec(contexts)
    path = env["base"] / "ctest.yaml"
    path.write_text(yaml.safe_dump(doc))
    applied = subprocess.run(
        ["kubectl", "--kubeconfig", KUBECONFIG, "--context", contexts[0], "apply", "-f", str(path)],
        capture_output=True,
        text=True,
    )
    assert applied.returncode == 0, applied.stderr
    # Exporters first: payments' gateway comes up, web waits for its load-balancer address.
    wait(
        "payments' federation ingress",
        lambda: payments.get("v1", "Service", "federation-ingress", NS),
    )
    fed = wait(
        "the waiting status",
        lambda: (
            condition(federation(env), "Progressing").get("status") == "True" and federation(env)
        ),
    )
    assert "load-balancer address" in condition(fed, "Progressing")["message"]
    assert not web.list("networking.istio.io/v1", "ServiceEntry", namespace=NS)
    t0 = time.monotonic()
    set_lb(payments, "127.0.0.21")
    wait(
        "web routing to payments' address", lambda: "127.0.0.21" in service_entry_addresses(web), 30
    )
    env["measured_first_address"] = time.monotonic() - t0
    wait("Ready", lambda: ready(env), 60)
    fed = federation(env)
    assert fed is not None
    status = fed["status"]
    assert status["summary"] == {"meshes": 3, "exports": 3, "imports": 2}
    served = {i["host"]: i["servedBy"] for i in status["imports"]}
    assert served["tokenizer.shop.svc.cluster.local"] == "payments/tokenizer"
    shown = subprocess.run(
        [MESHFED, "status", "--kube", "--federation", FED, "--kubeconfig", KUBECONFIG,
         "--context", contexts[0]],
        capture_output=True, text=True,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Ready=True Reconciled" in shown.stdout
    as_json = subprocess.run(
        [MESHFED, "status", "--kube", "--federation", FED, "--json", "--kubeconfig", KUBECONFIG,
         "--context", contexts[0]],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    imports = json.loads(as_json.stdout)[0]["imports"]
    assert {i["servedBy"] for i in imports} == {"payments/tokenizer", "payments/ledger"}
    listed = subprocess.run(
        ["kubectl", "--kubeconfig", KUBECONFIG, "--context", contexts[0], "get", "federations"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert listed.stdout.split("\n")[1].split()[:4] == [FED, "True", "3", "3"], listed.stdout
    # Objects on every cluster, by the controller's identity (field manager meshfed).
    policy = payments.get(
        "security.istio.io/v1", "AuthorizationPolicy", "allow-tokenizer-payments-global", NS
    )
    assert policy is not None
    assert any(f["manager"] == "meshfed" for f in policy["metadata"]["managedFields"])


def test_gateway_address_change_reaches_every_importer(env: dict[str, Any]) -> None:
    payments, web = (env["clients"][env["contexts"][i]] for i in (0, 2))
    t0 = time.monotonic()
    set_lb(payments, "127.0.0.22")

    def followed() -> bool:
        found = service_entry_addresses(web)
        return "127.0.0.22" in found and "127.0.0.21" not in found

    wait("every ServiceEntry of web following the new address", followed, 30)
    elapsed = time.monotonic() - t0
    print(f"\nload-balancer address change to importer updated: {elapsed:.2f} s")


def test_deleted_policy_is_restored_with_an_event(env: dict[str, Any]) -> None:
    payments = env["clients"][env["contexts"][0]]
    name = "allow-tokenizer-payments-global"
    policy = payments.get("security.istio.io/v1", "AuthorizationPolicy", name, NS)
    assert policy is not None
    t0 = time.monotonic()
    payments.delete(policy)
    restored = wait(
        "the policy back",
        lambda: payments.get("security.istio.io/v1", "AuthorizationPolicy", name, NS),
        30,
    )
    elapsed = time.monotonic() - t0
    assert restored["spec"] == policy["spec"]
    wait("a DriftRestored event", lambda: any(name in m for m in events(env, "DriftRestored")), 15)
    print(f"\ndeleted AuthorizationPolicy restored in {elapsed:.2f} s")


def test_the_callers_copy_of_the_egress_subsets_is_kept(env: dict[str, Any]) -> None:
    """web's import callers (shop) hold meshfed's copy of the egress subsets' rule: applied by
    the controller outside meshfed's namespaces, watched there, restored when deleted."""
    web = env["clients"][env["contexts"][2]]
    api, kind, name = "networking.istio.io/v1", "DestinationRule", "federation-egress-imports"
    original = web.get(api, kind, name, NS)
    copy = wait("the callers' copy", lambda: web.get(api, kind, name, "shop"), 30)
    assert original is not None
    assert copy["spec"] == {**original["spec"], "exportTo": ["."]}
    assert copy["metadata"]["labels"]["meshfed.dev/copy-of"] == f"{NS}.{name}"
    web.delete(copy)
    restored = wait("the copy back", lambda: web.get(api, kind, name, "shop"), 30)
    assert restored["spec"] == copy["spec"]


def test_hand_edit_is_undone_and_extra_object_pruned(env: dict[str, Any]) -> None:
    payments = env["clients"][env["contexts"][0]]
    name = "allow-tokenizer-payments-global"
    edited = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"rules": [{"from": [{"source": {"principals": ["*"]}}]}]},
    }
    res = payments.resource("security.istio.io/v1", "AuthorizationPolicy")
    payments.request(
        "PATCH",
        res.path(NS, name),
        params={"fieldManager": "kubectl-edit"},
        body=edited,
        content_type="application/merge-patch+json",
    )

    def back() -> bool:
        live = payments.get("security.istio.io/v1", "AuthorizationPolicy", name, NS) or {}
        rules = (live.get("spec") or {}).get("rules") or []
        return bool(rules) and "*" not in str(rules[0]["from"])

    wait("the edit undone", back, 30)
    extra = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": "smuggled",
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "meshfed", "meshfed.dev/federation": FED},
        },
        "spec": {"action": "ALLOW", "rules": [{}]},
    }
    res = payments.resource("security.istio.io/v1", "AuthorizationPolicy")
    payments.request("POST", res.path(NS), params={"fieldManager": "kubectl-create"}, body=extra)
    wait(
        "the extra policy pruned",
        lambda: payments.get("security.istio.io/v1", "AuthorizationPolicy", "smuggled", NS) is None,
        30,
    )
    wait(
        "a DriftPruned event", lambda: any("smuggled" in m for m in events(env, "DriftPruned")), 15
    )


def test_service_port_change_flows_to_the_route(env: dict[str, Any]) -> None:
    payments = env["clients"][env["contexts"][0]]
    t0 = time.monotonic()
    payments.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "tokenizer", "namespace": "cards"},
            "spec": {"ports": [{"name": "http", "port": 8081}], "selector": {"app": "tokenizer"}},
        },
        force=True,
    )

    def port() -> int | None:
        vs = payments.get(
            "networking.istio.io/v1", "VirtualService", "ingress-tokenizer-payments-global", NS
        )
        route = ((vs or {}).get("spec") or {}).get("http", [{}])[0].get("route", [{}])[0]
        return (route.get("destination") or {}).get("port", {}).get("number")

    wait("the ingress route on the new port", lambda: port() == 8081, 30)
    print(f"\nService port change to route updated: {time.monotonic() - t0:.2f} s")


def test_a_rollout_to_a_new_service_account_reaches_the_stored_spec(env: dict[str, Any]) -> None:
    """payments' workloads are discovered: a workload's service account is read from the Pods
    its Service selects. The Pods are watched (only those), so a rollout to a new
    ServiceAccount is reconciled at once, not at the next resync (60 s here). Pods never run
    on these API servers (no kubelet): their spec is all that matters."""
    from meshfed.kube.state import read_state
    from meshfed.spec.load import parse_spec

    payments = env["clients"][env["contexts"][0]]
    for account in ("tokenizer-v2", "tokenizer-v3"):
        if payments.get("v1", "ServiceAccount", account, "cards") is None:
            payments.create(
                {"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": account, "namespace": "cards"}}
            )  # fmt: skip

    def pod(name: str, account: str) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "cards", "labels": {"app": "tokenizer"}},
            "spec": {
                "serviceAccountName": account,
                "containers": [{"name": "app", "image": "registry.invalid/tokenizer:1"}],
            },
        }

    def stored_account() -> str | None:
        state = read_state(payments, FED)
        if state is None:
            return None
        fed = parse_spec(state.spec_text, "stored")
        workload = next(w for w in fed.mesh("payments").workloads if w.name == "tokenizer")
        return workload.service_account

    for name in ("tokenizer-a", "tokenizer-b"):  # left by an interrupted run
        payments.delete(pod(name, "default"))
    wait("Ready", lambda: ready(env), 60)
    t0 = time.monotonic()
    payments.create(pod("tokenizer-a", "tokenizer-v2"))
    wait("the first Pod's service account in the stored spec",
         lambda: stored_account() == "tokenizer-v2", 20)  # fmt: skip
    print(f"\nPod with a new service account to the stored spec: {time.monotonic() - t0:.2f} s")
    # A rollout: the new ReplicaSet's Pod, then the old one's deleted.
    payments.create(pod("tokenizer-b", "tokenizer-v3"))
    time.sleep(1)
    payments.delete(pod("tokenizer-a", "tokenizer-v2"))
    t0 = time.monotonic()
    wait("the rollout's service account in the stored spec",
         lambda: stored_account() == "tokenizer-v3", 20)  # fmt: skip
    print(f"rollout to the stored spec: {time.monotonic() - t0:.2f} s")
    payments.delete(pod("tokenizer-b", "tokenizer-v3"))
    wait("Ready", lambda: ready(env), 60)


@pytest.mark.skipif(not KUBE_DIR, reason="MESHFED_TEST_KUBE_DIR is not set: no API server to pause")
def test_unreachable_cluster_is_reported_and_holds_what_depends_on_it(env: dict[str, Any]) -> None:
    contexts = env["contexts"]
    payments, web = env["clients"][contexts[0]], env["clients"][contexts[2]]
    pid = int((Path(KUBE_DIR) / "pids" / f"{contexts[1]}-apiserver.pid").read_text())
    fed = federation(env)
    assert fed is not None
    doc = _spec(contexts)
    # A change on both sides of the web <-> payments-dr edge, and one on payments alone.
    for export in doc["spec"]["exports"]:
        if export["mesh"] == "payments-dr":
            export["consumers"][0]["principals"].append("ns/shop/sa/catalog")
        if export["name"] == "ledger":
            export["consumers"][0]["principals"].append("ns/shop/sa/catalog")
    before_web = {
        o["metadata"]["name"]: o["spec"]
        for o in web.list("networking.istio.io/v1", "DestinationRule", namespace=NS)
    }
    os.kill(pid, signal.SIGSTOP)
    try:
        payments.apply(doc, force=True)

        def reported() -> Obj | None:
            fed = federation(env)
            meshes = {m["name"]: m for m in ((fed or {}).get("status") or {}).get("meshes") or []}
            dr = meshes.get("payments-dr") or {}
            reach = next((c for c in dr.get("conditions") or [] if c["type"] == "Reachable"), {})
            gen = ((fed or {}).get("metadata") or {}).get("generation")
            if (
                reach.get("status") == "False"
                and condition(fed, "Degraded").get("observedGeneration") == gen
            ):
                return fed
            return None

        fed = wait("payments-dr reported unreachable", reported, 90)
        assert condition(fed, "Degraded")["status"] == "True"
        meshes = {m["name"]: m for m in fed["status"]["meshes"]}
        applied = {c["type"]: c for c in meshes["web"]["conditions"]}["Applied"]
        assert applied["reason"] == "PartlyHeld" and "importer" in applied["message"], applied
        # payments' own change (ledger's new principal) went out; web kept what it had.
        policy = payments.get(
            "security.istio.io/v1", "AuthorizationPolicy", "allow-ledger-payments-ctest-global", NS
        )
        assert "catalog" in str(policy)
        after_web = {
            o["metadata"]["name"]: o["spec"]
            for o in web.list("networking.istio.io/v1", "DestinationRule", namespace=NS)
        }
        assert after_web == before_web
    finally:
        os.kill(pid, signal.SIGCONT)
    wait("Ready again once payments-dr answers", lambda: ready(env), 120)


def test_two_replicas_never_both_act(env: dict[str, Any]) -> None:
    ctl: Controllers = env["ctl"]
    payments = env["clients"][env["contexts"][0]]
    leader = env["leader"]
    standby = ctl.start("replica-b")
    log_path = env["base"] / "replica-b.log"
    # Started (at a load of 16 its first line took more than 6 s), then longer than the
    # lease: the standby must still be waiting.
    wait("replica-b asking for the Lease", lambda: "waiting for the Lease" in log_path.read_text())
    time.sleep(6)
    lease = payments.get("coordination.k8s.io/v1", "Lease", "meshfed-controller", NS)
    assert lease is not None and lease["spec"]["holderIdentity"] == "replica-a"
    log_b = log_path.read_text()
    assert "waiting for the Lease" in log_b and "reconciled" not in log_b
    ctl.stop(leader, kill=True)  # no release: the standby waits out the lease, then leads
    wait(
        "replica-b leading",
        lambda: (
            (payments.get("coordination.k8s.io/v1", "Lease", "meshfed-controller", NS) or {})
            .get("spec", {})
            .get("holderIdentity")
            == "replica-b"
        ),
        30,
    )
    name = "allow-tokenizer-payments-global"
    payments.delete(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": NS},
        }
    )
    wait(
        "replica-b restoring drift",
        lambda: payments.get("security.istio.io/v1", "AuthorizationPolicy", name, NS),
        60,
    )
    log_b = env["base"] / "replica-b.log"
    wait("replica-b's reconcile", lambda: "reconciled" in log_b.read_text())
    env["leader"] = standby


def test_rotation_started_by_the_cli_runs_its_steps_on_the_clusters(env: dict[str, Any]) -> None:
    import base64

    payments = env["clients"][env["contexts"][0]]

    def ca_cert() -> str:
        secret = payments.get("v1", "Secret", "cacerts", "istio-system") or {}
        return base64.b64decode((secret.get("data") or {}).get("ca-cert.pem", "")).decode()

    before = ca_cert()
    asked = subprocess.run(
        [MESHFED, "controller", "rotate", FED, "intermediate", "--mesh", "payments",
         "--kubeconfig", KUBECONFIG, "--context", env["contexts"][0]],
        capture_output=True, text=True,
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    wait(
        "the new intermediate on payments' cluster", lambda: ca_cert() and ca_cert() != before, 180
    )

    def finished() -> bool:
        fed = federation(env) or {}
        return "meshfed.dev/rotate" not in (fed["metadata"].get("annotations") or {})

    wait("the rotation finished (the annotation removed)", finished, 180)
    # The event is posted by kopf's own queue, after the annotation is removed: waited for.
    wait("the RotationDone event", lambda: events(env, "RotationDone"), 60)
    steps = [m.split(":")[0] for m in events(env, "RotationStep")]
    assert {"prepare", "switch", "reissue", "retire"} <= set(steps), steps
    wait("Ready after the rotation", lambda: ready(env), 120)


def test_deleting_the_federation_cleans_its_clusters(env: dict[str, Any]) -> None:
    payments = env["clients"][env["contexts"][0]]
    payments.delete({"apiVersion": FED_API, "kind": "Federation", "metadata": {"name": FED}})
    wait("the Federation gone", lambda: federation(env) is None, 60)
    for client in env["clients"].values():
        left = client.list(
            "security.istio.io/v1", "AuthorizationPolicy", labels=f"meshfed.dev/federation={FED}"
        )
        assert left == []
    # The CA stays: deleting the object does not destroy the federation's trust.
    assert payments.get("v1", "Secret", f"meshfed-state-{FED}", NS) is not None
