"""The dashboard without Envoy: stats -> counters (from a captured ``/stats``), the boundary log
tail, the JSON state, and the HTTP server."""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshfed.dashboard.collect import Collector, load_model
from meshfed.dashboard.logtail import BoundaryTail, row, tls_reason
from meshfed.dashboard.server import DashboardServer, Handler
from meshfed.dashboard.stats import (
    STATS_FILTER,
    arrow_counters,
    ingress_counters,
    parse_stats,
)
from meshfed.local import dashboard as launch
from meshfed.local.files import write_json
from meshfed.local.health import SourceStatus
from meshfed.local.layout import allocate_layout
from meshfed.local.logs import LogEntry
from meshfed.local.paths import RuntimePaths
from meshfed.local.ports import LOOPBACK, PortAllocator
from meshfed.local.procs import start_time
from meshfed.local.state import ProcessRecord, load_processes, save_processes
from meshfed.local.summary import ImportInfo, RuntimeSummary, save_summary, summarize
from meshfed.render.envoy import render_local
from meshfed.render.envoy.files import log_path
from meshfed.workspace import open_workspace

from conftest import EXAMPLES

# Captured from the payments ingress of a running bank federation (`GET /stats`, trimmed to the
# lines that matter plus look-alikes that must not count): 4 allowed and 1 denied tokenizer
# calls; a caller of payments-dr's trust domain refused at the tokenizer handshake; on the ledger
# (TCP) one allowed connection, then shop/catalog (not admitted: SAN) and a caller without a
# certificate refused at the handshake; one connection with an unknown SNI.
CAPTURED = """\
cluster.inbound|cards/ledger.ssl.connection_error: 0
cluster.inbound|cards/ledger.ssl.handshake: 3
http.admin.downstream_cx_destroy: 2
http.admin.downstream_cx_http1_active: 1
http.admin.downstream_cx_http1_total: 3
http.ingress_tokenizer.payments.global.downstream_cx_active: 0
http.ingress_tokenizer.payments.global.downstream_cx_destroy: 4
http.ingress_tokenizer.payments.global.downstream_cx_destroy_remote: 4
http.ingress_tokenizer.payments.global.downstream_cx_http1_active: 0
http.ingress_tokenizer.payments.global.downstream_cx_http1_total: 0
http.ingress_tokenizer.payments.global.downstream_cx_http2_active: 0
http.ingress_tokenizer.payments.global.downstream_cx_http2_total: 3
http.ingress_tokenizer.payments.global.downstream_cx_http3_active: 0
http.ingress_tokenizer.payments.global.downstream_cx_http3_total: 0
http.ingress_tokenizer.payments.global.downstream_cx_ssl_total: 4
http.ingress_tokenizer.payments.global.downstream_cx_total: 4
http.ingress_tokenizer.payments.global.downstream_rq_4xx: 1
http.ingress_tokenizer.payments.global.rbac.allowed: 4
http.ingress_tokenizer.payments.global.rbac.denied: 1
http.ingress_tokenizer.payments.global.rbac.shadow_allowed: 0
http.ingress_tokenizer.payments.global.rbac.shadow_denied: 0
ingress_ledger.payments.bank.global.rbac.allowed: 1
ingress_ledger.payments.bank.global.rbac.denied: 0
ingress_ledger.payments.bank.global.rbac.shadow_allowed: 0
listener.127.0.0.1_24364.downstream_cx_destroy: 7
listener.127.0.0.1_24364.downstream_cx_total: 7
listener.127.0.0.1_24364.no_filter_chain_match: 1
listener.127.0.0.1_24364.ssl.connection_error: 0
listener.127.0.0.1_24364.ssl.fail_verify_cert_hash: 0
listener.127.0.0.1_24364.ssl.fail_verify_error: 1
listener.127.0.0.1_24364.ssl.fail_verify_no_cert: 1
listener.127.0.0.1_24364.ssl.fail_verify_san: 1
listener.127.0.0.1_24364.ssl.handshake: 4
listener.127.0.0.1_24364.ssl.no_certificate: 0
listener.admin.no_filter_chain_match: 0
sds.default.version_text: "1"
tcp.ingress_ledger.payments.bank.global.downstream_cx_total: 3
tls_inspector.bytes_processed: P0(1450,1425) P25(1450,1425) P50(1450,1450) P100(1450,2750)
tls_inspector.sni_found: 8
"""
LISTENER = "127.0.0.1:24364"
TOKENIZER = "tokenizer.payments.global"
LEDGER = "ledger.payments.bank.global"
EXPORTS = {LEDGER: "TCP", TOKENIZER: "HTTP"}


