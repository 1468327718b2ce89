"""The dashboard without Envoy: log lines -> counters (meshfed's own apart, across restarts),
the boundary log tail, the JSON state, and the HTTP server."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from local_helpers import TEST_ADMIN
from meshfed.dashboard.collect import Collector, load_model
from meshfed.dashboard.counts import IngressCounts, Tally, arrow_counters
from meshfed.dashboard.logtail import BoundaryTail, outcome, row, tls_reason
from meshfed.dashboard.server import DashboardServer, Handler
from meshfed.local import dashboard as launch
from meshfed.local.files import write_json
from meshfed.local.health import SourceStatus
from meshfed.local.layout import allocate_layout
from meshfed.local.logs import LogEntry, boundary_view, decision, marked, read_entries
from meshfed.local.paths import RuntimePaths
from meshfed.local.ports import LOOPBACK, PortAllocator
from meshfed.local.prober import FALSE_CLAIM, ProbeLedger, load_marks
from meshfed.local.procs import start_time
from meshfed.local.state import ProcessRecord, load_processes, save_processes
from meshfed.local.summary import ImportInfo, RuntimeSummary, save_summary, summarize
from meshfed.render.envoy import render_local
from meshfed.render.envoy.files import log_path
from meshfed.workspace import open_workspace

from conftest import EXAMPLES

TOKENIZER = "tokenizer.payments.global"
LEDGER = "ledger.payments.bank.global"
TWO_SANS = (
    "spiffe://web.bank.example/ns/shop/sa/checkout,spiffe://web.bank.example/ns/shop/sa/catalog"
)
SEVERAL = "rbac_access_denied_matched_policy[several-uri-sans]"
EXPORTS = {LEDGER: "TCP", TOKENIZER: "HTTP"}
CHECKOUT = "spiffe://web.bank.example/ns/shop/sa/checkout"
CATALOG = "spiffe://web.bank.example/ns/shop/sa/catalog"
PROBER = "spiffe://web.bank.example/ns/meshfed-system/sa/meshfed-prober"
NO_CERT = (
    "TLS_error:|268435648:SSL_routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE:"
    "peer_did_not_provide_required_client_certificate:TLS_error_end"
)
SAN = (
    "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
    "verify_cert_failed:_SAN_match:TLS_error_end"
)


def _at(n: int) -> str:
    return f"2026-01-01T00:00:{n:02d}.000Z"


def _conn(n: int, sni: str | None, caller: str | None, **fields: Any) -> dict[str, Any]:
    """A connection line of the ingress (the fields Envoy writes, ``render/envoy``)."""
    return {
        "kind": "connection", "gateway": "ingress", "mesh": "payments", "time": _at(n),
        "sni": sni, "caller": caller, "tls_failure": None, "flags": "-", "details": None,
        "bytes_received": 90, "bytes_sent": 150, "upstream": None, "peer_cert": None,
        **fields,
    }  # fmt: skip


def _traffic(root: Path, ledger: ProbeLedger) -> tuple[Path, Path]:
    """Ingress logs of payments as Envoy writes them: callers' traffic (4 allowed, 1 denied
    tokenizer calls; a caller of payments-dr's domain refused at the tokenizer handshake; on the
    ledger one allowed connection, catalog refused (SAN) and a caller without a certificate;
    one unknown SNI) and meshfed's own (a rotation check denied by the policy and one refused
    at the handshake, both in the ledger), a request with a probe header meshfed never sent,
    and the egress's health checks."""
    access, conn = root / "access.log", root / "conn.log"
    token = ledger.token("rotation check", "payments/ingress")
    checks = {"cert": "ab" * 32, "refused": "cd" * 32}
    for what, fp in checks.items():
        with open(ledger.path, "a") as f:  # as ProbeLedger.certificate records it
            f.write(json.dumps({"what": "rotation check", "target": what, "cert": fp,
                                "time": datetime.now(UTC).isoformat()}) + "\n")  # fmt: skip
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    requests = [_request(_at(i), CHECKOUT, 200) for i in range(1, 5)]
    requests.append(_request(_at(5), CATALOG, 403))
    requests.append({**_request(now, PROBER, 403), "probe": token, "peer_cert": checks["cert"]})
    requests.append({**_request(_at(6), CATALOG, 403), "probe": "f" * 32})  # a false claim
    # The ledger's sessions as its tunnel logs them: checkout's, and a leaf with two URI SANs
    # its tunnel refused before the workload was connected.
    requests += [
        _conn(12, LEDGER, CHECKOUT, details="via_upstream", decision="allowed"),
        _conn(16, LEDGER, TWO_SANS, details=SEVERAL, decision="denied", bytes_received=0),
    ]
    _append(access, requests)
    lines = [_health_check(_at(i)) for i in range(10)]
    lines += [_conn(i, TOKENIZER, CHECKOUT) for i in range(1, 5)]  # the handshakes of the calls
    lines += [
        _conn(11, TOKENIZER, "spiffe://payments-dr.bank.example/ns/cards/sa/x",
              tls_failure="TLS_error:|268435581:CERTIFICATE_VERIFY_FAILED:_no_trust_bundle",
              bytes_received=0),
        _conn(12, LEDGER, CHECKOUT, upstream="envoy://tunnel|ledger/"),
        _conn(16, LEDGER, TWO_SANS, upstream_failure="tunnel_response:403", flags="UF,URX"),
        _conn(13, LEDGER, CATALOG, tls_failure=SAN, bytes_received=0),
        _conn(14, LEDGER, None, tls_failure=NO_CERT, bytes_received=0),
        _conn(15, "nothing.global", None, flags="NR", bytes_received=0),
        {**_conn(0, TOKENIZER, PROBER, tls_failure=SAN, peer_cert=checks["refused"]),
         "time": now},
    ]  # fmt: skip
    _append(conn, lines)
    return access, conn


