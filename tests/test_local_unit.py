"""The local runtime's parts that need no Envoy: ports, layout, state, XFCC, files, workloads."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner

from local_helpers import TEST_ADMIN, cli, poll, spec_copy
from meshfed.local import procs
from meshfed.local.certs import identity_for
from meshfed.local.errors import LocalError
from meshfed.local.layout import (
    admin_sockets,
    all_ports,
    allocate_layout,
    check_ingresses,
    layout_from_json,
    layout_to_json,
)
from meshfed.local.locate import locate_state
from meshfed.local.logs import PROBE_SNI, LogEntry, boundary_view, decision, is_health_check
from meshfed.local.paths import RuntimePaths
from meshfed.local.ports import PortAllocator, is_loopback, port_free
from meshfed.local.procs import find_envoy, is_running, start_time
from meshfed.local.runtime import Runtime
from meshfed.local.state import ProcessRecord, load_processes, save_processes
from meshfed.local.summary import summarize
from meshfed.local.workloads import Host, WorkloadSpec
from meshfed.local.xds import EnvoyFiles, secrets_for
from meshfed.local.xfcc import caller_from_xfcc, parse_xfcc
from meshfed.render.envoy import render_local
from meshfed.workspace import Workspace, open_workspace

INGRESS = "spiffe://a.test/ns/meshfed-system/sa/federation-ingress"
ME = "spiffe://a.test/ns/shop/sa/tokenizer"
CALLER = "spiffe://c.test/ns/app/sa/frontend"


def _first_ingress_port(text: str, port: int) -> str:
    return re.sub(r"(ingress: \{address: 127\.0\.0\.1, port: )\d+", rf"\g<1>{port}", text, count=1)


@pytest.fixture(scope="module")
def bank_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    base = tmp_path_factory.mktemp("unit-bank")
    return open_workspace(spec_copy("bank", base), base / "state")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port somebody else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# --- ports ---------------------------------------------------------------------------------------


def test_port_free_sees_a_listener(listening: int) -> None:
    assert not port_free(listening)


def test_allocator_skips_ports_in_use_and_reserved(listening: int) -> None:
    # Start the scan exactly at the held port: the allocator must step over it.
    alloc = PortAllocator(port_range=(listening, listening + 50), rng=random.Random(0))
    alloc._next = listening
    first = alloc.allocate()
    assert first != listening and port_free(first)
    alloc2 = PortAllocator(reserved={first}, port_range=(first, first + 50))
    alloc2._next = first
    assert alloc2.allocate() not in (first, listening)


def test_allocator_runs_out_clearly(listening: int) -> None:
    alloc = PortAllocator(port_range=(listening, listening + 1))
    with pytest.raises(LocalError, match="no free loopback port"):
        alloc.allocate()


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("0.0.0.0")
    assert not is_loopback("localhost") and not is_loopback("::1")


# --- layout --------------------------------------------------------------------------------------


def test_layout_is_stable_and_collision_free(bank_ws: Workspace) -> None:
    plan = bank_ws.plan
    layout, notes = allocate_layout(plan, None, set(), TEST_ADMIN)
    assert not notes
    ports = all_ports(layout)
    ingress = {m.ingress.port for m in plan.meshes}
    count = sum(
        3 + len(s.tcp_outbound) for m in layout.meshes.values() for s in m.sidecars.values()
    )
    assert len(ports) == count + len(plan.meshes)  # all distinct; admin endpoints have none
    assert not ports & ingress
    sockets = admin_sockets(layout)
    envoys = sum(2 + len(m.sidecars) for m in layout.meshes.values())
    assert len(sockets) == envoys and {Path(s).parent for s in sockets} == {TEST_ADMIN}
    assert layout.meshes["web"].sidecars["shop/checkout"].admin_socket == str(
        TEST_ADMIN / "web_sidecar_shop_checkout.sock"
    )
    web = layout.meshes["web"].sidecars["shop/checkout"]
    assert set(web.tcp_outbound) == {"ledger.shop.svc.cluster.local:9000"}
    again, notes = allocate_layout(
        plan, layout_from_json(layout_to_json(layout)), set(), TEST_ADMIN
    )
    assert again == layout and not notes


def test_layout_moves_only_a_port_somebody_took(bank_ws: Workspace) -> None:
    layout, _ = allocate_layout(bank_ws.plan, None, set(), TEST_ADMIN)
    taken = layout.meshes["web"].egress_port
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", taken))
        s.listen()
        moved, notes = allocate_layout(bank_ws.plan, layout, set(), TEST_ADMIN)
        kept, kept_notes = allocate_layout(bank_ws.plan, layout, {taken}, TEST_ADMIN)  # held by us
    assert moved.meshes["web"].egress_port != taken
    assert len(notes) == 1 and "web/egress/listen" in notes[0]
    assert all_ports(moved) - {moved.meshes["web"].egress_port} == all_ports(layout) - {taken}
    assert kept == layout and not kept_notes


def test_layout_gives_new_components_new_ports_only(tmp_path: Path) -> None:
    def add(text: str) -> str:
        line = (
            "        - {name: catalog, namespace: shop, serviceAccount: catalog, port: 8080, "
            "protocol: HTTP}\n"
        )
        return text.replace(line, line + line.replace("catalog", "search"))

    first = open_workspace(spec_copy("bank", tmp_path / "a"), tmp_path / "state")
    layout, _ = allocate_layout(first.plan, None, set(), TEST_ADMIN)
    spec2 = tmp_path / "b" / "bank.yaml"
    spec2.parent.mkdir()
    text = add(first.spec_path.read_text())
    spec2.write_text(text)
    second = open_workspace(spec2, tmp_path / "state")
    grown, _ = allocate_layout(second.plan, layout, set(), TEST_ADMIN)
    assert all_ports(layout) < all_ports(grown)
    assert (
        grown.meshes["web"].sidecars["shop/catalog"]
        == layout.meshes["web"].sidecars["shop/catalog"]
    )
    assert len(all_ports(grown) - all_ports(layout)) == 4  # inbound, outbound, app, tcp


def test_ingress_must_be_loopback_and_free(tmp_path: Path, listening: int) -> None:
    spec = spec_copy(
        "bank", tmp_path, lambda t: t.replace("address: 127.0.0.1", "address: 10.1.2.3", 1)
    )
    ws = open_workspace(spec, tmp_path / "state")
    with pytest.raises(LocalError, match="not a loopback address"):
        check_ingresses(ws.plan, set())
    spec = spec_copy("bank", tmp_path / "taken", lambda t: _first_ingress_port(t, listening))
    ws = open_workspace(spec, tmp_path / "state2")
    with pytest.raises(LocalError, match=f"port 127.0.0.1:{listening} is already in use") as exc:
        check_ingresses(ws.plan, set())
    assert "held by pid" in str(exc.value)
    check_ingresses(ws.plan, {listening})  # our own running ingress holds it: fine


# --- XFCC ----------------------------------------------------------------------------------------


def test_parse_xfcc_quotes_and_escapes() -> None:
    header = f'By={INGRESS};Hash=ab;Subject="CN=x,O=\\"y\\";z";URI={CALLER},By={ME};URI={INGRESS}'
    first, second = parse_xfcc(header)
    assert first["Subject"] == 'CN=x,O="y";z'
    assert first["URI"] == CALLER and second == {"By": ME, "URI": INGRESS}


@pytest.mark.parametrize(
    ("header", "caller"),
    [
        (None, None),
        ("", None),
        (f"By={ME};URI={CALLER}", CALLER),  # an in-mesh peer, directly
        (f"By={INGRESS};URI={CALLER},By={ME};URI={INGRESS}", CALLER),  # through the ingress
        # A peer that forwards its own element is still only itself.
        (f"By={INGRESS};URI=spiffe://c.test/x,By={ME};URI={CALLER}", CALLER),
        # Through the ingress, but the element before is not the ingress's own: nobody.
        (f"By=spiffe://evil/x;URI={CALLER},By={ME};URI={INGRESS}", None),
        # Two forwarded elements before the ingress's hop: ambiguous, nobody.
        (f"By={INGRESS};URI=a,By={INGRESS};URI={CALLER},By={ME};URI={INGRESS}", None),
        # The last element was not written by our own sidecar.
        (f"By=spiffe://a.test/ns/other/sa/x;URI={CALLER}", None),
        (f"By={ME};URI={INGRESS}", None),  # the ingress itself, with nobody behind it
    ],
)
def test_caller_from_xfcc(header: str | None, caller: str | None) -> None:
    assert caller_from_xfcc(header, ME, INGRESS) == caller


# --- state and processes -------------------------------------------------------------------------


def test_process_records_roundtrip_and_liveness(tmp_path: Path) -> None:
    paths = RuntimePaths(tmp_path)
    paths.ensure()
    me = os.getpid()
    started = start_time(me)
    assert started is not None
    records = {
        "me": ProcessRecord("me", "envoy", me, started, time.time()),
        "recycled": ProcessRecord("recycled", "envoy", me, started + 1, time.time()),
        "gone": ProcessRecord("gone", "workloads", 2**22 + 7, 1, time.time()),
    }
    save_processes(paths, records)
    assert stat.S_IMODE(paths.processes.stat().st_mode) == 0o600
    loaded = load_processes(paths)
    assert loaded == records
    assert loaded["me"].alive and not loaded["recycled"].alive and not loaded["gone"].alive
    save_processes(paths, {})
    assert not paths.processes.exists()


def test_stale_records_are_cleaned_up(tmp_path: Path) -> None:
    paths = RuntimePaths(tmp_path.resolve())
    paths.ensure()
    save_processes(paths, {"x/ingress": ProcessRecord("x/ingress", "envoy", 2**22 + 7, 1, 0.0)})
    runtime = Runtime(tmp_path)
    runtime.sup.load()
    notes = runtime.sup.cleanup_stale()
    assert notes and "gone" in notes[0]
    assert not paths.processes.exists()


def test_zombie_is_not_running() -> None:
    # The child lives until its stdin closes: its start time is read while it runs (a child
    # that exited at once could already be a zombie, which start_time rightly refuses).
    code = "import sys; sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    started = start_time(proc.pid)
    assert started is not None and is_running(proc.pid, started)
    assert proc.stdin is not None
    proc.stdin.close()
    assert poll(lambda: not is_running(proc.pid, started), timeout=5) is not None
    proc.wait()


def test_envoy_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(LocalError, match="Envoy is not installed"):
        find_envoy()


# --- Envoy files and certificates ----------------------------------------------------------------


def test_envoy_files_are_private_and_unchanged_files_untouched(
    bank_ws: Workspace, tmp_path: Path
) -> None:
    layout, _ = allocate_layout(bank_ws.plan, None, set(), TEST_ADMIN)
    root = tmp_path / "local"
    processes = {p.name: p for p in render_local(bank_ws.plan, layout, root)}
    ingress = processes["payments/ingress"]
    now = datetime.now(UTC)
    ca = bank_ws.pki.meshes["payments"]
    assert ingress.spiffe_id is not None
    ident = identity_for(ca, ingress.spiffe_id, bank_ws.plan.workload_ttl, now)
    assert ident.issued
    files = EnvoyFiles(root, ingress)
    pending = files.diff(secrets_for(ingress, (ident.chain_pem, ident.key_pem)))
    assert pending.bootstrap is not None and pending.clusters is not None
    files.write_cold(pending)
    assert stat.S_IMODE(files.sds_path("default").stat().st_mode) == 0o600
    assert stat.S_IMODE(files.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((files.dir / "sds").stat().st_mode) == 0o700
    assert json.loads(files.cds_path.read_text())["version_info"] == "1"
    mtime = files.cds_path.stat().st_mtime_ns

    # Same configuration, kept certificate: nothing to do.
    kept = identity_for(
        ca, ingress.spiffe_id, bank_ws.plan.workload_ttl, now, files.kept_default_secret()
    )
    assert not kept.issued and kept.chain_pem == ident.chain_pem
    assert files.diff(secrets_for(ingress, (kept.chain_pem, kept.key_pem))).empty
    assert files.cds_path.stat().st_mtime_ns == mtime

    # Near expiry (or another identity): a new certificate, a new SDS version.
    later = now + bank_ws.plan.workload_ttl * 0.9
    renewed = identity_for(
        ca, ingress.spiffe_id, bank_ws.plan.workload_ttl, later, files.kept_default_secret()
    )
    assert renewed.issued
    other = identity_for(
        ca,
        "spiffe://payments.bank.example/ns/x/sa/y",
        timedelta(hours=1),
        now,
        files.kept_default_secret(),
    )
    assert other.issued
    pending = files.diff(secrets_for(ingress, (renewed.chain_pem, renewed.key_pem)))
    assert set(pending.secrets) == {"default"} and pending.clusters is None
    files.write_cold(pending)
    assert json.loads(files.sds_path("default").read_text())["version_info"] == "2"


def test_summary_finds_the_egress_cluster_of_each_import(
    bank_ws: Workspace, tmp_path: Path
) -> None:
    layout, _ = allocate_layout(bank_ws.plan, None, set(), TEST_ADMIN)
    processes = render_local(bank_ws.plan, layout, tmp_path)
    summary = summarize(bank_ws.plan, bank_ws.spec_path, processes)
    clusters = {i.local_host: i.egress_cluster for i in summary.imports}
    assert clusters == {
        "ledger.shop.svc.cluster.local": "egress|ledger.payments.bank.global",
        "tokenizer.shop.svc.cluster.local": "egress|tokenizer.payments.global",
    }
    assert summary.ingress_at(f"127.0.0.1:{bank_ws.plan.mesh('web').ingress.port}") == "web"


# --- the workload host ---------------------------------------------------------------------------


def _free_port() -> int:
    return PortAllocator().allocate()


def test_workload_host_answers_with_the_verified_caller() -> None:
    http_spec = WorkloadSpec("a", "shop/tokenizer", "HTTP", _free_port(), ME, INGRESS)
    tcp_spec = WorkloadSpec("a", "shop/ledger", "TCP", _free_port(), ME, INGRESS)
    host = Host()
    host.apply([http_spec, tcp_spec])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", http_spec.port, timeout=5)
        xfcc = f"By={INGRESS};URI={CALLER},By={ME};URI={INGRESS}"
        conn.request("POST", "/v1/x?y=1", body=b"abc", headers={"x-forwarded-client-cert": xfcc})
        resp = conn.getresponse()
        assert resp.status == 200
        doc = json.loads(resp.read())
        assert doc.pop("headers")["x-forwarded-client-cert"] == xfcc
        assert doc == {
            "mesh": "a", "workload": "shop/tokenizer", "caller": CALLER,
            "method": "POST", "path": "/v1/x?y=1",
        }  # fmt: skip
        # Keep-alive, chunked body, any method.
        conn.putrequest("BREW", "/pot")
        conn.putheader("transfer-encoding", "chunked")
        conn.endheaders(b"3\r\nabc\r\n0\r\n\r\n")
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        assert doc["method"] == "BREW" and doc["caller"] is None
        conn.close()
        with socket.create_connection(("127.0.0.1", tcp_spec.port), timeout=5) as s:
            f = s.makefile("rwb")
            assert json.loads(f.readline()) == {"mesh": "a", "workload": "shop/ledger"}
            f.write(b"hello\n")
            f.flush()
            assert f.readline() == b"hello\n"
        server = host.servers[http_spec]
        host.apply([http_spec])  # the TCP workload goes, the HTTP one keeps its socket
        assert host.servers == {http_spec: server}
        assert port_free(tcp_spec.port)
    finally:
        host.close()


def test_workload_host_process_reloads_on_sighup(tmp_path: Path) -> None:
    one = WorkloadSpec("a", "shop/one", "HTTP", _free_port(), ME, INGRESS)
    two = WorkloadSpec("a", "shop/two", "TCP", _free_port(), ME, INGRESS)
    config = tmp_path / "workloads.json"
    config.write_text(json.dumps({"workloads": [one.to_json()]}))
    proc = subprocess.Popen([sys.executable, "-m", "meshfed.local.workloads", str(config)])
    try:
        assert poll(lambda: not port_free(one.port), timeout=10) is not None
        config.write_text(json.dumps({"workloads": [one.to_json(), two.to_json()]}))
        proc.send_signal(signal.SIGHUP)
        assert poll(lambda: not port_free(two.port), timeout=10) is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- logs ----------------------------------------------------------------------------------------


def _entry(file: Literal["access", "conn"], **doc: object) -> LogEntry:
    return LogEntry("payments/ingress", file, {"mesh": "payments", "gateway": "ingress", **doc})


def test_boundary_view_keeps_each_crossing_once(bank_ws: Workspace, tmp_path: Path) -> None:
    layout, _ = allocate_layout(bank_ws.plan, None, set(), TEST_ADMIN)
    summary = summarize(
        bank_ws.plan, bank_ws.spec_path, render_local(bank_ws.plan, layout, tmp_path)
    )
    health = _entry("conn", kind="connection", sni=None, caller=None, bytes_received=0, flags="-")
    http_conn = _entry(
        "conn", kind="connection", sni="tokenizer.payments.global", caller=CALLER, flags="-"
    )
    tcp_conn = _entry(
        "conn",
        kind="connection",
        sni="ledger.payments.bank.global",
        caller=CALLER,
        upstream="127.0.0.1:1",
        flags="-",
    )
    refused = _entry(
        "conn",
        kind="connection",
        sni="tokenizer.payments.global",
        caller=CALLER,
        tls_failure="CERTIFICATE_VERIFY_FAILED:x",
        flags="-",
    )
    unknown = _entry("conn", kind="connection", sni="vault.x", flags="NR")
    request = _entry(
        "access",
        kind="request",
        sni="tokenizer.payments.global",
        caller=CALLER,
        code=403,
        decision="denied",
    )
    # A TCP session: the listener's line, and the line of the export's tunnel (its decision).
    tunnel = _entry(
        "access",
        kind="connection",
        sni="ledger.payments.bank.global",
        caller=CALLER,
        upstream="127.0.0.1:1",
        decision="allowed",
    )
    tunnel_refused = _entry(
        "conn",
        kind="connection",
        sni="ledger.payments.bank.global",
        caller=f"{CALLER},{CALLER}x",
        upstream="envoy://tunnel|ledger.payments.bank.global/",
        upstream_failure="tunnel_response:403",
        flags="UF,URX",
    )
    probe = _entry("conn", kind="connection", sni=PROBE_SNI, caller=None, flags="-")
    entries = [health, probe, http_conn, tcp_conn, tunnel_refused, tunnel, refused, unknown]
    kept = boundary_view([*entries, request], summary)
    assert kept == [tunnel, refused, unknown, request]
    assert is_health_check(health.doc) and is_health_check(probe.doc)
    assert decision(tunnel.doc) == "passed"
    assert decision(refused.doc).startswith("TLS handshake failed")
    assert decision(unknown.doc) == "refused: no route for this SNI"
    assert decision(request.doc) == "denied 403"
    # A session the tunnel's RBAC refused (Envoy's %RESPONSE_CODE_DETAILS% of the CONNECT).
    closed = _entry(
        "access",
        kind="connection",
        sni="ledger.payments.bank.global",
        caller=f"{CALLER},{CALLER}x",
        upstream=None,
        details="rbac_access_denied_matched_policy[several-uri-sans]",
    )
    assert decision(closed.doc) == "denied (rbac_access_denied_matched_policy[several-uri-sans])"


def _stalled(sni: str | None, details: str | None) -> LogEntry:
    """A connection line as Envoy 1.40 writes it for a client that never finished its
    handshake (seen on a local ingress: nothing sent, half a ClientHello, a whole one)."""
    return _entry(
        "conn", kind="connection", sni=sni, caller=None, bytes_received=0, bytes_sent=0,
        details=details, duration_ms=4999, flags="-", tls_failure=None, upstream=None,
    )  # fmt: skip


def test_stalled_handshakes_are_in_the_boundary_log_whatever_their_sni(
    bank_ws: Workspace, tmp_path: Path
) -> None:
    # Before: all three were hidden, the first two as "health checks" (no SNI / the probe's
    # SNI), the third as "the connection of an HTTP request" (an exported SNI): 10,000 stalled
    # handshakes left no trace in `meshfed logs --boundary` or on the dashboard.
    layout, _ = allocate_layout(bank_ws.plan, None, set(), TEST_ADMIN)
    summary = summarize(
        bank_ws.plan, bank_ws.spec_path, render_local(bank_ws.plan, layout, tmp_path)
    )
    timeout = "transport socket timeout was reached"
    stalled = [
        _stalled(None, None),  # nothing sent, or half a ClientHello
        _stalled(PROBE_SNI, timeout),  # the egress probes' name, then silence
        _stalled("tokenizer.payments.global", timeout),  # a whole ClientHello, then silence
    ]
    probe = _entry(
        "conn", kind="connection", sni=PROBE_SNI, caller=None, bytes_received=0, details=None,
        duration_ms=1, flags="-", tls_failure=None, upstream=None,
    )  # fmt: skip
    assert boundary_view([probe, *stalled], summary) == stalled
    assert not any(is_health_check(e.doc) for e in stalled) and is_health_check(probe.doc)
    gave_up = _entry(
        "conn", kind="connection", sni=PROBE_SNI, caller=None, bytes_received=0, flags="-",
        tls_failure="TLS_error:|33554464:system_library:OPENSSL_internal:Broken_pipe:TLS_error_end",
    )  # fmt: skip
    assert decision(gave_up.doc).endswith(
        "(the egress probes' name: a probe its egress gave up on, or a client's)"
    )
    assert [decision(e.doc) for e in stalled] == [
        "TLS handshake not completed: closed after 5.0 s",
        f"TLS handshake not completed: {timeout} after 5.0 s",
        f"TLS handshake not completed: {timeout} after 5.0 s",
    ]
    # Seen under load (CI, two busy cores): one of three ClientHello-then-silence clients got
    # a TLS failure reason beside the bound's details. It is still a stall, in the boundary log.
    rejected = _stalled("tokenizer.payments.global", timeout)
    rejected.doc["tls_failure"] = (
        "TLS_error:|268435589:SSL_routines:OPENSSL_internal:CONNECTION_REJECTED:TLS_error_end"
    )
    assert boundary_view([rejected], summary) == [rejected]
    assert decision(rejected.doc) == f"TLS handshake not completed: {timeout} after 5.0 s"
    assert not is_health_check(rejected.doc)


# --- locating a runtime, CLI errors --------------------------------------------------------------


def test_locate_state(tmp_path: Path) -> None:
    with pytest.raises(LocalError, match="no local federation"):
        locate_state(None, None, tmp_path)
    for name in ("a", "b"):
        runtime = tmp_path / ".meshfed" / name / "local"
        runtime.mkdir(parents=True)
        (runtime / "runtime.json").write_text("{}")
    with pytest.raises(LocalError, match="several local federations"):
        locate_state(None, None, tmp_path)
    (tmp_path / ".meshfed" / "a" / "local" / "processes.json").write_text("{}")
    assert locate_state(None, None, tmp_path) == tmp_path / ".meshfed" / "a"
    assert locate_state(None, tmp_path / "x", tmp_path) == tmp_path / "x"


def test_commands_before_up_say_so(tmp_path: Path) -> None:
    runner = CliRunner()
    state = ["--state", str(tmp_path / "nothing")]
    for args in (
        ["status", *state],
        ["call", "--mesh", "web", "--as", "shop/checkout", "http://x/", *state],
        ["logs", *state],
        ["lab", "stop-gateway", "web", *state],
    ):
        result = runner.invoke(cli(), args)
        assert result.exit_code == 1, (args, result.output)
        assert "no local federation" in result.output and "meshfed up" in result.output
    down = runner.invoke(cli(), ["down", *state])
    assert down.exit_code == 0 and "nothing was running" in down.output


def test_up_refuses_a_taken_ingress_port_before_starting_anything(
    tmp_path: Path, listening: int
) -> None:
    spec = spec_copy("bank", tmp_path, lambda t: _first_ingress_port(t, listening))
    result = CliRunner().invoke(cli(), ["up", str(spec), "--state", str(tmp_path / "state")])
    assert result.exit_code == 1
    assert f"127.0.0.1:{listening} is already in use" in result.output
    assert not (tmp_path / "state" / "local" / "processes.json").exists()


def test_inotify_limit_is_the_lower_of_the_kernel_and_the_user_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a container (a user namespace) ``/proc/sys/user/max_inotify_instances`` may be lower
    than ``fs.inotify.max_user_instances``; both apply, so ``up`` checks the lower one."""
    kernel, userns = tmp_path / "kernel", tmp_path / "userns"
    kernel.write_text("4096\n")
    userns.write_text("128\n")
    monkeypatch.setattr(procs, "INOTIFY_LIMITS", (kernel, userns))
    headroom = procs.inotify_headroom()
    assert headroom is not None and headroom[1] == 128
    monkeypatch.setattr(procs, "INOTIFY_LIMITS", (kernel, tmp_path / "missing"))
    headroom = procs.inotify_headroom()
    assert headroom is not None and headroom[1] == 4096
