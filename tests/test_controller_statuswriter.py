"""The Federation's status written from its own thread (``controller/statuswriter.py``): the
latest wins, what says something new goes at once, what only says when the last reconcile ran
waits; a failed write is tried again. No cluster: the writer writes into a list."""

from __future__ import annotations

import copy
from typing import Any

from meshfed.controller.statuswriter import StatusWriter, substance, urgent
from meshfed.kube.errors import KubeError

Obj = dict[str, Any]


def _status(ready: str = "True", message: str = "m00: 8 configured", at: str = "t1") -> Obj:
    return {
        "observedGeneration": 3,
        "conditions": [
            {"type": "Ready", "status": ready, "reason": "Reconciled", "message": "ok"},
        ],
        "meshes": [
            {
                "name": "m00",
                "ingressAddress": "192.0.2.1",
                "clusters": [
                    {
                        "name": "m00",
                        "conditions": [
                            {"type": "Applied", "status": "True", "reason": "Applied",
                             "message": message},
                        ],
                    }
                ],
            }
        ],
        "lastReconcile": at,
    }  # fmt: skip


def test_only_the_time_and_the_messages_of_unchanged_conditions_are_not_news() -> None:
    first = _status()
    assert not urgent(first, _status(message="m00: 1 configured", at="t2"))
    assert urgent(first, _status(ready="False"))
    moved = _status()
    moved["meshes"][0]["ingressAddress"] = "192.0.2.2"
    assert urgent(first, moved)
    newer = _status()
    newer["observedGeneration"] = 4
    assert urgent(first, newer)
    assert urgent(None, first)
    assert "message" not in str(substance(first)) and "lastReconcile" not in substance(first)


def test_news_is_written_at_once_and_the_rest_waits_to_be_replaced() -> None:
    written: list[Obj] = []
    writer = StatusWriter(lambda s: written.append(copy.deepcopy(s)), settle=3600.0)
    try:
        writer.submit(_status())
        assert writer.flush()
        assert [s["lastReconcile"] for s in written] == ["t1"]
        writer.submit(_status(message="m00: 2 configured", at="t2"))  # waits an hour
        writer.submit(_status(message="m00: 3 configured", at="t3"))  # replaces it
        writer.submit(_status(ready="False", at="t4"))  # news: at once, the others never
        assert writer.flush()
        assert [s["lastReconcile"] for s in written] == ["t1", "t4"]
        writer.submit(_status(ready="False", at="t4"))  # what is there: nothing to write
        assert writer.flush()
        assert len(written) == 2
        writer.submit(_status(ready="False", message="later", at="t5"))
    finally:
        writer.close()  # writes what still waits
    assert [s["lastReconcile"] for s in written] == ["t1", "t4", "t5"]


def test_a_failed_write_is_tried_again() -> None:
    attempts: list[str] = []
    lines: list[str] = []

    def write(status: Obj) -> None:
        attempts.append(status["lastReconcile"])
        if len(attempts) == 1:
            raise KubeError("the management cluster did not answer")

    writer = StatusWriter(write, lines.append)
    try:
        writer.submit(_status())
        assert writer.flush()
    finally:
        writer.close()
    assert attempts == ["t1", "t1"]
    assert writer.last == _status()
    assert lines == ["status not written: the management cluster did not answer; trying again"]
