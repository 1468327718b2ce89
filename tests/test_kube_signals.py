"""SIGTERM and Ctrl-C during ``meshfed apply`` against real Kubernetes API servers
(``MESHFED_TEST_KUBECONFIG``, two contexts with cluster-admin; see ``test_kube_integration.py``):
signalled once the first object is written, ``apply`` ends with ``128 + signal`` and says what it
had written where; run again, it finishes, and a third run finds nothing to change."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from local_helpers import MeshfedProcess, poll
from meshfed.kube.client import KubeClient
from meshfed.kube.config import merged_kubeconfig
from meshfed.kube.targets import FEDERATION_LABEL, PRUNE_KINDS, selector

KUBECONFIG = os.environ.get("MESHFED_TEST_KUBECONFIG", "")
CRDS = Path(__file__).resolve().parents[2] / "shared" / "istio" / "crd-all.gen.yaml"
FED = "sigtest"

pytestmark = pytest.mark.skipif(
    not KUBECONFIG,
    reason="MESHFED_TEST_KUBECONFIG is not set: these tests need real Kubernetes API servers "
    "(two contexts with cluster-admin)",
)

SPEC = """\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata: {{name: {fed}}}
spec:
  meshes:
    - name: payments
      trustDomain: payments.sigtest.example
      ingress: {{address: 192.0.2.10, port: 15443}}
      kubernetes: {{context: {first}}}
      workloads:
        - {{name: tokenizer, namespace: cards, serviceAccount: tokenizer, port: 8080}}
    - name: web
      trustDomain: web.sigtest.example
      ingress: {{address: 192.0.2.20, port: 15443}}
      kubernetes: {{context: {second}}}
      workloads:
        - {{name: checkout, namespace: shop, serviceAccount: checkout, port: 8080}}
  exports:
    - name: tokenizer
      mesh: payments
      workload: cards/tokenizer
      consumers:
        - {{mesh: web, principals: [ns/shop/sa/checkout]}}
  imports:
    - {{mesh: web, host: tokenizer.shop.svc.cluster.local, from: [payments/tokenizer]}}
"""


def _contexts() -> tuple[str, str]:
    doc = merged_kubeconfig(KUBECONFIG)
    servers = {c["name"]: c["cluster"]["server"] for c in doc["clusters"]}
    picked: dict[str, str] = {}
    for ctx in doc["contexts"]:
        server = servers.get(ctx["context"]["cluster"])
        if server and server not in picked:
            picked[server] = ctx["name"]
    if len(picked) < 2:
        pytest.skip("MESHFED_TEST_KUBECONFIG needs two contexts on two different API servers")
    first, second = list(picked.values())[:2]
    return first, second


def _cleanup(client: KubeClient) -> None:
    """Everything this federation put on the cluster, its namespaces too (a namespace labelled
    for another federation makes that one's apply refuse the cluster)."""
    for api_version, kind in PRUNE_KINDS:
        if client.find(api_version, kind) is None:
            continue
        for obj in client.list(api_version, kind, labels=selector(FED)):
            client.delete(obj)
    for ns in client.list("v1", "Namespace", labels=selector(FED)):
        _delete_namespace(client, ns)


def _delete_namespace(client: KubeClient, ns: dict[str, Any]) -> None:
    client.delete(ns)
    name = ns["metadata"]["name"]
    assert poll(lambda: not client.namespace_exists(name), timeout=120) is not None


def _claim(client: KubeClient) -> None:
    """An empty ``meshfed-system`` another federation left (the integration suite's): removed,
    or this module is skipped if that federation still has objects here."""
    found = client.get("v1", "Namespace", "meshfed-system", None)
    if found is None:
        return
    other = (found["metadata"].get("labels") or {}).get(FEDERATION_LABEL)
    if other in (None, FED):
        return
    for api_version, kind in PRUNE_KINDS:
        if client.find(api_version, kind) is not None and client.list(
            api_version, kind, labels=selector(other)
        ):
            pytest.skip(f"federation {other!r} still has objects on {client.name}")
    _delete_namespace(client, found)


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not CRDS.is_file():
        pytest.skip(f"Istio's CRDs are not at {CRDS}: apply's dry-run needs them on the clusters")
    first, second = _contexts()
    clients = {ctx: KubeClient.for_context(ctx, KUBECONFIG, name=ctx) for ctx in (first, second)}
    crds = [d for d in yaml.safe_load_all(CRDS.read_text()) if d]
    for client in clients.values():
        for crd in crds:
            client.apply(crd, force=True)
        _claim(client)
        for name in ("istio-system", "cards", "shop"):
            if not client.namespace_exists(name):
                client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        _cleanup(client)
    base = tmp_path_factory.mktemp("kube-signals")
    spec = base / "spec.yaml"
    spec.write_text(SPEC.format(fed=FED, first=first, second=second))
    try:
        yield {"clients": clients, "spec": spec, "state": base / "state"}
    finally:
        for client in clients.values():
            _cleanup(client)
            client.close()


def _apply(env: dict[str, Any]) -> MeshfedProcess:
    return MeshfedProcess(
        "apply", str(env["spec"]), "--state", str(env["state"]), "--kubeconfig", KUBECONFIG
    )


def _written(env: dict[str, Any]) -> bool:
    """Has the apply written its first object yet?"""
    return any(
        client.list("v1", "ServiceAccount", namespace="meshfed-system", labels=selector(FED))
        for client in env["clients"].values()
        if client.namespace_exists("meshfed-system")
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_apply_says_what_it_wrote_and_the_next_finishes(
    clusters: dict[str, Any], sig: int
) -> None:
    for client in clusters["clients"].values():
        _cleanup(client)
    proc = _apply(clusters)
    try:
        assert poll(lambda: _written(clusters), timeout=120, interval=0.01) is not None, (
            proc.drain()
        )
        proc.signal(sig)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    err = "\n".join(proc.output("err"))
    assert "Traceback" not in err, err
    if code == 0:
        pytest.skip("the apply finished before the signal reached it")  # a fast server
    assert code == 128 + sig, proc.seen
    assert "interrupted (" in err and "while writing; written so far:" in err, err
    assert "run meshfed apply again to finish" in err

    again = _apply(clusters)
    assert again.wait(timeout=180) == 0, again.seen
    check = MeshfedProcess(
        "apply", str(clusters["spec"]), "--state", str(clusters["state"]), "--kubeconfig",
        KUBECONFIG, "--dry-run",
    )  # fmt: skip
    assert check.wait(timeout=180) == 0, check.seen
    # Nothing left to create, change or delete (but the record of this apply itself).
    left = [
        line for line in check.output("out")
        if "would be" in line and f"ConfigMap meshfed-system/meshfed-{FED}" not in line
    ]  # fmt: skip
    assert left == [], check.seen