# --- stats -> counters ---------------------------------------------------------------------------


def test_parse_stats_keeps_counters_and_gauges_only() -> None:
    stats = parse_stats(CAPTURED)
    assert stats["http.ingress_tokenizer.payments.global.rbac.allowed"] == 4
    assert "sds.default.version_text" not in stats  # a text readout
    assert "tls_inspector.bytes_processed" not in stats  # a histogram
    assert parse_stats("a.b: -1\nnot a stat\nc: 2x\n") == {"a.b": -1}


def test_captured_stats_map_to_the_calls_that_were_made() -> None:
    counters = ingress_counters(parse_stats(CAPTURED), LISTENER, EXPORTS)
    tok, led = counters.chains[TOKENIZER], counters.chains[LEDGER]
    assert (tok.allowed, tok.denied, tok.tls_failures) == (4, 1, 1)
    # Both ledger refusals were at the handshake: a TCP export pins identities there.
    assert (led.allowed, led.denied, led.tls_failures, led.tls_exact) == (1, 0, 2, True)
    assert counters.tls_failures == 3  # fail_verify_error + no_cert + san
    assert counters.handshakes == 4  # the listener's, not the upstream cluster's 3
    assert counters.unknown_sni == 1


def test_the_stats_filter_selects_exactly_what_the_mapping_reads() -> None:
    names = [line.partition(": ")[0] for line in CAPTURED.splitlines()]
    chosen = {n for n in names if re.search(STATS_FILTER, n)}
    expected = {
        *(
            f"http.ingress_{TOKENIZER}.{s}"
            for s in (
                "rbac.allowed",
                "rbac.denied",
                "downstream_cx_destroy",
                *(f"downstream_cx_http{v}_{k}" for v in (1, 2, 3) for k in ("total", "active")),
            )
        ),
        f"ingress_{LEDGER}.rbac.allowed",
        f"ingress_{LEDGER}.rbac.denied",
        *(
            f"listener.127.0.0.1_24364.{s}"
            for s in (
                "no_filter_chain_match",
                "ssl.connection_error",
                "ssl.fail_verify_cert_hash",
                "ssl.fail_verify_error",
                "ssl.fail_verify_no_cert",
                "ssl.fail_verify_san",
                "ssl.handshake",
            )
        ),
    }
    assert chosen == expected
    # Reading only the filtered stats gives the same counters.
    filtered = "\n".join(line for line in CAPTURED.splitlines() if line.split(": ")[0] in chosen)
    assert ingress_counters(parse_stats(filtered), LISTENER, EXPORTS) == ingress_counters(
        parse_stats(CAPTURED), LISTENER, EXPORTS
    )


def test_http_tls_failures_leave_out_open_and_served_connections() -> None:
    p = f"http.ingress_{TOKENIZER}."
    stats = {
        p + "downstream_cx_destroy": 10,
        p + "downstream_cx_http1_total": 3,
        p + "downstream_cx_http1_active": 0,
        p + "downstream_cx_http2_total": 8,
        p + "downstream_cx_http2_active": 2,  # still open: not destroyed either
    }
    assert (
        ingress_counters(stats, LISTENER, {TOKENIZER: "HTTP"}).chains[TOKENIZER].tls_failures == 1
    )
    # A reading taken between two counter updates never goes negative.
    stats[p + "downstream_cx_destroy"] = 8
    assert (
        ingress_counters(stats, LISTENER, {TOKENIZER: "HTTP"}).chains[TOKENIZER].tls_failures == 0
    )