def _counted(root: Path, summary: RuntimeSummary, ledger: ProbeLedger) -> IngressCounts:
    counts = IngressCounts()
    tail = BoundaryTail(keep=50, ledger=ledger.path)
    files: list[tuple[str, Any, Path]] = [
        ("payments/ingress", "access", root / "access.log"),
        ("payments/ingress", "conn", root / "conn.log"),
    ]
    tail.update(files, summary, lambda e: counts.count(e, EXPORTS))
    return counts


# --- logs -> counters ----------------------------------------------------------------------------


def test_counts_from_the_logs_map_to_the_calls_that_were_made(tmp_path: Path) -> None:
    ledger = ProbeLedger(RuntimePaths(tmp_path))
    _traffic(tmp_path, ledger)
    counts = _counted(tmp_path, _summary(tmp_path), ledger)
    tok, led = counts.chains[TOKENIZER], counts.chains[LEDGER]
    # The false claim is a caller's denial like any other.
    assert (tok.allowed, tok.denied, tok.rejected, tok.tls_failures) == (4, 2, 0, 1)
    # One count per TCP session (the tunnel's line), the two-SAN leaf's denial included.
    assert (led.allowed, led.denied, led.tls_failures) == (1, 1, 2)
    assert (counts.tls_failures, counts.handshakes, counts.unknown_sni) == (3, 6, 1)
    # meshfed's own: the rotation check's request and its refused handshake, apart.
    own = counts.probes[TOKENIZER]
    assert (own.denied, own.tls_failures) == (1, 1) and counts.probe_tls_failures == 1
    assert counts.since == _at(1)


