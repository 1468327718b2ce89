"""What the controller keeps of what it applied (``controller/applied.py``): pure, no cluster."""

from __future__ import annotations

import copy
from typing import Any

from meshfed.controller.applied import PACK_OVER, AppliedCache, Canon
from meshfed.kube.state import canonical_json, objects_digest
from meshfed.kube.targets import prune_set

KEY = ("bank", "payments", "east")


def _obj(name: str, port: int = 8080, kind: str = "VirtualService") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "meshfed-system",
            "labels": {"app.kubernetes.io/managed-by": "meshfed", "meshfed.dev/federation": "bank"},
        },
        "spec": {"port": port},
    }


def _state(spec: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "meshfed-bank", "namespace": "meshfed-system"},
        "data": {"spec.yaml": spec},
    }


def test_settled_only_when_the_text_is_what_was_applied() -> None:
    cache, canon = AppliedCache(), Canon()
    a, b = _obj("a"), _obj("b")
    assert not cache.settled(KEY, a, canon)  # nothing known: write it
    assert cache.remember(KEY, [a, b], [], canon)  # first time: a change, not drift
    assert cache.settled(KEY, copy.deepcopy(a), Canon())
    assert not cache.settled(KEY, _obj("a", port=9090), Canon())
    assert not cache.settled(("bank", "payments", "west"), a, Canon())  # per cluster


def test_remember_tells_a_change_of_what_is_desired_from_the_same_again() -> None:
    cache, canon = AppliedCache(), Canon()
    cache.remember(KEY, [_obj("a"), _obj("b"), _state("v1")], [], canon)
    # The same objects again (a drift repair by a full check): no change.
    assert not cache.remember(KEY, [_obj("a"), _obj("b")], [], Canon())
    # Only the stored state changed: not a change of what is desired either.
    assert not cache.remember(KEY, [_obj("a"), _state("v2")], [], Canon())
    assert cache.remember(KEY, [_obj("a", port=1)], [], Canon())
    assert cache.remember(KEY, [], [_obj("b")], Canon())  # pruned
    assert set(cache.view(KEY)) == {
        ("networking.istio.io", "VirtualService", "meshfed-system", "a"),
        ("", "ConfigMap", "meshfed-system", "meshfed-bank"),
    }


def test_present_stubs_prune_like_the_listed_objects() -> None:
    cache, canon = AppliedCache(), Canon()
    foreign = _obj("theirs")
    foreign["metadata"]["labels"] = {"team": "web"}
    applied = [_obj("a"), _obj("b"), foreign]
    cache.remember(KEY, applied, [], canon)
    stubs = cache.present(KEY)
    assert stubs is not None
    desired = [_obj("a")]
    # Pruning against the stubs deletes what pruning against the real objects would.
    names = [o["metadata"]["name"] for o in prune_set(stubs, desired, "bank")]
    assert names == [o["metadata"]["name"] for o in prune_set(applied, desired, "bank")] == ["b"]
    assert all(s["apiVersion"] == "networking.istio.io/v1" for s in stubs)
    assert cache.present(("bank", "web", "web")) is None  # unknown: list the cluster


def test_a_mesh_is_reused_only_with_the_same_inputs_and_everything_kept() -> None:
    cache, canon = AppliedCache(), Canon()
    objects = [_obj("a"), _obj("b")]
    cache.remember(KEY, objects, [], canon)
    cache.mark_rendered(KEY, objects, "payments", ("bank", "plan-1"))
    assert cache.reusable("bank", "payments", ("bank", "plan-1"), [KEY])
    assert not cache.reusable("bank", "payments", ("bank", "plan-2"), [KEY])
    assert not cache.reusable("bank", "payments", ("bank", "plan-1"), [KEY, ("bank", "p", "w")])
    fresh = Canon()
    again = cache.objects_of(KEY, fresh)
    assert again is not None
    # Stubs: what waves, holds and pruning read; settled by their whole text.
    assert [(o["kind"], o["metadata"]) for o in again] == [
        (o["kind"], o["metadata"]) for o in objects
    ]
    assert "spec" not in again[0]
    assert all(cache.settled(KEY, o, fresh) for o in again)
    # The stored state's digest over read-back objects is the digest over the rendered ones.
    assert objects_digest(again, fresh) == objects_digest(objects)
    cache.remember(KEY, [], [_obj("b")], Canon())  # something of it went: render again
    assert cache.objects_of(KEY, Canon()) is None
    cache.unmark("bank", "payments")
    assert not cache.reusable("bank", "payments", ("bank", "plan-1"), [KEY])


def test_forget_drops_one_federation() -> None:
    cache, canon = AppliedCache(), Canon()
    other = ("shop", "web", "web")
    cache.remember(KEY, [_obj("a")], [], canon)
    cache.remember(other, [_obj("a")], [], canon)
    cache.mark_rendered(KEY, [_obj("a")], "payments", 1)
    cache.forget("bank")
    assert cache.present(KEY) is None and cache.present(other) is not None
    assert not cache.reusable("bank", "payments", 1, [KEY])


