"""The controller's following of peers' bundles: when to fetch next, what a result changes
(kick, Events, the status condition). The loop itself runs against a real API server and a
real bundle endpoint in test_controller_bundles_integration.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshfed.bundles.errors import BundleError
from meshfed.bundles.follow import Outcome
from meshfed.bundles.state import Change
from meshfed.controller.follow import (
    CONDITION,
    RETRY_FIRST,
    PeerCondition,
    PeerFollowing,
    amend_status,
    next_delay,
    peer_condition,
    same_condition,
    spec_source,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_success_waits_the_refresh_hint() -> None:
    assert next_delay(300.0, True, 0) == 300.0
    assert next_delay(1.0, True, 5) == 1.0


def test_failures_back_off_from_two_seconds_up_to_the_refresh_hint() -> None:
    delays = [next_delay(300.0, False, n) for n in range(1, 10)]
    assert delays[:4] == [RETRY_FIRST, 2 * RETRY_FIRST, 4 * RETRY_FIRST, 8 * RETRY_FIRST]
    assert delays[-1] == 300.0
    assert delays == sorted(delays)


@given(st.floats(1.0, 86400.0), st.booleans(), st.integers(0, 10_000))
def test_never_later_than_the_refresh_hint(refresh: float, ok: bool, failures: int) -> None:
    delay = next_delay(refresh, ok, failures)
    assert 0 < delay <= refresh


def test_condition_names_each_failing_peer_and_the_reason() -> None:
    states = [
        PeerCondition("globex", False, "refused (the last good bundle stays in force): bad", 2),
        PeerCondition("initech", True, "ok", 7),
    ]
    cond = peer_condition(states, 3)
    assert cond is not None
    assert cond["status"] == "False" and cond["reason"] == "BundleRefused"
    assert "peer globex" in cond["message"] and "initech" not in cond["message"]
    assert cond["observedGeneration"] == 3
    ok = peer_condition([PeerCondition("initech", True, "ok", 7)], 3)
    assert ok is not None and ok["status"] == "True" and "initech (sequence 7)" in ok["message"]
    assert peer_condition([], 3) is None


def test_amended_status_keeps_the_workers_conditions_and_transition_time() -> None:
    status = {
        "observedGeneration": 4,
        "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": CONDITION, "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
        ],
    }
    out = amend_status(status, [PeerCondition("globex", True, "ok", 2)], NOW)
    types = [c["type"] for c in out["conditions"]]
    assert types == ["Ready", CONDITION]
    assert out["conditions"][1]["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert out["peerBundles"] == [{"peer": "globex", "ok": True, "sequence": 2, "message": "ok"}]
    failed = amend_status(status, [PeerCondition("globex", False, "down", 2)], NOW)
    assert failed["conditions"][1]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert status["conditions"][1]["status"] == "True"  # the input is not changed


def test_same_condition_ignores_only_the_time() -> None:
    a = json.dumps({"ok": True, "message": "bundle unchanged", "at": "1", "sequence": 2}).encode()
    b = json.dumps({"ok": True, "message": "bundle unchanged", "at": "2", "sequence": 2}).encode()
    c = json.dumps({"ok": True, "message": "bundle unchanged", "at": "2", "sequence": 3}).encode()
    assert same_condition(a, b)
    assert not same_condition(a, c)
    assert not same_condition(None, b)
    assert not same_condition(b"garbage", b"garbage")


class Recorder:
    def __init__(self) -> None:
        self.kicks: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.patches: list[dict[str, Any]] = []


def following(tmp_path: Path, rec: Recorder) -> PeerFollowing:
    f = PeerFollowing(
        "fed",
        management=None,  # type: ignore[arg-type]  # _account never reaches the API server
        namespace="meshfed-system",
        work_dir=tmp_path,
        spec=lambda: None,
        kick=rec.kicks.append,
        emit=lambda *e: rec.events.append(e),
    )
    worker_patch = f.patcher(rec.patches.append)
    worker_patch({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]})
    return f


def test_an_accepted_change_kicks_once_and_an_unchanged_bundle_does_nothing(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    f = following(tmp_path, rec)
    f._account([Outcome("globex", change=Change("globex", True, ("ab",), (), 2, 1), refresh=5)])
    assert len(rec.kicks) == 1 and "globex" in rec.kicks[0]
    assert [e[1] for e in rec.events] == ["BundleAccepted"]
    assert rec.patches[-1]["peerBundles"][0]["sequence"] == 2
    patches = len(rec.patches)
    f._account([Outcome("globex", change=Change("globex", False, sequence=2), refresh=5)])
    assert len(rec.kicks) == 1 and len(rec.events) == 1 and len(rec.patches) == patches


def test_a_refusal_warns_once_keeps_the_sequence_and_kicks_nothing(tmp_path: Path) -> None:
    rec = Recorder()
    f = following(tmp_path, rec)
    f._account([Outcome("globex", change=Change("globex", True, ("ab",), (), 2, 1), refresh=60)])
    error = BundleError("globex", "not a JSON document", "ask the peer")
    for _ in range(3):  # the same failure again and again: one Event
        f._account([Outcome("globex", error=error, refresh=60)])
    refused = [e for e in rec.events if e[1] == "BundleRefused"]
    assert len(refused) == 1 and refused[0][0] == "Warning" and "peer globex" in refused[0][2]
    assert len(rec.kicks) == 1
    status = rec.patches[-1]
    cond = next(c for c in status["conditions"] if c["type"] == CONDITION)
    assert cond["status"] == "False" and "not a JSON document" in cond["message"]
    assert status["peerBundles"][0]["sequence"] == 2  # the last good bundle stays in force
    assert f.failures["globex"] == 3


def test_spec_source_shares_the_reconcilers_parsed_spec() -> None:
    """With the reconciler's memo, following reads the spec its reconciles parsed (one copy of
    a large spec, not two); a new version is parsed again, a broken one is None."""
    import copy

    from meshfed.controller.reconcile import parse_federation, spec_document
    from meshfed.controller.specmemo import SpecMemo
    from meshfed.spec.load import load_spec

    bank = load_spec(Path(__file__).resolve().parents[1] / "src/meshfed/examples/bank.yaml")
    body: dict[str, Any] = bank.model_dump(mode="json", by_alias=True, exclude_none=True)
    memo = SpecMemo()
    reconciled = memo.parse("bank", spec_document(body), lambda: parse_federation(body))
    spec = spec_source(lambda: copy.deepcopy(body), memo)
    assert spec() is reconciled
    body["spec"]["meshes"][0]["ingress"]["port"] = 15499
    changed = spec()
    assert changed is not None and changed is not reconciled
    assert changed.spec.meshes[0].ingress.port == 15499
    assert spec() is changed
    body["spec"]["exports"][0]["mesh"] = "nope"
    assert spec() is None


def test_spec_source_asks_again_only_when_the_generation_changes() -> None:
    """The follower asks for the spec every second: an unchanged ``metadata.generation`` is
    answered without the memo (whose digest of a thousand exports' JSON cost 2.5 % of a core
    while idle); a new generation is parsed, and an invalid one is None."""
    import copy

    from meshfed.controller.reconcile import parse_federation, spec_document
    from meshfed.controller.specmemo import SpecMemo
    from meshfed.spec.load import load_spec

    bank = load_spec(Path(__file__).resolve().parents[1] / "src/meshfed/examples/bank.yaml")
    body: dict[str, Any] = bank.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"]["generation"] = 1
    asked: list[str] = []

    class Counting(SpecMemo):
        def parse(self, name: str, document: Any, parse: Any) -> Any:
            asked.append(name)
            return super().parse(name, document, parse)

    memo = Counting()
    reconciled = memo.parse("bank", spec_document(body), lambda: parse_federation(body))
    spec = spec_source(lambda: copy.deepcopy(body), memo)
    assert spec() is reconciled and spec() is reconciled and spec() is reconciled
    assert len(asked) == 2  # the reconciler's, then the follower's first
    body["spec"]["meshes"][0]["ingress"]["port"] = 15499
    body["metadata"]["generation"] = 2
    changed = spec()
    assert changed is not None and changed.spec.meshes[0].ingress.port == 15499
    assert spec() is changed and len(asked) == 3
    body["spec"]["exports"][0]["mesh"] = "nope"
    body["metadata"]["generation"] = 3
    assert spec() is None and spec() is None and len(asked) == 4


def test_two_threads_asking_at_once_share_one_parse() -> None:
    # The worker's first reconcile and the peer follower start together; each parsed the
    # spec, and the follower (which asks again only on a new generation) kept its own copy.
    import threading

    from meshfed.controller.specmemo import SpecMemo
    from meshfed.spec.load import load_spec

    bank = load_spec(Path(__file__).resolve().parents[1] / "src/meshfed/examples/bank.yaml")
    document = bank.model_dump(mode="json", by_alias=True, exclude_none=True)["spec"]
    memo = SpecMemo()
    inside, release, second = threading.Event(), threading.Event(), threading.Event()
    got: dict[str, Any] = {}

    def slow() -> Any:
        inside.set()
        release.wait(10)
        return bank

    def other() -> Any:
        second.set()
        return bank.model_copy()

    first = threading.Thread(target=lambda: got.update(a=memo.parse("bank", document, slow)))
    first.start()
    assert inside.wait(10)
    then = threading.Thread(target=lambda: got.update(b=memo.parse("bank", document, other)))
    then.start()
    parsed_again = second.wait(0.5)  # given the chance, would it parse a second copy?
    release.set()
    first.join(10)
    then.join(10)
    assert not parsed_again and not second.is_set()
    assert got["a"] is got["b"] is bank