def test_stalled_handshakes_count_as_failed_ones_and_reach_the_tail(tmp_path: Path) -> None:
    # Before: a client that stalled its handshake until the ingress closed it was skipped as an
    # egress's health check (no SNI, or the probes' SNI) or as the connection of a request.
    timeout = "transport socket timeout was reached"
    held = {"bytes_received": 0, "bytes_sent": 0, "duration_ms": 4999}
    lines = [
        _conn(1, None, None, **held),
        _conn(2, "probe.meshfed.invalid", None, details=timeout, **held),
        _conn(3, TOKENIZER, None, details=timeout, **held),
        _health_check(_at(4)),
        {**_health_check(_at(5)), "bytes_received": 0, "details": None, "duration_ms": 2},
    ]
    _append(tmp_path / "conn.log", lines)
    (tmp_path / "access.log").write_text("")
    counts = _counted(tmp_path, _summary(tmp_path), ProbeLedger(RuntimePaths(tmp_path)))
    assert counts.tls_failures == 3 and counts.chains[TOKENIZER].tls_failures == 1
    tail = BoundaryTail(keep=10)
    tail.update([("payments/ingress", "conn", tmp_path / "conn.log")], _summary(tmp_path))
    assert [e.time for e in tail.latest()] == [_at(3), _at(2), _at(1)]
    shown = row(tail.latest()[0], _summary(tmp_path))
    assert shown["outcome"] == "tls"
    assert shown["decision"] == f"TLS handshake not completed: {timeout} after 5.0 s"


def test_a_probe_mark_counts_once_and_only_from_the_ledger(tmp_path: Path) -> None:
    ledger = ProbeLedger(RuntimePaths(tmp_path))
    token = ledger.token("import probe", "web tokenizer")
    marks = load_marks(RuntimePaths(tmp_path))
    now = datetime.now(UTC).isoformat()
    assert marks.mark({"time": now, "probe": token}) == "import probe"
    assert marks.mark({"time": now, "probe": token}) == FALSE_CLAIM  # replayed
    assert marks.mark({"time": now, "probe": "0" * 32}) == FALSE_CLAIM  # never sent
    late = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    other = ledger.token("import probe", "web tokenizer")
    marks.read(ledger.path)  # the records written since
    assert marks.mark({"time": late, "probe": other}) == FALSE_CLAIM  # not when it was sent
    assert marks.mark({"time": now, "caller": CHECKOUT}) is None
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600


def test_counts_do_not_reset_when_a_gateway_or_the_dashboard_restarts(tmp_path: Path) -> None:
    """Envoy appends to its log after a restart (its stats start at zero); a new dashboard
    process reads the logs from their start: the totals are the same either way."""
    ledger = ProbeLedger(RuntimePaths(tmp_path))
    access, _ = _traffic(tmp_path, ledger)
    summary = _summary(tmp_path)
    counts = IngressCounts()
    tail = BoundaryTail(keep=50, ledger=ledger.path)
    files: list[tuple[str, Any, Path]] = [("payments/ingress", "access", access)]
    tail.update(files, summary, lambda e: counts.count(e, EXPORTS))
    _append(access, [_request(_at(30), CATALOG, 403), _request(_at(31), CATALOG, 403)])
    tail.update(files, summary, lambda e: counts.count(e, EXPORTS))
    assert counts.chains[TOKENIZER].denied == 4
    fresh = _counted(tmp_path, summary, ledger)
    assert fresh.chains[TOKENIZER].denied == 4
    # The same number as meshfed logs --boundary shows (meshfed's own apart).
    entries = marked(read_entries(files, True), load_marks(RuntimePaths(tmp_path)))
    shown = [e for e in boundary_view(entries, summary) if decision(e.doc) == "denied 403"]
    assert len([e for e in shown if e.probe in (None, FALSE_CLAIM)]) == 4


def test_an_arrow_sums_its_chains_once() -> None:
    counts = IngressCounts()
    counts.chains["wire.global"] = Tally(allowed=3)
    counts.chains["own.global"] = Tally(allowed=2, denied=1)
    counts.probes["own.global"] = Tally(denied=2, tls_failures=1)
    served = {"wire.global": "HTTP", "own.global": "HTTP"}
    arrow = arrow_counters(
        counts, ["wire.global", "own.global", "wire.global", "gone.global"], served
    )
    assert (arrow.allowed, arrow.denied, arrow.probes) == (5, 1, 3)
    assert arrow.snis == ("wire.global", "own.global")


# --- boundary log tail ---------------------------------------------------------------------------


def _health_check(t: str) -> dict[str, Any]:
    return {"kind": "connection", "gateway": "ingress", "mesh": "payments", "time": t, "sni": None}


