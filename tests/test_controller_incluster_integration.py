"""The controller in-cluster, on real kube-apiservers (``MESHFED_TEST_KUBECONFIG``, three
clusters as for ``test_controller_integration.py``): what a Pod of the Deployment sees.

``meshfed controller install`` makes the ServiceAccount and its least-privilege RBAC; a token
of that ServiceAccount (TokenRequest), the cluster's CA and the namespace are written where a
Pod has them (the directory comes from ``MESHFED_SERVICE_ACCOUNT_DIR``, as kubernetes clients
let one pass it), and ``meshfed controller run`` starts with ``KUBERNETES_SERVICE_HOST/PORT``
and no kubeconfig at all. The first cluster is the management cluster and, under the context
name ``in-cluster`` (``--in-cluster-context``: no remote secret has that name), payments'
cluster too; the other two are reached through their remote secrets. The federation converges,
a deleted policy comes back, the status, Events and the Lease are written: and the log shows
no request the RBAC forbade.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from meshfed.kube.client import KubeClient
from test_controller_integration import (
    FED_API,
    KUBECONFIG,
    MESHFED,
    NS,
    ROOT,
    _contexts,
    prepared_clients,
    service_account_token,
    wait,
)

FED = "itest"
IN_CLUSTER = "in-cluster"
pytestmark = pytest.mark.skipif(
    not KUBECONFIG,
    reason="MESHFED_TEST_KUBECONFIG is not set: running the controller in-cluster needs real "
    "Kubernetes API servers (see test_controller_integration.py)",
)
Obj = dict[str, Any]


def _spec(contexts: list[str]) -> Obj:
    doc = yaml.safe_load((ROOT / "src/meshfed/examples/bank.yaml").read_text())
    doc["metadata"]["name"] = FED
    meshes = {m["name"]: m for m in doc["spec"]["meshes"]}
    for mesh, ctx in zip(("payments", "payments-dr", "web"), contexts, strict=True):
        meshes[mesh]["kubernetes"] = {"context": ctx}
    return dict(doc)


def _pod_files(context: str, base: Path) -> tuple[Path, str, str]:
    """What the kubelet mounts in a Pod of the controller, and the Service's host and port."""
    token, entry = service_account_token(context, "1h")
    cluster = entry["cluster"]
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    else:
        ca = Path(cluster["certificate-authority"]).read_bytes()
    account = base / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token)
    (account / "ca.crt").write_bytes(ca)
    (account / "namespace").write_text(NS)
    url = urlsplit(cluster["server"])
    return account, str(url.hostname), str(url.port or 443)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    contexts = _contexts()
    base = tmp_path_factory.mktemp("incluster")
    clients = prepared_clients(contexts, ("istio-system", "cards", "shop"))
    management = clients[contexts[0]]
    # The controller's identity: install, exactly as a user runs it (the first cluster is a
    # target too, so its ServiceAccount may reconcile it; the others get remote secrets).
    install = [
        MESHFED, "controller", "install", "--kubeconfig", KUBECONFIG, "--context", contexts[0],
        *[arg for c in contexts for arg in ("--target-context", c)],
    ]  # fmt: skip
    done = subprocess.run(install, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    account, host, port = _pod_files(contexts[0], base)
    log_path = base / "controller.log"
    pod_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("KUBE") and key != "MESHFED_TEST_KUBECONFIG"
    }
    pod_env.update(
        {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "MESHFED_SERVICE_ACCOUNT_DIR": str(account),
            "KUBECONFIG": str(base / "no-such-kubeconfig"),
            "HOME": str(base),
            "POD_NAME": "meshfed-controller-pod-0",
        }
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [MESHFED, "controller", "run", "--namespace", NS, "--health-port", "0",
             "--in-cluster-context", IN_CLUSTER, "--resync", "60", "--lease-duration", "4",
             "--work-dir", str(base / "work")],
            stdout=log, stderr=subprocess.STDOUT, env=pod_env,
        )  # fmt: skip
    try:
        management.apply(_spec([IN_CLUSTER, *contexts[1:]]), force=True)
        yield {"contexts": contexts, "clients": clients, "log": log_path, "proc": proc}
    finally:
        if management.get(FED_API, "Federation", FED) is not None:
            management.delete(
                {"apiVersion": FED_API, "kind": "Federation", "metadata": {"name": FED}}
            )
            with contextlib.suppress(AssertionError):
                wait("Federation gone", lambda: not management.get(FED_API, "Federation", FED))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for client in clients.values():
            client.close()


def _federation(env: dict[str, Any]) -> Obj:
    client: KubeClient = env["clients"][env["contexts"][0]]
    return client.get(FED_API, "Federation", FED) or {}


def _ready(env: dict[str, Any]) -> bool:
    fed = _federation(env)
    for cond in (fed.get("status") or {}).get("conditions") or []:
        if cond["type"] == "Ready":
            return bool(
                cond["status"] == "True"
                and cond.get("observedGeneration") == fed["metadata"].get("generation")
            )
    return False


def test_in_cluster_the_controller_converges_with_only_its_rbac(env: dict[str, Any]) -> None:
    contexts = env["contexts"]
    management: KubeClient = env["clients"][contexts[0]]
    t0 = time.monotonic()
    wait("Ready", lambda: _ready(env), 180)
    print(f"\nin-cluster: Ready in {time.monotonic() - t0:.1f} s")
    lease = management.get("coordination.k8s.io/v1", "Lease", "meshfed-controller", NS)
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "meshfed-controller-pod-0"
    # payments, on the management cluster through the controller's own ServiceAccount:
    policies = management.list(
        "security.istio.io/v1", "AuthorizationPolicy", labels=f"meshfed.dev/federation={FED}"
    )
    assert policies
    # Drift repair works with the watch rights it has: a deleted policy comes back, at once
    # after Ready (the watches start after the first reconcile: a deletion before their first
    # list has no DELETED event, and the list's lack of it is what restores it).
    victim = policies[0]
    management.delete(victim)
    meta = victim["metadata"]

    def back() -> bool:
        found = management.get(
            "security.istio.io/v1", "AuthorizationPolicy", meta["name"], meta["namespace"]
        )
        return found is not None and found["metadata"]["uid"] != meta["uid"]

    wait("the deleted policy restored", back, 60)
    events = management.list("v1", "Event", namespace=NS)
    reasons = {
        e.get("reason") for e in events if (e.get("involvedObject") or {}).get("name") == FED
    }
    assert "Applied" in reasons, reasons
    assert env["proc"].poll() is None, "the controller exited"
    text = env["log"].read_text(errors="replace")
    assert "reconciled" in text
    for word in ("forbidden", "Forbidden", " 403", "Unauthorized", " 401"):
        assert word not in text, [line for line in text.splitlines() if word in line][:5]
