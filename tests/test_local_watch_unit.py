"""The parts of ``up --watch`` and of a fast re-apply that need no Envoy: change detection,
the edit line, probe paths, update stages, the xDS file cache, and the ports of our processes."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from local_helpers import TEST_ADMIN, spec_copy
from meshfed.local.certs import identity_for
from meshfed.local.files import write_json
from meshfed.local.layout import allocate_layout
from meshfed.local.ports import _proc_listening, listening_sockets, ports_held_by
from meshfed.local.probe import (
    Hop,
    Probe,
    ProbeResult,
    plan_probes,
    probe_key,
    probe_path,
)
from meshfed.local.runtime import Runtime, UpReport, _each_done, _stages
from meshfed.local.summary import summarize
from meshfed.local.watch import (
    EMPTY_SETTLE_S,
    IN_CLOSE_WRITE,
    IN_IGNORED,
    IN_MOVED_TO,
    SETTLE_S,
    Event,
    FileWatcher,
    concerns,
    look,
    parse_events,
)
from meshfed.local.watchloop import edit_line
from meshfed.local.xds import EnvoyFiles, secrets_for
from meshfed.local.xds_state import file_state
from meshfed.plan.diff import security_diff
from meshfed.render.envoy import render_local
from meshfed.workspace import Workspace, open_workspace

NO_CHANGE = 0.3
"""How long a watcher is given to (wrongly) report a change that did not happen."""


@pytest.fixture(scope="module")
def bank_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    base = tmp_path_factory.mktemp("watch-unit-bank")
    return open_workspace(spec_copy("bank", base), base / "state")


# --- change detection ----------------------------------------------------------------------------


def _event(mask: int, name: str) -> bytes:
    raw = name.encode() + b"\0" * (16 - len(name) % 16)
    return struct.pack("=iIII", 1, mask, 0, len(raw)) + raw


def test_parse_events_reads_names_and_masks() -> None:
    buffer = _event(IN_CLOSE_WRITE, "spec.yaml") + _event(IN_MOVED_TO, "other.yaml")
    assert parse_events(buffer) == [
        Event(IN_CLOSE_WRITE, "spec.yaml"),
        Event(IN_MOVED_TO, "other.yaml"),
    ]
    assert parse_events(b"") == []


def test_concerns_only_the_file_or_the_directory_going_away() -> None:
    assert concerns([Event(IN_CLOSE_WRITE, "spec.yaml")], "spec.yaml")
    assert not concerns([Event(IN_MOVED_TO, "spec.yaml.swp")], "spec.yaml")
    assert concerns([Event(IN_IGNORED, "")], "spec.yaml")


def _after(delay: float, action: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


@pytest.fixture(params=["inotify", "stat"])
def watcher(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileWatcher]:
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\n")
    w = FileWatcher(spec)
    if request.param == "stat":
        w.close()  # as without inotify
    assert w.how == ("inotify" if request.param == "inotify" else "a re-stat every 50 ms")
    try:
        yield w
    finally:
        w.close()


def test_in_place_write_is_a_change(watcher: FileWatcher) -> None:
    _after(0.05, lambda: watcher.path.write_text("version: 2\n"))
    assert watcher.wait(timeout=10)
    assert not watcher.wait(timeout=NO_CHANGE)  # reported once


def test_a_re_stat_does_not_report_a_save_half_done(tmp_path: Path) -> None:
    """An in-place save truncates first: a re-stat in between must not report the empty file
    (and then the saved one as a second change)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\n")
    w = FileWatcher(spec)
    w.close()  # re-stat only, as without inotify
    with open(spec, "w") as f:  # truncated, not written yet
        assert not w.changed()
        f.write("version: 2\n")
    time.sleep(SETTLE_S * 2)
    assert w.changed()
    assert w.last == look(spec) and not w.changed()