def _request(t: str, caller: str, code: int) -> dict[str, Any]:
    return {
        "kind": "request",
        "gateway": "ingress",
        "mesh": "payments",
        "time": t,
        "sni": TOKENIZER,
        "authority": TOKENIZER,
        "method": "POST",
        "path": "/v1/tokenize",
        "caller": caller,
        "code": code,
        "decision": "allowed" if code == 200 else "denied",
        "policy": "web-0" if code == 200 else None,
    }


def _tls_failure(t: str) -> dict[str, Any]:
    return {
        "kind": "connection",
        "gateway": "ingress",
        "mesh": "payments",
        "time": t,
        "sni": TOKENIZER,
        "caller": None,
        "tls_failure": "TLS_error:|268435648:SSL_routines:OPENSSL_internal:"
        "PEER_DID_NOT_RETURN_A_CERTIFICATE:peer_did_not_provide_required_client_certificate:"
        "TLS_error_end",
    }


def _append(path: Path, docs: list[dict[str, Any]], partial: str = "") -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(d) + "\n" for d in docs) + partial)


def _summary(tmp_path: Path) -> RuntimeSummary:
    from meshfed.local.summary import MeshInfo

    mesh = MeshInfo("payments", "payments.bank.example", "127.0.0.1", 1, "x", {TOKENIZER: "HTTP"})
    return RuntimeSummary("bank", str(tmp_path / "bank.yaml"), "SharedRoot", (mesh,), (), (), ())


def test_tail_skips_health_checks_and_reads_only_what_is_new(tmp_path: Path) -> None:
    summary = _summary(tmp_path)
    access, conn = tmp_path / "access.log", tmp_path / "conn.log"
    web = "spiffe://web.bank.example/ns/shop/sa/"
    _append(
        access, [_request(f"2026-01-01T00:00:0{i}.000Z", web + "checkout", 200) for i in (1, 2)]
    )
    _append(conn, [_health_check(f"2026-01-01T00:00:0{i}.500Z") for i in range(8)])
    files: list[tuple[str, Any, Path]] = [
        ("payments/ingress", "access", access),
        ("payments/ingress", "conn", conn),
    ]
    tail = BoundaryTail(keep=50)
    tail.update(files, summary)
    assert [e.time for e in tail.latest()] == [
        "2026-01-01T00:00:02.000Z",
        "2026-01-01T00:00:01.000Z",
    ]
    # A half-written line is read once it is complete.
    _append(conn, [_tls_failure("2026-01-01T00:00:03.000Z")], partial='{"kind": "conn')
    _append(access, [_request("2026-01-01T00:00:04.000Z", web + "catalog", 403)])
    tail.update(files, summary)
    latest = tail.latest()
    assert [e.doc.get("code") for e in latest] == [403, None, 200, 200]
    with open(conn, "a") as f:
        f.write(
            'ection", "gateway": "ingress", "time": "2026-01-01T00:00:05.000Z", "sni": "x",'
            ' "flags": "NR"}\n'
        )
    tail.update(files, summary)
    assert tail.latest()[0].doc.get("flags") == "NR"
    assert len(tail.latest()) == 5
    # A replaced (rotated) file is read afresh.
    access.unlink()
    _append(access, [_request("2026-01-01T00:00:06.000Z", web + "checkout", 200)])
    tail.update(files, summary)
    assert [e.doc.get("code") for e in tail.latest()][:2] == [200, None]
    assert len(tail.latest()) == 3  # the old access lines are gone with their file


def test_tail_finds_old_crossings_behind_many_health_checks(tmp_path: Path) -> None:
    conn = tmp_path / "conn.log"
    _append(conn, [_tls_failure(f"2026-01-01T00:00:00.{i:03d}Z") for i in range(3)])
    _append(conn, [_health_check("2026-01-01T00:01:00.000Z")] * 3000)  # > one 64 KiB window
    tail = BoundaryTail(keep=50)
    tail.update([("payments/ingress", "conn", conn)], _summary(tmp_path))
    assert len(tail.latest()) == 3
    assert tail.latest(2)[0].time == "2026-01-01T00:00:00.002Z"