def test_canon_is_canonical_json_computed_once_per_object() -> None:
    canon = Canon()
    a = _obj("a")
    first = canon(a)
    assert first == canonical_json(a)
    a["spec"]["port"] = 1  # the same object: the reconcile does not change objects it has
    assert canon(a) == first
    assert canon(copy.deepcopy(a)) != first


class _Closable:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_watch_streams_of_one_cluster_share_a_connection_until_it_fails() -> None:
    from meshfed.controller.watch import Watches

    made: list[tuple[str | None, _Closable]] = []

    class Connector:
        def fresh(self, context: str | None) -> Any:
            client = _Closable()
            made.append((context, client))
            return client

    watches = Watches(Connector(), lambda *_: None, lambda _: None)  # type: ignore[arg-type]
    one = watches._client("c1")
    assert watches._client("c1") is one and watches._client("c2") is not one
    watches._failed("c1", one)
    again = watches._client("c1")
    assert again is not one and not made[0][1].closed  # streams on it end on their own
    watches._failed("c1", one)  # a late failure on the old one keeps the new one
    assert watches._client("c1") is again
    watches.close()
    assert [c for c, _ in made] == ["c1", "c2", "c1"]
    assert [closable.closed for _, closable in made] == [False, True, True]


def test_spec_memo_parses_once_per_version_and_remembers_what_it_stored() -> None:
    from pathlib import Path

    from meshfed.controller.specmemo import SpecMemo
    from meshfed.kube.state import StoredState, spec_yaml
    from meshfed.spec.load import load_spec
    from meshfed.workspace import plan_of

    bank = load_spec(Path(__file__).resolve().parents[1] / "src/meshfed/examples/bank.yaml")
    memo, calls = SpecMemo(), []

    def parse() -> Any:
        calls.append(1)
        return bank

    doc = bank.model_dump(mode="json", by_alias=True)
    assert memo.parse("bank", doc, parse) is memo.parse("bank", copy.deepcopy(doc), parse)
    doc["spec"]["meshes"][0]["ingress"]["port"] = 1
    memo.parse("bank", doc, parse)
    assert len(calls) == 2  # a new version is parsed again
    assert memo.remembered("bank") is None  # nothing stored by this controller yet
    plan = plan_of(bank)
    text = spec_yaml(bank)
    memo.stored_now("bank", text, bank, plan)
    remembered = memo.remembered("bank")
    assert remembered is not None and remembered[1] is plan
    roots = {m.name: "" for m in bank.spec.meshes}
    stored = StoredState("c1", text, roots, "2026-01-01T00:00:00Z")
    old, digest = memo.old("bank", stored)
    assert old is bank and memo.old_plan("bank", stored, digest) is plan
    # A state someone else stored: parsed and planned from its text.
    other = StoredState("c1", text.replace("15443", "15499"), roots, "2026-01-02T00:00:00Z")
    old, digest = memo.old("bank", other)
    assert old is not None and old is not bank
    assert memo.old_plan("bank", other, digest) is not plan
    memo.forget("bank")
    assert memo.remembered("bank") is None


def test_live_is_what_was_last_written_and_nothing_else() -> None:
    cache, canon = AppliedCache(), Canon()
    assert cache.live(KEY, _obj("a")) is None  # never written: read it from the cluster
    cache.remember(KEY, [_obj("a"), _state("v1")], [], canon)
    # Asked with the new desired object (another port): the one written before comes back.
    assert cache.live(KEY, _obj("a", port=9090)) == _obj("a")
    assert cache.live(KEY, _state("v2")) == _state("v1")
    assert cache.live(("bank", "payments", "west"), _obj("a")) is None  # per cluster
    cache.remember(KEY, [], [_obj("a")], Canon())  # pruned: no longer known to be there
    assert cache.live(KEY, _obj("a")) is None


def test_a_list_that_began_before_a_write_does_not_count_that_object_as_deleted() -> None:
    # The watches list while a reconcile writes (they start after the first one, and a
    # re-list can come at any time). A list that began before an object was written lacks it
    # without anyone having deleted it: judging it by that list restored every such object
    # (a read and a write each; 12 s of the worker at ten clusters while a Service change
    # waited in its queue). Written before the list began: lacking is deletion.
    import time
    from types import SimpleNamespace

    from meshfed.controller.worker import FederationWorker
    from meshfed.kube.targets import ref

    cache, canon = AppliedCache(), Canon()
    old, new = _obj("old"), _obj("new")
    cache.remember(KEY, [old], [], canon)
    between = time.monotonic()
    cache.remember(KEY, [old, new], [], canon)
    view = cache.view(KEY)
    assert view.written_since(between) == {ref(new)}
    assert view.written_since(0.0) == {ref(old), ref(new)}

    worker = FederationWorker("bank", None, lambda *_: None, lambda _s: None)  # type: ignore[arg-type]
    worker.last = SimpleNamespace(desired={KEY[1:]: view})  # type: ignore[assignment]
    repaired: list[tuple[str, str]] = []
    worker._repair = lambda key, event, obj: repaired.append((event, obj["metadata"]["name"]))  # type: ignore[method-assign]

    def ended(started: float) -> dict[str, Any]:
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "refs": [],  # neither is in the list
            "started": started,
        }

    worker._restore_unlisted(KEY[1:], ended(between))
    assert repaired == [("DELETED", "old")]  # "new" was written after the list began
    repaired.clear()
    worker._restore_unlisted(KEY[1:], ended(time.monotonic()))
    assert sorted(repaired) == [("DELETED", "new"), ("DELETED", "old")]


