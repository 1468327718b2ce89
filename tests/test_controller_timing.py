"""Where a reconcile's time goes (``controller/timing.py``): pure, a fake clock."""

from __future__ import annotations

from meshfed.controller.timing import Phases


def test_each_mark_books_the_time_since_the_previous_one() -> None:
    now = [10.0]
    phases = Phases(clock=lambda: now[0])
    now[0] = 10.25
    phases.mark("debounce")
    now[0] = 10.5
    phases.mark("dry-run")
    now[0] = 11.0
    phases.mark("debounce")  # the same phase again: added up, in its first place
    assert phases.spent == {"debounce": 0.75, "dry-run": 0.25}
    assert phases.total == 1.0
    assert phases.summary() == "debounce 750 ms, dry-run 250 ms"


def test_the_summary_leaves_out_what_took_no_time() -> None:
    now = [0.0]
    phases = Phases(clock=lambda: now[0])
    assert phases.summary() == "nothing measurable"
    phases.mark("parse")
    now[0] = 0.002
    phases.mark("plan")
    assert phases.summary() == "plan 2 ms"