def test_tail_keeps_the_newest(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    caller = "spiffe://web.bank.example/ns/shop/sa/checkout"
    _append(access, [_request(f"2026-01-01T00:00:{i:02d}.000Z", caller, 200) for i in range(60)])
    tail = BoundaryTail(keep=50)
    tail.update([("payments/ingress", "access", access)], _summary(tmp_path))
    times = [e.time for e in tail.latest()]
    assert len(times) == 50 and times[0] == "2026-01-01T00:00:59.000Z"
    assert times[-1] == "2026-01-01T00:00:10.000Z"


def test_rows_name_caller_sni_decision_and_tls_reason(tmp_path: Path) -> None:
    summary = _summary(tmp_path)
    caller = "spiffe://web.bank.example/ns/shop/sa/checkout"
    r = row(LogEntry("payments/ingress", "access", _request("t", caller, 200)), summary)
    assert (r["caller"], r["caller_verified"], r["sni"]) == (caller, True, TOKENIZER)
    assert (r["decision"], r["outcome"], r["request"]) == (
        "allowed 200",
        "allowed",
        "POST /v1/tokenize",
    )
    denied = row(LogEntry("payments/ingress", "access", _request("t", caller, 403)), summary)
    assert (denied["decision"], denied["outcome"]) == ("denied 403", "denied")
    doc = {**_tls_failure("t"), "caller": "spiffe://payments-dr.bank.example/ns/cards/sa/x"}
    tls = row(LogEntry("payments/ingress", "conn", doc), summary)
    assert tls["outcome"] == "tls" and tls["tls_failure"] == "no client certificate"
    assert not tls["caller_verified"]  # an unverified certificate's identity is only a claim
    egress = {
        "kind": "connection",
        "gateway": "egress",
        "mesh": "web",
        "time": "t",
        "sni": TOKENIZER,
        "upstream": "127.0.0.1:1",
    }
    assert row(LogEntry("web/egress", "access", egress), summary)["to"] == "payments"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
            "verify_cert_failed:_no_trust_bundle_store:TLS_error_end",
            "untrusted: no root for the caller's trust domain",
        ),
        (
            "TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
            "verify_cert_failed:_SAN_match:TLS_error_end",
            "identity not admitted by this export (SAN)",
        ),
        (
            "TLS_error:|268435612:SSL_routines:OPENSSL_internal:NO_SHARED_CIPHER:TLS_error_end",
            "no shared cipher",
        ),
        ("something else", "something else"),
    ],
)
def test_tls_reasons_in_a_few_words(raw: str, reason: str) -> None:
    assert tls_reason(raw) == reason


# --- the JSON state ------------------------------------------------------------------------------


class FakeGateways:
    """Egress health as the admin interfaces would answer."""

    def __init__(self, summary: RuntimeSummary) -> None:
        self.current: str | None = "payments"

    def read_health(
        self, imp: ImportInfo, sock: str | None
    ) -> tuple[str | None, tuple[SourceStatus, ...]]:
        sources = tuple(
            SourceStatus(
                s.mesh,
                s.export,
                f"{s.address}:{s.port}",
                s.priority,
                None if sock is None else s.mesh == self.current or s.priority > 0,
            )
            for s in sorted(imp.sources, key=lambda s: s.priority)
        )
        return next((s.mesh for s in sources if s.healthy), None), sources


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RuntimePaths, Any]]:
    """A runtime directory as ``up`` leaves it (no Envoy): runtime.json, processes.json."""
    base = tmp_path_factory.mktemp("dash")
    spec = base / "bank.yaml"
    spec.write_text((EXAMPLES / "bank.yaml").read_text())
    ws = open_workspace(spec, base / "state")
    paths = RuntimePaths((base / "state").resolve())
    paths.ensure()
    layout, _ = allocate_layout(ws.plan, None, set(), TEST_ADMIN)
    summary = summarize(ws.plan, spec.resolve(), render_local(ws.plan, layout, paths.root))
    save_summary(paths, summary)
    me = os.getpid()
    started = start_time(me)
    assert started is not None
    # Every gateway "runs" as this test process (alive by pid and start time).
    save_processes(
        paths,
        {p.name: ProcessRecord(p.name, "envoy", me, started, 0.0) for p in summary.processes},
    )
    yield paths, summary


