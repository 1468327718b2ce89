"""What a rollout asks the clusters, on fake clusters: clusters written at once keep the
order that matters (a remote's reader token before its primary's remote secret); a dry-run
reads nothing it already knows; discovery's Pod lists in parallel find what one at a time
finds."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import yaml

from meshfed.kube.apply import Rollout
from meshfed.kube.client import Obj
from meshfed.kube.discover import AddressFound, Discovery, completed_spec, discover_cluster
from meshfed.kube.errors import KubeError
from meshfed.kube.remote_secret import TOKEN_PREFIX
from meshfed.kube.runs import ClusterRun, write_phases
from meshfed.kube.state import spec_yaml
from meshfed.kube.targets import ClusterTarget, RetiredMesh, cluster_targets
from meshfed.plan.model import ClusterPlan
from meshfed.spec.model import Federation
from test_kube import SPEC, FakeCluster, _rollout, fed_and_plan, rendered


class Counting(FakeCluster):
    """A fake cluster that also counts the objects read one by one."""

    def __init__(self, name: str, log: list[tuple[str, str, str]]) -> None:
        super().__init__(name, log)
        self.kinds[("v1", "Pod")] = ("pods", True)
        self.gets: list[str] = []
        self.local = threading.local()  # per thread: the rollout works with several

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        self.gets.append(f"{kind}/{name}")
        return super().get(api_version, kind, name, namespace)

    def namespace_exists(self, name: str) -> bool:
        if not getattr(self.local, "inside", False):  # (the fake's own apply asks too)
            self.gets.append(f"Namespace/{name}")
        return super().namespace_exists(name)

    def apply(
        self, obj: Obj, *, dry_run: bool = False, force: bool = False, namespace: str | None = None
    ) -> Obj:
        self.local.inside = True
        try:
            return super().apply(obj, dry_run=dry_run, force=force, namespace=namespace)
        finally:
            self.local.inside = False


def _counting(log: list[tuple[str, str, str]]) -> dict[str, Counting]:
    return {
        "ctx-east": Counting("east", log),
        "ctx-west": Counting("west", log),
        "ctx-web": Counting("web", log),
    }


def test_write_phases_put_remotes_before_their_primaries_and_retired_clusters_last() -> None:
    _, plan = fed_and_plan()
    targets = cluster_targets(plan, rendered(plan))
    gone = ClusterTarget(
        RetiredMesh("old", "istio-system"), ClusterPlan("old", "ctx-old", "primary"), []
    )
    runs = [ClusterRun(t) for t in [*targets, gone]]
    phases = write_phases(runs)
    names = [[r.target.name for r in phase] for phase in phases]
    assert names == [["west", "web"], ["east"], ["old"]]  # east serves remote west
    assert write_phases([r for r in runs if r.target.name != "old"])[-1][0].target.name == "east"


def test_clusters_written_at_once_still_issue_the_token_before_the_remote_secret() -> None:
    fed, plan = fed_and_plan()
    log: list[tuple[str, str, str]] = []
    _rollout(fed, plan, _counting(log), workers=8).run()
    token = next(
        i
        for i, e in enumerate(log)
        if e[1] == "create" and e[2].startswith("Secret/" + TOKEN_PREFIX)
    )
    remote_secret = log.index(("east", "apply", "Secret/istio-remote-secret-west"))
    assert token < remote_secret
    # and every dry-run before any write
    writes = [i for i, e in enumerate(log) if e[1] in ("apply", "create", "delete")]
    assert max(i for i, e in enumerate(log) if e[1] == "dry-run") < min(writes)


def _state_reads(cluster: Counting) -> int:
    return sum(1 for g in cluster.gets if g.startswith("ConfigMap/meshfed-"))


def test_the_stored_state_is_read_once_per_primary() -> None:
    fed, plan = fed_and_plan()
    clusters = _counting([])
    _rollout(fed, plan, clusters).run()
    for cluster in clusters.values():
        cluster.gets.clear()
    _rollout(fed, plan, clusters).run()  # the dry-run takes the state as just read
    assert [_state_reads(c) for c in clusters.values()] == [1, 0, 1]  # west is a remote


def test_a_dry_run_reads_no_object_the_caller_knows() -> None:
    fed, plan = fed_and_plan()
    clusters = _counting([])
    _rollout(fed, plan, clusters).run()
    for cluster in clusters.values():
        cluster.gets.clear()
    asked: list[str] = []

    def live(target: ClusterTarget, obj: Obj) -> Obj | None:
        """As the controller knows them: what it wrote (here, the fake's own store)."""
        asked.append(obj["metadata"]["name"])
        cluster, meta = clusters[target.cluster.context or ""], obj["metadata"]
        return FakeCluster.get(
            cluster, obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")
        )

    targets = cluster_targets(plan, rendered(plan))
    roots = {m.name: f"PEM {m.name}" for m in plan.meshes}
    runs = Rollout(
        fed,
        plan,
        roots,
        targets,
        lambda c: clusters[c.context or ""],
        live=live,
        workers=8,
    ).run()
    assert asked  # the dry-run asked the caller
    # and read nothing itself, not even whether the objects' namespaces are there
    assert [c.gets for c in clusters.values()] == [[], [], []]
    assert all(run.counts()["created"] == 0 for run in runs)


def _service(name: str, ports: list[dict[str, Any]], app: str | None = None) -> Obj:
    spec: dict[str, Any] = {"ports": ports}
    if app:
        spec["selector"] = {"app": app}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


def _pod(name: str, app: str, account: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {"serviceAccountName": account},
    }


def test_discovery_with_pod_lists_at_once_finds_what_one_at_a_time_finds() -> None:
    cluster = Counting("web", [])
    objects = [
        _service(f"s{k}", [{"name": "http", "port": 8000 + k}], app=f"a{k}") for k in range(12)
    ]
    objects += [
        _service("two", [{"name": "tcp", "port": 1}, {"name": "http", "port": 2}], app="b"),
        _service("bare", []),
        _service("noselector", [{"name": "grpc", "port": 9}]),
    ]
    objects += [_pod(f"p{k}", f"a{k}", f"sa{k % 3}") for k in range(12)]
    objects += [_pod("b1", "b", "one"), _pod("b2", "b", "other")]
    for obj in objects:
        cluster.apply(obj)
    serial, parallel = Discovery("web"), Discovery("web")
    discover_cluster(cluster, "istio-system", serial)
    discover_cluster(cluster, "istio-system", parallel, workers=8)
    assert parallel.workloads == serial.workloads
    assert parallel.notes == serial.notes
    assert {w["name"]: w["serviceAccount"] for w in serial.workloads}["s4"] == "sa1"
    assert {w["name"]: w["serviceAccount"] for w in serial.workloads}["noselector"] == "noselector"
    assert any("pods run as one, other" in n for n in serial.notes)
    assert any("bare: no ports" in n for n in serial.notes)


def _discovering() -> Federation:
    doc = yaml.safe_load(SPEC)
    del doc["spec"]["meshes"][0]["ingress"]["address"]
    return Federation.model_validate(doc)


def test_a_completed_spec_is_the_whole_spec_made_again_and_shares_the_rest() -> None:
    fed = _discovering()
    name = fed.spec.meshes[0].name
    found = [AddressFound(name, fed.spec.meshes[0].name, "192.0.2.9", "federation-ingress")]
    complete = completed_spec(fed, {}, found)
    doc = fed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    doc["spec"]["meshes"][0]["ingress"]["address"] = "192.0.2.9"
    assert complete == Federation.model_validate(doc)  # what dumping it all made
    assert complete.spec.exports is fed.spec.exports  # shared, not made again
    assert complete.spec.meshes[1] is fed.spec.meshes[1]
    whole = yaml.safe_dump(
        complete.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False
    )
    assert spec_yaml(fed) and spec_yaml(complete) == whole  # its sections reused


def test_discovered_values_that_do_not_fit_the_spec_name_the_mesh() -> None:
    fed = _discovering()
    name = fed.spec.meshes[0].name
    bad = [{"name": "w0", "namespace": "shop", "serviceAccount": "w0", "port": 0}]
    with pytest.raises(KubeError) as info:
        completed_spec(fed, {name: bad}, [])
    assert str(info.value) == (
        f"discovery in mesh {name}: what its clusters hold does not fit the spec: "
        "workloads.0.port: Input should be greater than or equal to 1 (found 0)"
    )


@pytest.mark.parametrize("state_known", [False, True])
def test_a_known_stored_state_is_written_without_a_dry_run(state_known: bool) -> None:
    # Between full checks the controller wrote the previous state itself: the new one is the
    # same object with new data (refused only for its size, checked without asking), so it is
    # not dry-run (ten 0.5 MB dry-runs were most of a Service change's at ten clusters). Every
    # other object still is, and the state is still written, last.
    fed, plan = fed_and_plan()
    log: list[tuple[str, str, str]] = []
    clusters = _counting(log)
    _rollout(fed, plan, clusters).run()
    log.clear()
    targets = cluster_targets(plan, rendered(plan))
    roots = {m.name: f"PEM {m.name} rotated" for m in plan.meshes}  # the state changes
    Rollout(
        fed, plan, roots, targets, lambda c: clusters[c.context or ""], state_known=state_known
    ).run()
    state = sorted(e[1] for e in log if e[2].startswith("ConfigMap/meshfed-"))
    others = [e for e in log if e[1] == "dry-run" and not e[2].startswith("ConfigMap/meshfed-")]
    assert state == (["apply"] * 2 if state_known else ["apply", "apply", "dry-run", "dry-run"])
    assert len(others) > 10  # every other object is still dry-run (nothing is settled here)
    assert log[-1][2].startswith("ConfigMap/meshfed-")  # written last


def test_a_stored_state_is_checked_without_asking_only_when_known_mine_and_small() -> None:
    from meshfed.kube.runs import STATE_CHECKED_BELOW, known_state

    labels = {"app.kubernetes.io/managed-by": "meshfed", "meshfed.dev/federation": "bank"}
    live = {"metadata": {"name": "meshfed-bank", "labels": labels, "resourceVersion": "7"}}
    state = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"spec.yaml": "x" * 1000}}
    checked = known_state(state, live)
    assert checked is not None and checked.force and checked.obj is state
    assert checked.live == {"metadata": {"resourceVersion": "7"}}  # the write's precondition
    assert known_state(state, None) is None  # not known: dry-run it
    assert known_state(state, {"metadata": {"name": "meshfed-bank"}}) is None  # not meshfed's
    big = {**state, "data": {"spec.yaml": "x" * STATE_CHECKED_BELOW}}
    assert known_state(big, live) is None  # near the 1 MiB limit: the API server says