def test_a_long_text_is_kept_compressed_and_compares_as_the_text() -> None:
    """The stored state holds the whole spec (0.4 MB at a thousand exports, once per
    cluster): kept compressed with its digest, it still reads back and settles exactly."""
    spec = "".join(f"- name: export-{i}\n  port: {8000 + i}\n" for i in range(2000))
    state, short = _state(spec), _obj("a")
    assert len(canonical_json(state)) > PACK_OVER >= len(canonical_json(short))
    cache, canon = AppliedCache(), Canon()
    cache.remember(KEY, [state, short], [], canon)
    entries = cache.objects[KEY]
    packed = entries[("", "ConfigMap", "meshfed-system", "meshfed-bank")]
    assert isinstance(packed.packed, bytes) and len(packed.packed) * 4 < len(canonical_json(state))
    assert entries[("networking.istio.io", "VirtualService", "meshfed-system", "a")].packed == (
        canonical_json(short)
    )
    assert cache.settled(KEY, copy.deepcopy(state), Canon())
    changed = _state(spec.replace("port: 8999", "port: 9999"))
    assert not cache.settled(KEY, changed, Canon())
    assert not cache.settled(KEY, _state("short"), Canon())
    assert cache.live(KEY, changed) == state
    assert cache.view(KEY)[("", "ConfigMap", "meshfed-system", "meshfed-bank")] == state
    assert not cache.remember(KEY, [copy.deepcopy(state), short], [], Canon())
    assert cache.remember(KEY, [changed, short], [], Canon()) is False  # the state: not desired
    assert cache.live(KEY, state) == changed


def test_entries_with_the_same_labels_share_one_dict_and_unused_sets_go() -> None:
    """Thousands of applied objects carry the same few label sets: one dict per set (a dict
    per entry was 1.9 MB at ten clusters), never the caller's own (it may change it)."""
    cache, canon = AppliedCache(), Canon()
    a, b = _obj("a"), _obj("b")
    cache.remember(KEY, [a, b], [], canon)
    entries = cache.objects[KEY]
    first, second = (entries[ref] for ref in sorted(entries))
    assert first.labels is second.labels
    assert first.labels == a["metadata"]["labels"] and first.labels is not a["metadata"]["labels"]
    a["metadata"]["labels"]["meshfed.dev/federation"] = "changed"  # the caller's, not ours
    assert first.labels["meshfed.dev/federation"] == "bank"
    assert cache.view(KEY) and not hasattr(first, "__dict__")  # slotted: no dict per entry
    # Sets of objects long gone do not pile up (workloads come and go).
    for i in range(200):
        obj = _obj(f"w{i}")
        obj["metadata"]["labels"]["meshfed.dev/workload"] = f"svc.w{i}"
        cache.remember(KEY, [obj], [], Canon())
        cache.remember(KEY, [], [obj], Canon())
    assert len(cache._label_sets) <= 64 + len(cache.objects[KEY])
    assert frozenset(_obj("a")["metadata"]["labels"].items()) in cache._label_sets


def test_an_idle_worker_trims_the_heap_once_after_work_settles(monkeypatch: Any) -> None:
    """After a reconcile come its status write and the watches' events of what it wrote; the
    worker gives the C heap's free pages back once when nothing has come for ``QUIET_TRIM``,
    and not again until there was work."""
    import time

    from meshfed.controller import worker as worker_module
    from meshfed.controller.worker import QUIET_TRIM, FederationWorker

    trims: list[float] = []
    monkeypatch.setattr(worker_module, "release_memory", lambda: trims.append(time.monotonic()))
    worker = FederationWorker("bank", None, lambda *_: None, lambda _s: None)  # type: ignore[arg-type]
    worker._quiet()
    assert trims == []  # no work yet: nothing to give back
    worker._busy_at = time.monotonic()
    worker._quiet()
    assert trims == []  # work just now: its events may still come
    worker._busy_at = time.monotonic() - QUIET_TRIM
    worker._quiet()
    worker._quiet()
    assert len(trims) == 1