def test_state_has_the_graph_counters_health_and_log(runtime_dir: tuple[RuntimePaths, Any]) -> None:
    paths, summary = runtime_dir
    fake = FakeGateways(summary)
    access, conn = _traffic(paths.root, ProbeLedger(paths))
    os.replace(access, log_path(paths.root, "payments/ingress", "access"))
    os.replace(conn, log_path(paths.root, "payments/ingress", "conn"))
    caller = CHECKOUT
    collector = Collector(paths, fake.read_health)
    state = collector.state()
    json.dumps(state)  # all of it is JSON
    assert state["federation"] == "bank" and state["error"] is None

    model = collector.model
    assert model is not None
    by_id = {a["id"]: a for a in state["arrows"]}
    # Every arrow is drawn, under the id the state uses, with room for the live lines.
    for arrow_id in by_id:
        assert f'id="{arrow_id}"' in model.svg
        assert f'data-edge="{arrow_id}"' in model.svg
    assert model.svg.count('class="live" data-line="0"') == len(by_id)

    def arrow(caller: str, export: str) -> dict[str, Any]:
        return next(a for a in state["arrows"] if a["caller"] == caller and a["export"] == export)

    tok = arrow("web", "payments/tokenizer")
    assert (tok["allowed"], tok["denied"], tok["tls_failures"], tok["probes"]) == (4, 2, 1, 2)
    assert (
        tok["state"] == "serving"
        and tok["order"] == 1
        and tok["principals"] == ["ns/shop/sa/checkout"]
    )
    led = arrow("web", "payments/ledger")
    assert (led["allowed"], led["denied"], led["tls_failures"]) == (1, 1, 2)
    dr = arrow("web", "payments-dr/tokenizer")
    assert dr["state"] == "standby" and dr["allowed"] == 0 and dr["order"] == 2
    # payments-dr answers the wire host too (the failover alias): both chains count.
    assert dr["snis"] == [TOKENIZER, "tokenizer.payments-dr.global"]
    assert state["totals"] == {
        "allowed": 5, "denied": 3, "rejected": 0, "tls_failures": 3, "unknown_sni": 1,
        "probes": 2,
    }  # fmt: skip
    assert state["since"] == _at(1)
    payments = next(m for m in state["meshes"] if m["name"] == "payments")
    assert payments["ingress_up"] and payments["handshakes"] == 6
    imp = next(i for i in state["imports"] if i["local"].startswith("tokenizer."))
    assert imp["current"] == "payments"
    assert [s["mesh"] for s in imp["sources"]] == ["payments", "payments-dr"]
    # Newest first: meshfed's own check (marked), then the false claim (flagged).
    newest = state["log"][0]
    assert newest["caller"] == PROBER and newest["probe"] == "rotation check"
    claim = next(r for r in state["log"] if r["false_probe_mark"])
    assert claim["caller"] == CATALOG and claim["probe"] is None
    assert any(r["caller"] == caller and r["decision"] == "allowed 200" for r in state["log"])


def test_state_follows_a_stopped_gateway_and_failover(
    runtime_dir: tuple[RuntimePaths, Any],
) -> None:
    paths, summary = runtime_dir
    records = load_processes(paths)
    try:
        fake = FakeGateways(summary)
        fake.current = "payments-dr"
        stopped = dict(records)
        stopped["payments/ingress"] = ProcessRecord("payments/ingress", "envoy", 1, -5, 0.0)
        save_processes(paths, stopped)
        state = Collector(paths, fake.read_health).state()
        tok = next(a for a in state["arrows"] if a["export"] == "payments/tokenizer")
        assert not tok["ingress_up"] and tok["allowed"] == 4  # counted while it is down
        assert tok["state"] == "down"
        dr = next(a for a in state["arrows"] if a["export"] == "payments-dr/tokenizer")
        assert dr["state"] == "serving"
        payments = next(m for m in state["meshes"] if m["name"] == "payments")
        assert not payments["ingress_up"] and payments["error"] == "ingress gateway not running"
    finally:
        save_processes(paths, records)


