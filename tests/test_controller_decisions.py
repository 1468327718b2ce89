"""The controller's decisions that need no cluster: drift, leader election, status, the PKI
state's encoding, the install manifests and their RBAC."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshfed.controller.drift import last_writer, may_drift, missing_after_list, repair_for
from meshfed.controller.leader import Observed, decide
from meshfed.controller.manifests import (
    JEMALLOC,
    JEMALLOC_CONF,
    MEMORY_ENV,
    ControllerOptions,
    management_manifests,
    target_manifests,
)
from meshfed.controller.pkistate import (
    SecretState,
    decode_key,
    encode_key,
    files_of,
    secret_body,
    snapshot,
)
from meshfed.controller.rbac import MANAGEMENT_NAMESPACE_RULES, plural_of, target_cluster_rules
from meshfed.controller.status import (
    ClusterReport,
    MeshReport,
    Outcome,
    federation_status,
    import_status,
    merge_conditions,
)
from meshfed.controller.worker import service_signature
from meshfed.kube.errors import KubeError
from meshfed.kube.targets import PRUNE_KINDS, prune_set, ref
from meshfed.plan.build import build_plan
from meshfed.spec.load import load_spec

from conftest import Rendered
from k8s_schema import validate_manifest

BANK = Path(__file__).resolve().parents[1] / "src/meshfed/examples/bank.yaml"
LABELS = {"app.kubernetes.io/managed-by": "meshfed", "meshfed.dev/federation": "bank"}


def _obj(name: str, writers: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": name,
            "namespace": "meshfed-system",
            "labels": dict(LABELS),
            "managedFields": [
                {"manager": m, "operation": "Apply" if m == "meshfed" else "Update", "time": t}
                for m, t in writers
            ],
        },
        **extra,
    }


REF = ("security.istio.io", "AuthorizationPolicy", "meshfed-system", "allow-x")


# -- drift ----------------------------------------------------------------------------------------
def test_a_deletion_no_watch_saw_is_found_by_the_next_complete_list() -> None:
    # Deleted between a reconcile's writes and the watch's first list (or while an expired
    # watch re-lists): no DELETED event ever comes, but the list lacks it.
    gone, kept = _obj("allow-x", [("meshfed", "t1")]), _obj("allow-y", [("meshfed", "t1")])
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "a"}}
    desired = {ref(o): o for o in (gone, kept, service)}
    listed = [ref(kept)]
    missing = missing_after_list(desired, "security.istio.io/v1", "AuthorizationPolicy", listed)
    assert missing == [gone]
    # Repaired as a deletion by hand would be.
    repair = repair_for("DELETED", missing[0], desired, "bank")
    assert repair is not None and repair.action == "restore" and repair.obj is gone
    # Only the listed kind is judged (the Service is another watch's), and a full list misses
    # nothing.
    assert missing_after_list(desired, "v1", "Service", [ref(service)]) == []
    assert missing_after_list(desired, "security.istio.io/v1", "AuthorizationPolicy", desired) == []
    # Pruned by meshfed meanwhile: not restored.
    assert repair_for("DELETED", gone, desired, "bank", pruned_by_us={ref(gone)}) is None
    # Written after the list began (a reconcile wrote while the watch listed): not judged.
    late = missing_after_list(
        desired, "security.istio.io/v1", "AuthorizationPolicy", listed, written_after={ref(gone)}
    )
    assert late == []


@pytest.mark.parametrize("event", ["ADDED", "MODIFIED", "DELETED"])
@pytest.mark.parametrize(
    "writers",
    [
        [("meshfed", "2026-01-01T00:00:00Z")],
        [("meshfed", "2026-01-01T00:00:00Z"), ("kubectl", "2026-01-01T00:00:05Z")],
        [("kubectl", "2026-01-01T00:00:00Z"), ("meshfed", "2026-01-01T00:00:05Z")],
        [],
    ],
)
def test_events_left_out_early_never_call_for_a_repair(
    event: str, writers: list[tuple[str, str]]
) -> None:
    # The watches drop events may_drift refuses before they are queued: for those,
    # repair_for must have nothing to do, whatever was rendered.
    live = _obj("allow-x", writers)
    other = _obj("allow-x", [("meshfed", "2026-01-01T00:00:00Z")], spec={"action": "DENY"})
    if not may_drift(event, live):
        for desired in ({}, {REF: live}, {REF: other}):
            assert repair_for(event, live, desired, "bank") is None
    assert may_drift("DELETED", live)
    # The list of what meshfed itself wrote is left out (thousands of objects at start).
    assert not may_drift("MODIFIED", _obj("allow-x", [("meshfed", "2026-01-01T00:00:00Z")]))


def test_own_write_is_not_drift() -> None:
    live = _obj("allow-x", [("meshfed", "2026-01-01T00:00:00Z")])
    assert repair_for("MODIFIED", live, {REF: live}, "bank") is None


def test_hand_edit_is_restored_as_rendered() -> None:
    desired = _obj("allow-x", [], spec={"action": "ALLOW"})
    live = _obj(
        "allow-x",
        [("meshfed", "2026-01-01T00:00:00Z"), ("kubectl-edit", "2026-01-01T00:00:05Z")],
    )
    repair = repair_for("MODIFIED", live, {REF: desired}, "bank")
    assert repair is not None and repair.action == "restore"
    assert repair.obj is desired
    assert "kubectl-edit" in repair.why


def test_status_updates_by_others_are_not_drift() -> None:
    live = _obj("allow-x", [("meshfed", "2026-01-01T00:00:00Z")])
    live["metadata"]["managedFields"].append(
        {
            "manager": "kcm",
            "operation": "Update",
            "subresource": "status",
            "time": "2026-01-02T00:00:00Z",
        }
    )
    assert last_writer(live) == "meshfed"


def test_same_second_edit_counts_as_someone_elses() -> None:
    t = "2026-01-01T00:00:00Z"
    assert last_writer(_obj("a", [("meshfed", t), ("kubectl", t)])) == "kubectl"


def test_deletion_by_hand_is_restored_but_not_our_prune() -> None:
    desired = _obj("allow-x", [])
    live = _obj("allow-x", [("meshfed", "2026-01-01T00:00:00Z")])
    repair = repair_for("DELETED", live, {REF: desired}, "bank")
    assert repair is not None and repair.action == "restore"
    assert repair_for("DELETED", live, {}, "bank") is None
    assert repair_for("DELETED", live, {REF: desired}, "bank", pruned_by_us={REF}) is None


def test_extra_labelled_object_is_pruned() -> None:
    live = _obj("allow-x", [("kubectl-client-side-apply", "2026-01-01T00:00:00Z")])
    repair = repair_for("ADDED", live, {}, "bank")
    assert repair is not None and repair.action == "prune"


def test_other_federations_and_unlabelled_objects_are_left_alone() -> None:
    live = _obj("allow-x", [("kubectl", "2026-01-01T00:00:00Z")])
    assert repair_for("ADDED", live, {}, "other") is None
    live["metadata"]["labels"] = {}
    assert repair_for("ADDED", live, {}, "bank") is None


# -- leader election ------------------------------------------------------------------------


def test_leader_decisions() -> None:
    seen = Observed(("b", "t1"), changed_at=100.0)
    assert decide(None, "a", seen, 101.0, 15.0) == "acquire"
    assert decide({"holderIdentity": ""}, "a", seen, 101.0, 15.0) == "acquire"
    assert decide({"holderIdentity": "a"}, "a", seen, 101.0, 15.0) == "renew"
    assert decide({"holderIdentity": "b"}, "a", seen, 110.0, 15.0) == "wait"
    # Expiry is measured on our own clock since the record last changed, never by the
    # holder's timestamps (clocks differ between nodes).
    assert (
        decide({"holderIdentity": "b", "renewTime": "2000-01-01T00:00:00Z"}, "a", seen, 110.0, 15.0)
        == "wait"
    )
    assert decide({"holderIdentity": "b"}, "a", seen, 116.0, 15.0) == "acquire"


# -- status ---------------------------------------------------------------------------------


def _plan() -> Any:
    fed = load_spec(BANK)
    return build_plan(fed, {m.name: f"PEM {m.name}" for m in fed.spec.meshes})


def test_import_served_by_failover_when_first_source_unavailable() -> None:
    imports = import_status(_plan(), {})
    tokenizer = next(i for i in imports if i["host"].startswith("tokenizer"))
    assert tokenizer["servedBy"] == "payments/tokenizer"
    assert tokenizer["sources"] == ["payments/tokenizer", "payments-dr/tokenizer"]
    imports = import_status(_plan(), {"payments": "cluster unreachable"})
    tokenizer = next(i for i in imports if i["host"].startswith("tokenizer"))
    assert tokenizer["servedBy"] == "payments-dr/tokenizer"
    assert "payments" in tokenizer["reason"]
    ledger = next(i for i in imports if i["host"].startswith("ledger"))
    assert "servedBy" not in ledger and "no source mesh available" in ledger["reason"]


def _outcome(**kw: Any) -> Outcome:
    clusters = [
        ClusterReport("web", "web", "web-admin", "primary", applied=True, apply_message="ok")
    ]
    return Outcome(3, meshes=[MeshReport("web", clusters)], counts={"meshes": 1}, **kw)


def _cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_ready_status() -> None:
    status = federation_status(_outcome(), None, NOW)
    assert _cond(status, "Ready")["status"] == "True"
    assert _cond(status, "Ready")["observedGeneration"] == 3
    assert _cond(status, "Degraded")["status"] == "False"
    mesh = status["meshes"][0]
    assert {c["type"]: c["status"] for c in mesh["conditions"]} == {
        "Applied": "True",
        "Reachable": "True",
        "Drifted": "False",
    }


def test_unreachable_cluster_and_held_mesh() -> None:
    outcome = _outcome()
    outcome.meshes[0].clusters[0].reachable = False
    outcome.meshes[0].clusters[0].unreachable_reason = "connection refused"
    outcome.meshes[0].clusters[0].applied = None
    outcome.meshes.append(MeshReport("shop", [], frozen="its federation with mesh web changes"))
    status = federation_status(outcome, None, NOW)
    assert _cond(status, "Ready")["reason"] == "ClusterUnreachable"
    assert _cond(status, "Degraded")["status"] == "True"
    assert "shop" in _cond(status, "Degraded")["message"]
    web = status["meshes"][0]
    reach = next(c for c in web["conditions"] if c["type"] == "Reachable")
    assert reach["status"] == "False" and "connection refused" in reach["message"]
    shop = status["meshes"][1]
    applied = next(c for c in shop["conditions"] if c["type"] == "Applied")
    assert applied["reason"] == "Held"


def test_invalid_spec_status_names_the_field() -> None:
    status = federation_status(
        _outcome(spec_problems=["federation/bank: spec.meshes[0]: bad. Fix: x"]), None, NOW
    )
    assert _cond(status, "Ready")["reason"] == "InvalidSpec"
    assert "spec.meshes[0]" in _cond(status, "Ready")["message"]


def test_transition_time_moves_only_with_the_status() -> None:
    first = merge_conditions([], [{"type": "Ready", "status": "True"}], NOW)
    later = datetime(2026, 1, 2, tzinfo=UTC)
    same = merge_conditions(first, [{"type": "Ready", "status": "True"}], later)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    flipped = merge_conditions(first, [{"type": "Ready", "status": "False"}], later)
    assert flipped[0]["lastTransitionTime"] == "2026-01-02T00:00:00Z"


def test_drift_shows_in_mesh_status() -> None:
    outcome = _outcome()
    outcome.meshes[0].clusters[0].restored = ["AuthorizationPolicy meshfed-system/allow-x created"]
    status = federation_status(outcome, None, NOW)
    drift = next(c for c in status["meshes"][0]["conditions"] if c["type"] == "Drifted")
    assert drift["status"] == "True" and "allow-x" in drift["message"]


def test_service_signature_follows_ports_accounts_and_addresses() -> None:
    svc: dict[str, Any] = {
        "spec": {"ports": [{"port": 80, "name": "http"}], "selector": {"app": "a"}}
    }
    before = service_signature(svc)
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}}
    assert service_signature(svc) != before


# -- PKI state in a Secret ------------------------------------------------------------------


@given(st.text(min_size=1, max_size=40).filter(lambda s: ".." not in s and not s.startswith("/")))
def test_secret_keys_round_trip(path: str) -> None:
    key = encode_key(path)
    assert all(c.isalnum() or c in "-._" for c in key)
    assert decode_key(key) == path


def test_unsafe_paths_refused() -> None:
    with pytest.raises(KubeError):
        decode_key(encode_key("../etc/passwd"))


def test_state_files_and_modes_round_trip(tmp_path: Path) -> None:
    (tmp_path / "pki/payments").mkdir(parents=True)
    (tmp_path / "pki/payments/ca-key.pem").write_bytes(b"KEY")
    (tmp_path / "pki/payments/ca-key.pem").chmod(0o600)
    (tmp_path / "pki/payments/ca-cert.pem").write_bytes(b"CERT")
    (tmp_path / "pki/payments/ca-cert.pem").chmod(0o644)
    (tmp_path / "pki/.lock").write_bytes(b"")
    files = snapshot(tmp_path)
    assert set(files) == {"pki/payments/ca-key.pem", "pki/payments/ca-cert.pem"}
    body = secret_body("bank", "meshfed-system", files)
    assert body["metadata"]["name"] == "meshfed-state-bank"
    assert files_of(body) == files
    assert files["pki/payments/ca-key.pem"][1] == 0o600


class _Secrets:
    """The management cluster's Secrets as the state needs them (get, create, replace)."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] = {}

    def get(self, _api: str, _kind: str, name: str, _ns: str) -> Any:
        return self.stored.get(name)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        body["metadata"]["resourceVersion"] = "1"
        self.stored[body["metadata"]["name"]] = body
        return body

    def replace(self, body: dict[str, Any], manager: str) -> dict[str, Any]:
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        self.stored[body["metadata"]["name"]] = body
        return body


