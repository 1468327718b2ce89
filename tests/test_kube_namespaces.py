"""A bare cluster, in Istio's install order: the Istio namespace is created before the CA
secret, application namespaces are never created and their absence is said plainly (pure
decisions, then the rollout on fake clusters; tests/test_kube_integration.py does it on real
API servers)."""

from __future__ import annotations

from typing import Any

import pytest

from meshfed.kube.apply import Rollout
from meshfed.kube.errors import ApplyRefused, KubeError
from meshfed.kube.namespaces import NETWORK_LABEL, STAND_IN_NAMESPACE, plan_namespaces
from meshfed.kube.targets import ClusterTarget, cluster_targets
from meshfed.plan.model import ClusterPlan
from test_kube import FakeCluster, fed_and_plan, rendered

BARE = ("default", "kube-system", "kube-public", "kube-node-lease")


def _obj(kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": "v1", "kind": kind, "metadata": meta}


OBJECTS = [
    _obj("Namespace", "meshfed-system"),
    _obj("Secret", "cacerts", "istio-system"),
    _obj("Service", "federation-ingress", "meshfed-system"),
    _obj("PeerAuthentication", "meshfed-strict", "cards"),
]


def test_bare_cluster_plan() -> None:
    exists = {"istio-system": False, "meshfed-system": False, "cards": False}
    plan = plan_namespaces(
        OBJECTS, exists, "istio-system", "unit", "pci", [("cards", "tokenizer"), ("shop", "x")]
    )
    (created,) = plan.create
    assert created["metadata"]["name"] == "istio-system"
    assert created["metadata"]["labels"] == {NETWORK_LABEL: "pci"}
    assert "managed-by" not in str(created)  # Istio's namespace, never pruned as meshfed's
    assert plan.pending == {"istio-system", "meshfed-system"}
    (missing,) = plan.missing
    assert (missing.name, missing.workloads) == ("cards", ("cards/tokenizer",))
    assert plan.skipped(OBJECTS[3]) and not plan.skipped(OBJECTS[1])
    reason = missing.reason()
    assert "does not exist" in reason and "meshfed does not create application namespaces" in reason
    assert "not found" not in reason and "meshfed pki install" in reason


@pytest.mark.parametrize(
    ("exists", "create", "pending", "missing"),
    [
        ({}, [], set(), []),  # everything there (unknown counts as there)
        ({"istio-system": True, "meshfed-system": True, "cards": True}, [], set(), []),
        ({"meshfed-system": False}, [], {"meshfed-system"}, []),  # rendered: a stand-in only
        ({"cards": False}, [], set(), ["cards"]),
        ({"istio-system": False}, ["istio-system"], {"istio-system"}, []),
    ],
)
def test_plan_cases(
    exists: dict[str, bool], create: list[str], pending: set[str], missing: list[str]
) -> None:
    plan = plan_namespaces(OBJECTS, exists, "istio-system", "unit")
    assert [o["metadata"]["name"] for o in plan.create] == create
    assert "labels" not in (plan.create[0]["metadata"] if plan.create else {})
    assert plan.pending == pending
    assert [m.name for m in plan.missing] == missing


def _rollout(
    clusters: dict[str, FakeCluster], meshes: list[str], pki_only: bool = False
) -> Rollout:
    fed, plan = fed_and_plan()
    targets: list[ClusterTarget] = cluster_targets(plan, rendered(plan), meshes)
    if pki_only:
        targets = [
            ClusterTarget(t.mesh, t.cluster, [o for o in t.objects if o["kind"] == "Secret"
                                              and o["metadata"]["name"] == "cacerts"])
            for t in targets
        ]  # fmt: skip

    def connect(cluster: ClusterPlan) -> Any:
        found = clusters.get(cluster.context or "")
        if found is None:
            raise KubeError(f"cannot reach {cluster.context}")
        return found

    roots = {m.name: f"PEM {m.name}" for m in plan.meshes}
    return Rollout(
        fed, plan, roots, targets, connect, retire=False, prune=not pki_only,
        store_state=not pki_only,
    )  # fmt: skip


def _bare(log: list[tuple[str, str, str]]) -> dict[str, FakeCluster]:
    return {c: FakeCluster(c.removeprefix("ctx-"), log, namespaces=BARE)
            for c in ("ctx-east", "ctx-west", "ctx-web")}  # fmt: skip


def test_a_missing_callers_namespace_is_said_plainly() -> None:
    """The import callers' namespace gets meshfed's copy of the egress subsets' rule; like
    every application namespace, meshfed does not create it: the apply refuses, naming the
    copy and the callers, and writes nothing."""
    log: list[tuple[str, str, str]] = []
    with pytest.raises(ApplyRefused) as info:
        _rollout(_bare(log), ["web"]).run(dry_run=True)
    text = str(info.value)
    assert "Namespace shop (for DestinationRule shop/federation-egress-imports)" in text
    assert "it belongs to the applications (the workload shop/checkout)" in text
    assert "meshfed does not create application namespaces" in text
    assert "not found" not in text
    assert not [e for e in log if e[1] in ("apply", "create", "delete")]


def test_consumer_mesh_bootstraps_a_bare_cluster() -> None:
    log: list[tuple[str, str, str]] = []
    clusters = _bare(log)
    clusters["ctx-web"] = FakeCluster("web", log, namespaces=(*BARE, "shop"))  # the callers'
    dry = _rollout(clusters, ["web"])
    (run,) = dry.run(dry_run=True)
    assert not [e for e in log if e[1] in ("apply", "create")]
    assert ("created", "Namespace istio-system") in run.actions
    notes = dry.notes()
    assert any("would create Namespace istio-system" in n for n in notes)
    assert any(f"validated in namespace {STAND_IN_NAMESPACE}" in n for n in notes)
    # the real apply: Istio's namespace first, then the CA secret in it
    log.clear()
    real = _rollout(clusters, ["web"])
    real.run()
    writes = [e[2] for e in log if e[1] == "apply"]
    assert writes.index("Namespace/istio-system") < writes.index("Secret/cacerts")
    assert any("created Namespace istio-system" in n for n in real.notes())
    web = clusters["ctx-web"]
    assert web.get("v1", "Secret", "cacerts", "istio-system") is not None
    # once there, it is neither created again nor touched
    log.clear()
    again = _rollout(clusters, ["web"])
    again.run()
    assert again.notes() == []
    assert "Namespace/istio-system" not in [e[2] for e in log]


def test_missing_application_namespace_is_said_plainly() -> None:
    log: list[tuple[str, str, str]] = []
    with pytest.raises(ApplyRefused) as info:
        _rollout(_bare(log), ["payments"]).run(dry_run=True)
    text = str(info.value)
    assert (
        "Namespace cards (for EnvoyFilter cards/meshfed-replies-tokenizer, "
        "EnvoyFilter cards/meshfed-xfcc-tokenizer, "
        "AuthorizationPolicy cards/meshfed-guard-tokenizer, "
        "PeerAuthentication cards/meshfed-strict)"
    ) in text
    assert "it belongs to the applications (the workload cards/tokenizer)" in text
    assert "not found" not in text
    assert "would create Namespace istio-system" in text  # the rest was still dry-run
    assert not [e for e in log if e[1] in ("apply", "create", "delete")]


def test_pki_install_on_a_bare_cluster_needs_only_istios_namespace() -> None:
    log: list[tuple[str, str, str]] = []
    clusters = _bare(log)
    rollout = _rollout(clusters, ["payments"], pki_only=True)
    runs = rollout.run()
    assert [r.created for r in runs] == [["istio-system"], ["istio-system"]]  # remote, primary
    for cluster in ("ctx-east", "ctx-west"):
        ns = clusters[cluster].get("v1", "Namespace", "istio-system")
        assert ns is not None and ns["metadata"]["labels"] == {NETWORK_LABEL: "pci"}
        assert clusters[cluster].get("v1", "Secret", "cacerts", "istio-system") is not None
    assert not clusters["ctx-east"].namespace_exists("cards")