def test_a_new_up_with_a_changed_spec_redraws(
    runtime_dir: tuple[RuntimePaths, Any], tmp_path: Path
) -> None:
    paths, summary = runtime_dir
    collector = Collector(paths, FakeGateways(summary).read_health)
    before = collector.state()
    spec = tmp_path / "bank.yaml"
    text = (EXAMPLES / "bank.yaml").read_text()
    grant = (
        "    - name: vault\n      mesh: payments\n      workload: cards/vault\n"
        "      consumers:\n        - mesh: web\n          principals: [ns/shop/sa/checkout]\n"
    )
    spec.write_text(text.replace("  imports:\n", grant + "  imports:\n"))
    from dataclasses import replace

    try:
        save_summary(paths, replace(summary, spec=str(spec)))
        after = collector.state()
        assert after["graph_version"] != before["graph_version"]
        grants = [a for a in after["arrows"] if a["kind"] == "grant"]
        assert [(a["caller"], a["export"], a["state"]) for a in grants] == [
            ("web", "payments/vault", "not imported")
        ]
    finally:
        save_summary(paths, summary)


def test_no_federation_yet(tmp_path: Path) -> None:
    paths = RuntimePaths(tmp_path)
    assert load_model(paths) is None
    state = Collector(paths).state()
    assert state["federation"] is None and "meshfed up" in state["error"]


# --- the server ----------------------------------------------------------------------------------