def test_several_tcp_exports_share_the_remainder() -> None:
    stats = {"listener.127.0.0.1_24364.ssl.fail_verify_san": 5}
    counters = ingress_counters(stats, LISTENER, {"a.global": "TCP", "b.global": "TCP"})
    assert {c.tls_failures for c in counters.chains.values()} == {5}
    assert not any(c.tls_exact for c in counters.chains.values())
    both = arrow_counters(counters, ["a.global", "b.global"])
    assert both.tls_failures == 5  # one remainder, counted once
    assert not both.tls_exact


def test_an_arrow_sums_its_chains_once() -> None:
    stats = {
        "http.ingress_wire.global.rbac.allowed": 3,
        "http.ingress_own.global.rbac.allowed": 2,
        "http.ingress_own.global.rbac.denied": 1,
    }
    counters = ingress_counters(stats, LISTENER, {"wire.global": "HTTP", "own.global": "HTTP"})
    arrow = arrow_counters(counters, ["wire.global", "own.global", "wire.global", "gone.global"])
    assert (arrow.allowed, arrow.denied, arrow.snis) == (5, 1, ("wire.global", "own.global"))


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
    """Stats and egress health as the admin interfaces would answer."""

    def __init__(self, summary: RuntimeSummary) -> None:
        self.ports = {p.admin_port: p.name for p in summary.processes}
        self.stats: dict[str, dict[str, int]] = {}
        self.current: str | None = "payments"

    def read_stats(self, port: int) -> dict[str, int]:
        return self.stats.get(self.ports[port], {})

    def read_health(
        self, imp: ImportInfo, port: int | None
    ) -> tuple[str | None, tuple[SourceStatus, ...]]:
        sources = tuple(
            SourceStatus(
                s.mesh,
                s.export,
                f"{s.address}:{s.port}",
                s.priority,
                None if port is None else s.mesh == self.current or s.priority > 0,
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
    layout, _ = allocate_layout(ws.plan, None, set())
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
    fake.stats["payments/ingress"] = parse_stats(CAPTURED.replace("24364", str(15443)))
    ingress_log = log_path(paths.root, "payments/ingress", "access")
    caller = "spiffe://web.bank.example/ns/shop/sa/checkout"
    _append(ingress_log, [_request("2026-01-01T00:00:01.000Z", caller, 200)])
    collector = Collector(paths, fake.read_stats, fake.read_health)
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
    assert (tok["allowed"], tok["denied"], tok["tls_failures"]) == (4, 1, 1)
    assert (
        tok["state"] == "serving"
        and tok["order"] == 1
        and tok["principals"] == ["ns/shop/sa/checkout"]
    )
    led = arrow("web", "payments/ledger")
    assert (led["allowed"], led["denied"], led["tls_failures"]) == (1, 0, 2)
    dr = arrow("web", "payments-dr/tokenizer")
    assert dr["state"] == "standby" and dr["allowed"] == 0 and dr["order"] == 2
    # payments-dr answers the wire host too (the failover alias): both chains count.
    assert dr["snis"] == [TOKENIZER, "tokenizer.payments-dr.global"]
    assert state["totals"] == {"allowed": 5, "denied": 1, "tls_failures": 3, "unknown_sni": 1}
    payments = next(m for m in state["meshes"] if m["name"] == "payments")
    assert payments["ingress_up"] and payments["handshakes"] == 4
    imp = next(i for i in state["imports"] if i["local"].startswith("tokenizer."))
    assert imp["current"] == "payments"
    assert [s["mesh"] for s in imp["sources"]] == ["payments", "payments-dr"]
    assert state["log"][0]["caller"] == caller and state["log"][0]["decision"] == "allowed 200"


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
        state = Collector(paths, fake.read_stats, fake.read_health).state()
        tok = next(a for a in state["arrows"] if a["export"] == "payments/tokenizer")
        assert not tok["ingress_up"] and tok["allowed"] is None
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
    collector = Collector(
        paths, FakeGateways(summary).read_stats, FakeGateways(summary).read_health
    )
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
    server.collector = Collector(paths, fake.read_stats, fake.read_health)
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
