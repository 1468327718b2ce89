"""Watching the Pods behind discovered workloads: which Pods are watched (label selectors), and
when a Pod event calls for a reconcile (only when discovery would take another service
account). Run for real in test_controller_integration.py (a rollout to a new ServiceAccount)."""

from __future__ import annotations

from typing import Any

from meshfed.controller.discovery import (
    PodAccounts,
    accounts,
    discovered_meshes,
    matches,
    selector_of,
    watch_selectors,
)
from meshfed.spec.load import parse_spec

Obj = dict[str, Any]
KEY = ("payments", "payments")
SPEC = """
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata: {name: t}
spec:
  trust: {mode: SharedRoot}
  meshes:
    - name: payments
      trustDomain: payments.example
      ingress: {address: 127.0.0.1, port: 15443}
      kubernetes: {context: c1}
      workloads:
        - {name: tokenizer, namespace: cards, serviceAccount: tokenizer, port: 8080}
    - name: web
      trustDomain: web.example
      ingress: {address: 127.0.0.1, port: 15444}
      workloads:
        - {name: shop, namespace: shop, serviceAccount: shop, port: 8080}
  exports:
    - name: tokenizer
      mesh: payments
      workload: cards/tokenizer
      consumers: [{mesh: web, principals: [ns/shop/sa/shop]}]
"""


def pod(name: str, account: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "cards", "labels": labels or {"app": "tokenizer"}},
        "spec": {"serviceAccountName": account},
    }


def service(selector: dict[str, str]) -> Obj:
    return {
        "kind": "Service",
        "metadata": {"name": "tokenizer", "namespace": "cards"},
        "spec": {"selector": selector},
    }


def test_selectors_cover_every_selected_pod_with_one_watch_per_key() -> None:
    assert selector_of(service({"version": "v1", "app": "a"})) == (("app", "a"), ("version", "v1"))
    assert watch_selectors([(("app", "b"),), (("app", "a"), ("v", "1")), (("tier", "x"),), ()]) == (
        "app in (a,b)",
        "tier in (x)",
    )
    assert matches((("app", "a"),), {"app": "a", "other": "1"})
    assert not matches((("app", "a"), ("v", "1")), {"app": "a"})
    assert not matches((), {"app": "a"})  # a Service without selector selects no Pod
    pods = {("cards", "p1"): ("sa1", (("app", "a"),)), ("shop", "p2"): ("sa2", (("app", "a"),))}
    assert accounts(pods, "cards", (("app", "a"),)) == {"sa1"}


def test_only_meshes_that_leave_workloads_to_discovery() -> None:
    body = {
        "spec": {
            "meshes": [
                {"name": "a", "kubernetes": {"context": "c1"}},
                {"name": "b", "kubernetes": {"context": "c2"}, "workloads": []},
                {"name": "c"},
            ]
        }
    }
    assert discovered_meshes(body) == {"a"}


def tracked() -> PodAccounts:
    """What the Service watch gave: tokenizer's selector (the Pod watches are not started
    here)."""
    accounts_ = PodAccounts(lambda *_: None)
    accounts_.discovered = frozenset({"payments"})
    accounts_.selectors = {
        KEY: {("cards", "tokenizer"): selector_of(service({"app": "tokenizer"}))}
    }
    return accounts_


def test_a_rollout_kicks_when_discovery_would_take_another_account() -> None:
    fed = parse_spec(SPEC, "t")  # the last reconcile used serviceAccount tokenizer
    state = tracked()
    assert state.pod(KEY, "LISTED", pod("a", "tokenizer"), fed) is None
    assert state.pod(KEY, "MODIFIED", pod("a", "tokenizer"), fed) is None  # status updates
    assert state.pod(KEY, "ADDED", pod("a2", "tokenizer"), fed) is None  # one more replica
    # The rollout's first new Pod: discovery still takes the first by name (tokenizer).
    assert state.pod(KEY, "ADDED", pod("b", "tokenizer-v2"), fed) is None
    assert state.pod(KEY, "DELETED", pod("a", "tokenizer"), fed) is None
    why = state.pod(KEY, "DELETED", pod("a2", "tokenizer"), fed)
    assert why is not None and "cards/tokenizer: tokenizer -> tokenizer-v2" in why
    # A Pod listed when its watch (re)starts counts too: it may have changed meanwhile.
    assert state.pod(KEY, "LISTED", pod("b", "tokenizer-v2"), fed) is not None


def test_pods_of_other_workloads_and_explicit_meshes_are_not_kept() -> None:
    fed = parse_spec(SPEC, "t")
    state = tracked()
    assert state.pod(KEY, "ADDED", pod("x", "other", {"app": "ledger"}), fed) is None
    assert state.pods[KEY] == {}
    assert state.pod(("web", "web"), "ADDED", pod("y", "other"), fed) is None
    assert not state.pods.get(("web", "web"))
    # A relabelled Pod leaves the workload: its account no longer counts.
    state.pod(KEY, "ADDED", pod("z", "tokenizer-v9"), fed)
    state.pod(KEY, "ADDED", pod("w", "tokenizer"), fed)
    state.pod(KEY, "MODIFIED", pod("w", "tokenizer", {"app": "retired"}), fed)
    assert set(state.pods[KEY]) == {("cards", "z")}


def test_pods_deleted_while_nothing_watched_count_no_more_after_the_next_list() -> None:
    """A Pod deleted while its watch was down (a 410, the cluster unreachable) sends no
    DELETED event: the list that starts the watch again lacks it. Seen before that list began
    and selected by that watch, it is gone; seen after the list began, or selected only by
    another watch, it stays."""
    import time

    from meshfed.controller.discovery import selects

    assert selects("app in (ledger,tokenizer)", {"app": "tokenizer"})
    assert not selects("app in (ledger,tokenizer)", {"app": "token"})
    assert selects(None, {})
    fed = parse_spec(SPEC, "t")  # the last reconcile used serviceAccount tokenizer
    state = tracked()
    state.pod(KEY, "ADDED", pod("old", "tokenizer"), fed)
    state.pod(KEY, "ADDED", pod("new", "tokenizer-v2"), fed)
    state.pods[KEY][("cards", "elsewhere")] = ("zz", (("tier", "x"),))  # another watch's
    state.recorded[KEY][("cards", "elsewhere")] = 0.0
    began = time.monotonic()
    state.pod(KEY, "ADDED", pod("later", "tokenizer"), fed)  # after the list began

    def ended(*names: str) -> dict[str, Any]:
        refs = [("", "Pod", "cards", n) for n in names]
        return {"apiVersion": "v1", "kind": "Pod", "refs": refs, "started": began,
                "labels": "app in (tokenizer)"}  # fmt: skip

    assert state.listed(KEY, ended("old", "new"), fed) is None  # all there
    # "old" was deleted unwatched: only tokenizer-v2 and the later Pod remain.
    assert state.listed(KEY, ended("new"), fed) is None  # "later" still runs as tokenizer
    assert set(state.pods[KEY]) == {("cards", "new"), ("cards", "later"), ("cards", "elsewhere")}
    state.pod(KEY, "DELETED", pod("later", "tokenizer"), fed)
    state.pod(KEY, "ADDED", pod("old2", "tokenizer"), fed)
    began = time.monotonic()
    why = state.listed(KEY, ended("new"), fed)  # "old2" went while unwatched: the account moved
    assert why is not None and "cards/tokenizer: tokenizer -> tokenizer-v2" in why
    assert set(state.pods[KEY]) == {("cards", "new"), ("cards", "elsewhere")}
