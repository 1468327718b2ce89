"""Drift repairs of one batch (``FederationWorker._repair_all``): at once, each told."""

from __future__ import annotations

from typing import Any

from meshfed.spec.load import parse_spec
from test_controller_discovery import KEY, SPEC, Obj


class _Cluster:
    """One cluster as a repair uses it (get, apply, delete); each read and delete waits until
    all five of the test's are in flight at once, so repairs one after another fail here."""

    def __init__(self) -> None:
        import threading

        self.together = threading.Barrier(5, timeout=30)
        self.objects: dict[str, Obj] = {"kept": {"metadata": {"resourceVersion": "7"}}}
        self.lock = threading.Lock()

    def get(self, _api: str, _kind: str, name: str, _ns: str | None) -> Obj | None:
        self.together.wait()
        return self.objects.get(name)

    def apply(self, obj: Obj, force: bool) -> Obj:
        name = obj["metadata"]["name"]
        with self.lock:
            if name == "refused":
                from meshfed.kube.errors import KubeError

                raise KubeError("admission webhook said no", status=400)
            if name != "kept":
                self.objects[name] = {"metadata": {"resourceVersion": "8"}}
            return self.objects[name]

    def delete(self, obj: Obj) -> bool:
        self.together.wait()
        return True


def test_repairs_of_one_batch_run_at_once_and_each_is_told() -> None:
    """A hand deletion of many objects is put back with requests in flight at once (not a
    read and a write after another), each restored object gets its Event, one put back by
    someone else meanwhile gets none, a failure asks for a reconcile; the last word on an
    object wins."""
    from types import SimpleNamespace

    from meshfed.controller.drift import Repair
    from meshfed.controller.worker import FederationWorker

    cluster = _Cluster()
    events: list[tuple[str, str, str]] = []
    log: list[str] = []
    reconciler = SimpleNamespace(connector=lambda _c: cluster)
    worker = FederationWorker(
        "t", reconciler, lambda *e: events.append(e), lambda _s: None, log.append
    )  # type: ignore[arg-type]
    worker.last = SimpleNamespace(federation=parse_spec(SPEC, "t"))  # type: ignore[assignment]

    def vs(name: str) -> Obj:
        return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": name, "namespace": "meshfed-system"}}  # fmt: skip

    def restore(name: str, why: str = "deleted by hand") -> tuple[Any, Repair]:
        at = ("networking.istio.io", "VirtualService", "meshfed-system", name)
        return KEY, Repair("restore", at, vs(name), why)

    extra = ("networking.istio.io", "VirtualService", "meshfed-system", "extra")
    worker._repair_all(
        [restore("a", "edited"), restore("a"), restore("b"), restore("kept"),
         (KEY, Repair("prune", extra, vs("extra"), "not rendered")), restore("refused")]
    )  # fmt: skip
    told = sorted((reason, message.split(" on ")[0]) for _, reason, message in events)
    assert told == [
        ("DriftPruned", "VirtualService.networking.istio.io meshfed-system/extra"),
        ("DriftRestored", "VirtualService.networking.istio.io meshfed-system/a"),
        ("DriftRestored", "VirtualService.networking.istio.io meshfed-system/b"),
    ]
    assert not any("edited" in m for _, _, m in events)  # the later word on "a" won
    assert worker.pruned == {extra}
    assert any(
        "repair of VirtualService.networking.istio.io meshfed-system/refused failed" in line
        for line in log
    )
    assert worker.events.get_nowait() == ("resync", "repair failed")