def test_a_state_session_leaves_no_copy_of_the_keys_behind(tmp_path: Path) -> None:
    """After a session the checked-out files are gone from the disk and from the process:
    the copy kept to compare at commit went with them (an idle controller held 1.8 MB of it,
    private keys included)."""
    secrets = _Secrets()
    state = SecretState(secrets, "meshfed-system", "bank", tmp_path)  # type: ignore[arg-type]
    with state.session() as path:
        (path / "pki").mkdir(mode=0o700)
        (path / "pki/ca-key.pem").write_bytes(b"KEY")
        (path / "pki/ca-key.pem").chmod(0o600)
    assert files_of(secrets.stored["meshfed-state-bank"]) == {"pki/ca-key.pem": (b"KEY", 0o600)}
    assert not state.dir.exists() and state._checked_out == {}
    with state.session() as path:  # read back and unchanged: nothing written
        assert (path / "pki/ca-key.pem").read_bytes() == b"KEY"
    assert secrets.stored["meshfed-state-bank"]["metadata"]["resourceVersion"] == "1"
    assert not state.dir.exists() and state._checked_out == {}


def test_state_secret_is_never_pruned_as_a_federation_object() -> None:
    """The management cluster may be a mesh's cluster too: the CA must not look like one of
    the federation's rendered objects to pruning."""
    body = secret_body("bank", "meshfed-system", {"pki/x": (b"KEY", 0o600)})
    assert prune_set([body], [], "bank") == []