def test_a_re_stat_waits_longer_for_an_empty_file(tmp_path: Path) -> None:
    """The writer of an in-place save may be off the CPU between truncating and writing for
    longer than SETTLE_S (a loaded machine): an empty file is not reported until it has been
    empty for EMPTY_SETTLE_S; a file truly emptied is reported then."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\n")
    w = FileWatcher(spec)
    w.close()  # re-stat only, as without inotify
    with open(spec, "w") as f:  # truncated, not written yet
        past = time.time_ns() - int(SETTLE_S * 4 * 1e9)
        os.utime(spec, ns=(past, past))  # as if the writer had stalled for 4 x SETTLE_S
        assert not w.changed()
        f.write("version: 2\n")
    time.sleep(SETTLE_S * 2)
    assert w.changed() and w.last == look(spec)
    spec.write_text("")
    long_ago = time.time_ns() - int(EMPTY_SETTLE_S * 2 * 1e9)
    os.utime(spec, ns=(long_ago, long_ago))
    assert w.changed() and w.last.digest == look(spec).digest


def test_rename_into_place_is_a_change(watcher: FileWatcher) -> None:
    def save() -> None:
        tmp = watcher.path.with_name(".spec.yaml.tmp")
        tmp.write_text("version: 3\n")
        os.rename(tmp, watcher.path)

    _after(0.05, save)
    assert watcher.wait(timeout=10)


def test_same_content_touch_and_other_files_are_no_change(watcher: FileWatcher) -> None:
    _after(0.02, lambda: watcher.path.write_text("version: 1\n"))
    _after(0.04, lambda: os.utime(watcher.path))
    _after(0.06, lambda: watcher.path.with_name("other.yaml").write_text("x"))
    assert not watcher.wait(timeout=NO_CHANGE)


def test_deleted_then_recreated_is_one_change(watcher: FileWatcher) -> None:
    def recreate() -> None:
        watcher.path.unlink()
        watcher.path.write_text("version: 4\n")

    watcher.path.unlink()
    assert not watcher.wait(timeout=0.1)  # missing: nothing to apply
    watcher.path.write_text("version: 1\n")
    assert not watcher.wait(timeout=0.1)  # back as it was
    _after(0.05, recreate)
    assert watcher.wait(timeout=10)


def test_a_change_before_waiting_is_not_lost(watcher: FileWatcher) -> None:
    watcher.path.write_text("version: 5\n")
    assert watcher.wait(timeout=10)


def test_a_wake_up_descriptor_ends_the_wait(watcher: FileWatcher) -> None:
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
    try:
        _after(0.05, lambda: os.write(write_fd, b"\x02"))
        assert not watcher.wait(timeout=30, wake=read_fd)
        with pytest.raises(BlockingIOError):
            os.read(read_fd, 1)  # woken (and drained), not timed out
    finally:
        os.close(read_fd)
        os.close(write_fd)


# --- the line printed per edit -------------------------------------------------------------------


def _report(ws: Workspace, **fields: object) -> UpReport:
    layout, _ = allocate_layout(ws.plan, None, set(), TEST_ADMIN)
    summary = summarize(ws.plan, ws.spec_path, render_local(ws.plan, layout, Path("/x")))
    report = UpReport(ws.plan.name, ws.state_dir, layout, summary, first_run=False)
    for name, value in fields.items():
        setattr(report, name, value)
    return report


def test_edit_line_names_changes_envoys_and_probes(bank_ws: Workspace) -> None:
    probe = Probe("web", "tokenizer.shop.svc.cluster.local:80", "HTTP", "shop/checkout", 1, "h")
    report = _report(
        bank_ws,
        started=["payments/sidecar/cards/fraud", "dashboard"],
        updated={"payments/ingress": "listeners", "web/egress": "listeners"},
        probes=[ProbeResult(probe, True, "200"), ProbeResult(probe, True, "kept", False)],
    )
    changes = security_diff(None, bank_ws.plan)
    line = edit_line("12:00:00", "bank.yaml", 0.1184, changes, report)
    assert line.startswith("12:00:00 applied bank.yaml in 118 ms: ")
    assert str(changes[0]) in line and f"(+{len(changes) - 3} more)" in line
    assert "| started payments/sidecar/cards/fraud, updated payments/ingress, web/egress |" in line
    assert line.endswith("| 1 import probed: ok")
    assert "dashboard" not in line

    quiet = edit_line("12:00:01", "bank.yaml", 0.02, [], _report(bank_ws))
    assert quiet.endswith(
        "no security-relevant change | no Envoy changed | no import to probe again"
    )
    failed = _report(bank_ws, probes=[ProbeResult(probe, False, "HTTP 503")])
    assert edit_line("t", "s", 0, [], failed).endswith("| 1 import probed: 1 FAILED")


# --- what a re-apply touches ---------------------------------------------------------------------


def test_probe_path_covers_caller_egress_and_every_source(bank_ws: Workspace) -> None:
    layout, _ = allocate_layout(bank_ws.plan, None, set(), TEST_ADMIN)
    probes = {p.key: p for p in plan_probes(bank_ws.plan, layout)}
    tokenizer = probes["tokenizer.shop.svc.cluster.local:80"]
    assert probe_path(bank_ws.plan, tokenizer) == {
        ("web", "sidecar", "shop/checkout"),
        ("web", "egress", None),
        ("payments", "ingress", None),
        ("payments", "sidecar", "cards/tokenizer"),
        ("payments-dr", "ingress", None),
        ("payments-dr", "sidecar", "cards/tokenizer"),
    }
    ledger = probes["ledger.shop.svc.cluster.local:9000"]
    assert ("payments", "sidecar", "cards/ledger") in probe_path(bank_ws.plan, ledger)
    assert ("payments-dr", "ingress", None) not in probe_path(bank_ws.plan, ledger)
    assert probe_key(tokenizer) != probe_key(ledger)


def test_probes_run_again_only_where_the_path_changed(bank_ws: Workspace, tmp_path: Path) -> None:
    layout, _ = allocate_layout(bank_ws.plan, None, set(), TEST_ADMIN)
    probes = plan_probes(bank_ws.plan, layout)
    runtime = Runtime(tmp_path)
    runtime.paths.ensure()

    def chosen(hops: set[Hop] | None) -> list[str]:
        return sorted(
            p.key.partition(".")[0] for p in runtime._probes_to_run(bank_ws.plan, probes, hops)
        )

    assert chosen(set()) == ["ledger", "tokenizer"]  # none passed yet
    write_json(runtime.paths.probes, {"version": 1, "passed": [probe_key(p) for p in probes]})
    assert chosen(None) == ["ledger", "tokenizer"]
    assert chosen(set()) == []
    assert chosen({("payments", "ingress", None)}) == ["ledger", "tokenizer"]
    assert chosen({("payments-dr", "ingress", None)}) == ["tokenizer"]
    assert chosen({("web", "sidecar", "shop/catalog")}) == []  # not the probing workload
    passed = [probe_key(p) for p in probes if p.key.startswith("ledger")]
    write_json(runtime.paths.probes, {"version": 1, "passed": passed})
    assert chosen(set()) == ["tokenizer"]


def test_stages_go_exporter_side_first() -> None:
    roles = {"a/sidecar/x": "sidecar", "b/egress": "egress", "a/ingress": "ingress"}
    names = ["a/sidecar/x", "b/egress", "c/ingress", "a/ingress", "b/sidecar/y"]
    roles |= {"c/ingress": "ingress", "b/sidecar/y": "sidecar"}
    assert _stages(names, roles.__getitem__) == [
        ["a/ingress", "c/ingress"],
        ["b/egress"],
        ["a/sidecar/x", "b/sidecar/y"],
    ]


def test_each_done_runs_all_and_raises_the_failure() -> None:
    done: list[str] = []

    def work(name: str) -> None:
        if name == "bad":
            raise RuntimeError(name)
        done.append(name)

    assert list(_each_done(["a", "b", "c"], work)) == ["a", "b", "c"]
    done.clear()
    with pytest.raises(RuntimeError):
        list(_each_done(["a", "bad", "c"], work))
    assert sorted(done) == ["a", "c"]


# --- xDS files: unchanged ones are neither re-read nor rewritten ----------------------------------


def test_file_cache_sees_changes_made_by_others(bank_ws: Workspace, tmp_path: Path) -> None:
    layout, _ = allocate_layout(bank_ws.plan, None, set(), TEST_ADMIN)
    ingress = next(
        p for p in render_local(bank_ws.plan, layout, tmp_path) if p.name == "payments/ingress"
    )
    assert ingress.spiffe_id is not None
    ca = bank_ws.pki.meshes["payments"]
    ident = identity_for(ca, ingress.spiffe_id, bank_ws.plan.workload_ttl, datetime.now(UTC))
    files = EnvoyFiles(tmp_path, ingress)
    secrets = secrets_for(ingress, (ident.chain_pem, ident.key_pem))
    files.write_cold(files.diff(secrets))
    assert files.diff(secrets).empty
    version = file_state(files.lds_path)
    assert version is not None and version.version == "1"

    # Somebody else rewrites the listeners (same version, other content): seen as a change.
    doc = json.loads(files.lds_path.read_text())
    doc["resources"] = []
    tmp = files.lds_path.with_name("x")
    tmp.write_text(json.dumps(doc))
    os.rename(tmp, files.lds_path)
    pending = files.diff(secrets)
    assert pending.listeners is not None and pending.clusters is None
    files.write_cold(pending)
    after = file_state(files.lds_path)
    assert after is not None and after.version == "2"
    assert files.diff(secrets).empty


# --- ports of our own processes ------------------------------------------------------------------


def test_ports_held_by_reads_only_the_given_processes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port in ports_held_by([os.getpid()])
        assert port not in ports_held_by([os.getppid()])
        assert ports_held_by([]) == set()
        # The kernel's answer (sock_diag) and /proc/net/tcp agree.
        assert listening_sockets() == _proc_listening()
