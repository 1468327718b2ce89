"""What discovery read, kept until a watch reports a change (``controller/discomemo.py``):
pure, no cluster."""

from __future__ import annotations

import queue

from meshfed.controller.discomemo import DiscoveryMemo, Found
from meshfed.kube.discover import AddressFound
from meshfed.spec.model import Mesh

MESH = Mesh.model_validate(
    {
        "name": "m00",
        "trustDomain": "m00.example",
        "ingress": {"port": 15443},
        "kubernetes": {"context": "c1"},
    }
)
FOUND = Found(
    [{"name": "w0", "namespace": "svc", "serviceAccount": "w0", "port": 8080}],
    [AddressFound("m00", "m00", "192.0.2.7", "federation-ingress")],
    pending=False,
)


def test_kept_until_the_mesh_is_touched() -> None:
    memo = DiscoveryMemo()
    assert memo.get("bench", MESH) is None  # never read
    memo.keep("bench", MESH, memo.mark("bench", "m00"), FOUND)
    # No watch has reported on the mesh yet (they start after the first reconcile): a change
    # would go unseen, so what was read is not reused.
    assert memo.get("bench", MESH) is None
    memo.listed("bench", "m00", "m00")  # its cluster's Service watch listed
    memo.keep("bench", MESH, memo.mark("bench", "m00"), FOUND)
    assert memo.get("bench", MESH) is FOUND
    memo.touch("bench", "m01")  # another mesh
    memo.touch("other", "m00")  # another federation
    assert memo.get("bench", MESH) is FOUND
    memo.touch("bench", "m00")
    assert memo.get("bench", MESH) is None


def test_a_change_seen_while_reading_makes_what_was_read_stale() -> None:
    memo = DiscoveryMemo()
    memo.listed("bench", "m00", "m00")
    mark = memo.mark("bench", "m00")
    memo.touch("bench", "m00")  # a Service changed after the read began
    memo.keep("bench", MESH, mark, FOUND)
    assert memo.get("bench", MESH) is None


def test_another_spec_of_the_mesh_or_an_unwatched_source_is_read_again() -> None:
    memo = DiscoveryMemo()
    memo.listed("bench", "m00", "m00")
    memo.keep("bench", MESH, memo.mark("bench", "m00"), FOUND)
    moved = MESH.model_copy(update={"name": "m00", "trust_domain": "other.example"})
    assert memo.get("bench", moved) is None
    exported = Found(FOUND.workloads, [], pending=False, keep=False)  # from ServiceExports
    memo.keep("bench", MESH, memo.mark("bench", "m00"), exported)
    assert memo.get("bench", MESH) is None
    memo.keep("bench", MESH, memo.mark("bench", "m00"), FOUND)
    memo.forget("bench")
    assert memo.get("bench", MESH) is None


def test_a_mesh_of_two_clusters_is_kept_once_both_are_watched() -> None:
    two = Mesh.model_validate(
        {
            "name": "m00",
            "trustDomain": "m00.example",
            "ingress": {"address": "192.0.2.1", "port": 15443},
            "clusters": [
                {"name": "east", "context": "c1", "role": "primary"},
                {"name": "west", "context": "c2", "role": "remote"},
            ],
        }
    )
    memo = DiscoveryMemo()
    memo.listed("bench", "m00", "east")
    memo.keep("bench", two, memo.mark("bench", "m00"), FOUND)
    assert memo.get("bench", two) is None  # west's Services are not watched yet
    memo.listed("bench", "m00", "west")
    memo.keep("bench", two, memo.mark("bench", "m00"), FOUND)
    assert memo.get("bench", two) is FOUND


def test_a_service_watch_that_listed_asks_for_a_reconcile() -> None:
    # A Service changed while its watch did not run (before the first list, or in a gap a 410
    # ended) shows only as a listed Service, which is no change by itself: the end of the
    # list asks for a reconcile, which reads the mesh's discovery again (touched by the list).
    from types import SimpleNamespace

    from meshfed.controller.watch import LIST_ENDED
    from meshfed.controller.worker import FederationWorker

    memo = DiscoveryMemo()
    reconciler = SimpleNamespace(discovery=memo)  # the worker reads only its memo here
    worker = FederationWorker("bench", reconciler, lambda *_: None, lambda _s: None)  # type: ignore[arg-type]
    memo.listed("bench", "m00", "c1")
    memo.keep("bench", MESH, memo.mark("bench", "m00"), FOUND)
    worker.last = SimpleNamespace(federation=None, lb_addresses={})  # type: ignore[assignment]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "w0", "namespace": "svc"},
        "spec": {"ports": [{"name": "http", "port": 8081}], "selector": {"app": "w0"}},
    }
    key = ("m00", "c1")
    worker.on_event(key, "LISTED", service)
    ended = {"apiVersion": "v1", "kind": "Service", "refs": []}
    worker.on_event(key, LIST_ENDED, ended)
    queued = []
    while not worker.events.empty():
        queued.append(worker.events.get())
    assert ("resync", "Service watch on c1 listed") in queued
    assert memo.get("bench", MESH) is None  # read again
    # Before the first reconcile nothing is asked: that reconcile reads everything anyway.
    worker.last = None
    worker.on_event(key, LIST_ENDED, ended)
    assert [e for e in _drain(worker.events) if e[0] == "resync"] == []


def _drain(q: queue.Queue[tuple[str, object]]) -> list[tuple[str, object]]:
    out = []
    while not q.empty():
        out.append(q.get())
    return out