def test_oversized_state_refused() -> None:
    with pytest.raises(KubeError, match="more than a Secret"):
        secret_body("bank", "ns", {"big": (b"x" * 1_000_000, 0o600)})


# -- manifests and RBAC -----------------------------------------------------------------------


def test_manifests_are_valid_kubernetes_objects() -> None:
    objects = management_manifests(ControllerOptions(image="registry.example/meshfed:1"))
    objects += target_manifests(("istio-system",))
    problems = [p for o in objects for p in validate_manifest(o)]
    assert problems == []
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/meshfed:1"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    names = [(o["kind"], o["metadata"]["name"]) for o in objects if "metadata" in o]
    cluster_wide = [n for n in names if n[0].startswith("Cluster")]
    assert len(cluster_wide) == len(set(cluster_wide)), "management and mesh roles collide"
    for binding in (o for o in objects if o["kind"].endswith("Binding")):
        assert all(subject.get("namespace") for subject in binding["subjects"]), binding
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]
    assert volume["emptyDir"] == {"medium": "Memory"}


def test_the_image_and_the_deployment_run_the_same_allocator_settings() -> None:
    """The Deployment sets MEMORY_ENV; the image sets the same and preloads jemalloc from
    ``JEMALLOC`` (where its Dockerfile puts it), which the idle memory measured is of."""
    dockerfile = (Path(__file__).parent.parent / "Dockerfile").read_text()
    env = dockerfile[dockerfile.index("\nENV ") :].split("\nEXPOSE")[0].replace("\\\n", " ")
    for key, value in {**MEMORY_ENV, "LD_PRELOAD": JEMALLOC}.items():
        assert f"{key}={value}" in env.split(), key
    assert "libjemalloc2" in dockerfile and f" {JEMALLOC}\n" in dockerfile
    deployment = next(
        o for o in management_manifests(ControllerOptions()) if o["kind"] == "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert MEMORY_ENV.items() <= {e["name"]: e.get("value") for e in container["env"]}.items()


JEMALLOC_HERE = next(
    (
        p
        for p in (
            "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
            "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
            JEMALLOC,
        )
        if Path(p).is_file()
    ),
    None,
)


@pytest.mark.skipif(
    JEMALLOC_HERE is None, reason="no libjemalloc.so.2 on this machine (Debian: libjemalloc2)"
)
def test_jemalloc_takes_the_controllers_configuration_and_is_reported() -> None:
    """Run for real: jemalloc preloaded with MEMORY_ENV accepts every setting (it says
    ``<jemalloc>: Invalid conf`` on stderr otherwise), and ``controller run`` says which
    allocator it runs on."""
    import subprocess
    import sys

    env = {**os.environ, **MEMORY_ENV, "LD_PRELOAD": str(JEMALLOC_HERE)}
    code = "from meshfed.controller.manifests import allocator; print(allocator())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "<jemalloc>" not in done.stderr, done.stderr
    assert done.stdout.strip() == f"jemalloc (MALLOC_CONF={JEMALLOC_CONF})"
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    done = subprocess.run([sys.executable, "-c", code], env=plain, capture_output=True, text=True)
    assert done.stdout.startswith("the C library's malloc"), done.stdout


def _all_rules(rules: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    ]


def test_rbac_has_no_wildcards_and_covers_every_rendered_kind() -> None:
    rules = target_cluster_rules()
    granted = _all_rules(rules) + _all_rules(MANAGEMENT_NAMESPACE_RULES)
    assert all("*" not in (g, r, v) for g, r, v in granted)
    plurals = {
        "ServiceEntry": "serviceentries",
        "AuthorizationPolicy": "authorizationpolicies",
        "Telemetry": "telemetries",
        "Service": "services",
    }
    for api_version, kind in PRUNE_KINDS:
        group = api_version.rpartition("/")[0]
        plural = plurals.get(kind, kind.lower() + "s")
        found = {v for g, r, v in _all_rules(rules) if g == group and r == plural}
        assert {"get", "list", "watch", "create", "patch", "delete"} <= found, kind
    # The reader ClusterRole's escalate/bind is limited to its own name.
    escalate = [r for r in rules if "escalate" in r["verbs"]]
    assert escalate and all(r.get("resourceNames") for r in escalate)


def test_objects_in_application_namespaces_are_applied_pruned_and_watched_cluster_wide(
    bank_rendered: Rendered, partners_rendered: Rendered
) -> None:
    """Objects meshfed puts in application namespaces (guards, STRICT mTLS, the import callers'
    copies of the egress subsets' rule) need nothing namespace-scoped: every kind is a prune
    kind, the controller's ClusterRole on a mesh cluster grants it (bound cluster-wide) and the
    drift watches are cluster-wide by label, with no namespace."""
    from meshfed.controller.manifests import target_manifests
    from meshfed.controller.watch import watch_specs
    from meshfed.plan.model import ClusterPlan

    rules = target_cluster_rules()
    granted = {(g, r) for g, r, v in _all_rules(rules) if v == "create"}
    kinds = set()
    for rendered in (bank_rendered, partners_rendered):
        for mesh in rendered.workspace.plan.meshes:
            for doc in rendered.docs(mesh.name):
                ns = (doc.get("metadata") or {}).get("namespace")
                if ns and ns not in ("meshfed-system", "istio-system"):
                    kinds.add((doc["apiVersion"], doc["kind"]))
    assert ("networking.istio.io/v1", "DestinationRule") in kinds  # the callers' copies
    for api_version, kind in kinds:
        assert (api_version, kind) in PRUNE_KINDS, kind
        assert (api_version.rpartition("/")[0], plural_of(kind)) in granted, kind
    binding = next(m for m in target_manifests() if m["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    specs = watch_specs("bank", [(("bank", "web"), ClusterPlan("web", "ctx", "primary"))], set())
    watched = {(w.api_version, w.kind) for w in specs}
    assert kinds <= watched
    assert not hasattr(specs[0], "namespace")  # a watch spec names no namespace


# -- rotation requests ----------------------------------------------------------------------


def test_rotation_annotation() -> None:
    from meshfed.controller.rotation import Request, parse_request

    assert parse_request(None) is None
    assert parse_request("intermediate/payments") == Request("intermediate", "payments")
    assert parse_request("root") == Request("root", None)
    assert parse_request("root/globex") == Request("root", "globex")
    assert parse_request("abort") == Request("abort", None)
    for bad in ("intermediate", "leaf/x", "abort/x"):
        with pytest.raises(ValueError, match=r"meshfed\.dev/rotate"):
            parse_request(bad)