@pytest.fixture
def served(runtime_dir: tuple[RuntimePaths, Any]) -> Iterator[int]:
    paths, summary = runtime_dir
    server = DashboardServer((LOOPBACK, 0), Handler)
    fake = FakeGateways(summary)
    server.collector = Collector(paths, fake.read_health)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _get(port: int, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_server_answers_state_page_and_picture(served: int) -> None:
    status, headers, body = _get(served, "/api/state")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    doc = json.loads(body)
    assert doc["federation"] == "bank" and len(doc["arrows"]) == 3

    status, headers, body = _get(served, "/", host=f"localhost:{served}")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    assert f'data-version="{doc["graph_version"]}"' in page
    assert "/api/state" in page and "<svg" in page
    # Nothing from elsewhere: no external scripts, styles, fonts or images.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert not re.search(r"""url\(\s*["']?(https?:)?//""", page)
    assert "<script src" not in page and '<link rel="stylesheet"' not in page

    status, headers, body = _get(served, "/graph.svg")
    assert (
        status == 200
        and body.startswith(b"<svg")
        and headers["content-type"].startswith("image/svg+xml")
    )
    assert _get(served, "/nothing")[0] == 404
    assert _get(served, "/healthz")[2] == b"ok\n"


def test_server_survives_a_failed_reading(served: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Collector) -> dict[str, Any]:
        raise ValueError("bad reading")

    monkeypatch.setattr(Collector, "state", broken)
    status, _, body = _get(served, "/api/state")
    assert status == 500 and json.loads(body) == {
        "error": "ValueError: bad reading",
        "federation": None,
    }
    monkeypatch.undo()
    assert _get(served, "/api/state")[0] == 200


def test_server_refuses_other_hosts(served: int) -> None:
    """DNS rebinding: a page of another site must not read the state through its own name."""
    assert _get(served, "/api/state", host="attacker.example")[0] == 403
    assert _get(served, "/api/state", host=f"attacker.example:{served}")[0] == 403


# --- launch --------------------------------------------------------------------------------------


def test_launch_keeps_a_free_port_and_moves_off_a_reserved_one(tmp_path: Path) -> None:
    paths = RuntimePaths(tmp_path)
    paths.ensure()
    alloc = PortAllocator()
    first = launch.read_config(launch.prepare(paths, [], alloc))
    assert first is not None and first["address"] == LOOPBACK
    assert launch.url(paths) == f"http://127.0.0.1:{first['port']}/"
    again = launch.read_config(launch.prepare(paths, [1]))
    assert again is not None and again["port"] == first["port"]
    moved = launch.read_config(launch.prepare(paths, [first["port"]]))
    assert moved is not None and moved["port"] != first["port"]
    write_json(launch.config_path(paths), {"version": 1, "address": "0.0.0.0", "port": 1})
    assert launch.read_config(launch.config_path(paths)) is None  # never anything but loopback
    argv = launch.argv(launch.config_path(paths))
    assert launch.is_dashboard(argv) and argv[-1].startswith(str(paths.root) + os.sep)


def test_launch_reports_a_dashboard_that_exits(tmp_path: Path) -> None:
    from meshfed.local.errors import LocalError

    paths = RuntimePaths(tmp_path)
    paths.ensure()
    launch.prepare(paths, [])
    launch.log_path(paths).write_text("cannot listen on 127.0.0.1:1: in use\n")
    with pytest.raises(LocalError, match="exited"):
        launch.wait_listening(paths, lambda: False, timeout=0.1)


# Request lines an ingress wrote for requests its codec refused (Envoy 1.40, bank example).
CODEC_LINES = [
    ('{"code":400,"decision":null,"details":"http1.codec_error","flags":"DPE","kind":"request"}',
     "rejected 400: malformed HTTP (http1.codec_error)"),
    ('{"code":431,"decision":null,"details":"http1.headers_too_large","flags":"DPE",'
     '"kind":"request"}', "rejected 431: headers too large (http1.headers_too_large)"),
    ('{"code":426,"decision":null,"details":"low_version","flags":"DPE","kind":"request"}',
     "rejected 426: HTTP/1.0 not accepted (low_version)"),
    ('{"code":501,"decision":null,"details":"http1.invalid_transfer_encoding","flags":"DPE",'
     '"kind":"request"}', "rejected 501: unsupported transfer encoding "
     "(http1.invalid_transfer_encoding)"),
    ('{"code":404,"decision":null,"details":"route_not_found","flags":"NR","kind":"request"}',
     "refused 404: no route"),
    ('{"code":403,"decision":"denied","details":"rbac_access_denied_matched_policy[default-deny]",'
     '"flags":"-","kind":"request"}', "denied 403"),
    ('{"code":503,"decision":"allowed","details":"upstream_reset_before_response_started",'
     '"flags":"UF","kind":"request"}', "allowed 503"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "said"), CODEC_LINES)
def test_requests_refused_before_the_policy_are_not_called_allowed(line: str, said: str) -> None:
    doc = json.loads(line)
    assert decision(doc) == said
    assert outcome(doc) == said.split()[0]


def test_no_client_can_hold_the_dashboard(
    runtime_dir: tuple[RuntimePaths, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: no timeout at all, a thread per connection: a client that connects and sends
    # nothing (or a byte now and then) held a thread for ever, and hundreds of them piled up.
    monkeypatch.setattr(DashboardServer, "connection_deadline", 1.0)
    monkeypatch.setattr(DashboardServer, "max_connections", 3)
    paths, summary = runtime_dir
    server = DashboardServer((LOOPBACK, 0), Handler)
    server.collector = Collector(paths, FakeGateways(summary).read_health)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    # The four reach the listen queue in this order and are accepted in it: the fourth finds
    # three held (waiting for three to be accepted first could let a deadline pass under load).
    held = [socket.create_connection((LOOPBACK, server.port)) for _ in range(3)]
    over = socket.create_connection((LOOPBACK, server.port))
    try:
        for s in held:
            s.sendall(b"GET /api/state HTTP/1.1\r\n")  # and never the rest
        over.settimeout(30)  # timeouts here only keep a broken server from hanging the test
        assert over.recv(1) == b""
        assert server.refused == 1  # closed at accept: three are held
        for s in held:
            s.settimeout(30)
            assert s.recv(1) == b""
        assert (server.refused, server.cut) == (1, 3)  # cut at the deadline
        # A cut connection's slot is free before its client reads EOF, however late its
        # handler thread ends: the next client is served at once.
        assert server.active == 0
        assert _get(server.port, "/healthz")[2] == b"ok\n"
    finally:
        over.close()
        for s in held:
            s.close()
        server.shutdown()
        server.server_close()
        thread.join()
