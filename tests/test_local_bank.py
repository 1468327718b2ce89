"""The bank federation (SharedRoot) on real Envoy: identity, authorization, boundary hygiene."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest
from click.testing import CliRunner
from cryptography import x509

from local_helpers import (
    Fed,
    assert_nothing_left,
    cli,
    client_context,
    poll,
    read_log_lines,
    spec_copy,
    tcp_greeting_and_echo,
    tls_request,
)
from meshfed.dashboard.logtail import row
from meshfed.local.logs import LogEntry, boundary_view, gateway_logs, read_entries
from meshfed.local.procs import rss_bytes
from meshfed.local.status import collect_status
from meshfed.pki.certs import issue_leaf, make_intermediate_ca, make_root_ca
from meshfed.pki.keys import PrivateKey, generate_key
from meshfed.render.envoy.files import log_path

pytestmark = pytest.mark.envoy

TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"
CHECKOUT = "spiffe://web.bank.example/ns/shop/sa/checkout"
PAYMENTS_INGRESS = "spiffe://payments.bank.example/ns/meshfed-system/sa/federation-ingress"
SNI = "tokenizer.payments.global"


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("bank")
    t0 = time.monotonic()
    fed = Fed.start(spec_copy("bank", base), base / "state")
    wall = time.monotonic() - t0
    rss = sum(rss_bytes(r.pid) for r in fed.runtime.processes().values() if r.alive)
    print(f"\nbank footprint: up {wall:.2f} s, {len(fed.pids())} processes, RSS {rss >> 20} MB")
    try:
        yield fed
    finally:
        fed.close()


def _ingress_log(fed: Fed, mesh: str, kind: Literal["access", "conn"]) -> list[dict[str, Any]]:
    return read_log_lines(log_path(fed.runtime.root, f"{mesh}/ingress", kind))


def _wait_log(
    fed: Fed,
    mesh: str,
    kind: Literal["access", "conn"],
    pred: Callable[[dict[str, Any]], bool],
) -> dict[str, Any] | None:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in _ingress_log(fed, mesh, kind) if pred(e)]
        return bool(found)

    poll(seen, timeout=3)
    return found[-1] if found else None


# --- 1. identity crosses the boundary ------------------------------------------------------------


def test_allowed_caller_gets_200_and_its_own_identity(bank: Fed) -> None:
    doc = bank.served_by("payments", "web", "shop/checkout", TOKENIZE, "POST", b"4111111111111111")
    headers = doc.pop("headers")
    # The ingress set the caller header from checkout's verified certificate.
    assert headers["x-meshfed-caller"] == CHECKOUT
    assert doc == {
        "mesh": "payments",
        "workload": "cards/tokenizer",
        "caller": CHECKOUT,
        "method": "POST",
        "path": "/v1/tokenize",
    }


def test_a_host_that_is_no_import_never_leaves_the_mesh(bank: Fed) -> None:
    # REGISTRY_ONLY (the plan's outbound policy): the caller's own sidecar answers 502, as
    # Istio's block_all route does; nothing reaches the egress gateway.
    for host in ("vault.cards.svc.cluster.local", "example.com", "tokenizer.payments.global"):
        resp = bank.call("web", "shop/checkout", f"http://{host}/v1/tokenize", "POST", b"x")
        assert resp.status == 502, (host, resp)
        assert resp.body == b""


def test_tcp_import_reaches_the_exporting_workload(bank: Fed) -> None:
    port = bank.sidecar("web", "shop/checkout").tcp_outbound["ledger.shop.svc.cluster.local:9000"]
    assert tcp_greeting_and_echo(port) == {"mesh": "payments", "workload": "cards/ledger"}


# --- 2. who may call -----------------------------------------------------------------------------


def test_other_workload_of_the_allowed_mesh_gets_403(bank: Fed) -> None:
    bank.served_by("payments", "web", "shop/checkout", TOKENIZE, "POST", b"x")  # its log below
    resp = bank.call("web", "shop/catalog", TOKENIZE, "POST", b"x")
    assert resp.status == 403
    entry = _wait_log(
        bank, "payments", "access", lambda e: e.get("caller", "").endswith("/sa/catalog")
    )
    assert entry is not None and entry["decision"] == "denied" and entry["code"] == 403


def test_disallowed_method_or_path_gets_403(bank: Fed) -> None:
    assert bank.call("web", "shop/checkout", TOKENIZE, "GET").status == 403
    assert bank.call("web", "shop/checkout", TOKENIZE, "DELETE").status == 403
    other_path = "http://tokenizer.shop.svc.cluster.local/v1/detokenize"
    assert bank.call("web", "shop/checkout", other_path, "POST", b"x").status == 403
    # Path tricks are normalised before the policy sees them.
    sneaky = "http://tokenizer.shop.svc.cluster.local/v1/tokenize/../admin"
    assert bank.call("web", "shop/checkout", sneaky, "POST", b"x").status in (400, 403)


def test_workload_of_a_mesh_not_listed_is_refused_at_the_handshake(
    bank: Fed, tmp_path: Path
) -> None:
    # payments-dr is no consumer of payments' tokenizer: its root is not trusted for it.
    intruder = "spiffe://payments-dr.bank.example/ns/cards/sa/tokenizer"
    key, cert = bank.leaf("payments-dr", intruder)
    chain = [cert, bank.ws.pki.meshes["payments-dr"].ca_cert]
    ctx = client_context(tmp_path, chain, key, bank.root_pem("payments"))
    result = tls_request(*bank.ingress("payments"), SNI, ctx, SNI, "POST", "/v1/tokenize")
    assert result.status is None, result  # refused: handshake failure, no HTTP response
    entry = _wait_log(
        bank,
        "payments",
        "conn",
        lambda e: e.get("caller") == intruder and "no_trust_bundle" in str(e.get("tls_failure")),
    )
    assert entry is not None


def test_workload_not_allowed_on_a_tcp_import_gets_nothing(bank: Fed) -> None:
    runner = CliRunner()
    url = "tcp://ledger.shop.svc.cluster.local:9000"
    args = ["call", "--state", str(bank.state), "--mesh", "web", "--as", "shop/catalog", url]
    result = runner.invoke(cli(), args)
    assert result.exit_code == 2, result.output
    assert "cards/ledger" not in result.output


# --- 3. nothing unexported -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sni",
    [
        "vault.cards.svc.cluster.local",
        "vault.payments.bank.global",
        "vault.payments.global",
        "payments.bank.example",
        "*",
    ],
)
def test_unexported_workload_gets_no_http_response(bank: Fed, tmp_path: Path, sni: str) -> None:
    key, cert = bank.leaf("web", CHECKOUT)
    ctx = client_context(tmp_path, [cert, bank.ws.pki.meshes["web"].ca_cert], key, None)
    result = tls_request(*bank.ingress("payments"), sni, ctx, sni, "GET", "/")
    assert result.status is None, result


def test_exported_sni_never_leads_to_another_workload(bank: Fed, tmp_path: Path) -> None:
    key, cert = bank.leaf("web", CHECKOUT)
    ctx = client_context(tmp_path, [cert, bank.ws.pki.meshes["web"].ca_cert], key, None)
    result = tls_request(
        *bank.ingress("payments"), SNI, ctx, "vault.cards.svc.cluster.local", "POST", "/v1/tokenize"
    )
    assert result.status == 404
    assert b"vault" not in result.body


# --- 4. the handshake refuses bad client certificates ---------------------------------------------


def _refused(
    bank: Fed,
    tmp_path: Path,
    chain: list[x509.Certificate] | None,
    key: PrivateKey | None,
    reason_part: str,
) -> None:
    """No HTTP response, and the ingress's connection log names the reason."""
    ctx = client_context(tmp_path, chain, key, bank.root_pem("payments"))
    before = len(_ingress_log(bank, "payments", "conn"))
    result = tls_request(*bank.ingress("payments"), SNI, ctx, SNI, "POST", "/v1/tokenize")
    assert result.status is None, result

    def logged() -> bool:
        new = _ingress_log(bank, "payments", "conn")[before:]
        return any(e.get("tls_failure") and reason_part in str(e["tls_failure"]) for e in new)

    assert poll(logged, timeout=3) is not None, _ingress_log(bank, "payments", "conn")[before:]


def test_untrusted_root_is_refused(bank: Fed, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    root_key = generate_key("ECDSA_P256")
    root = make_root_ca("rogue root", root_key, timedelta(days=1), now)
    ca_key = generate_key("ECDSA_P256")
    ca = make_intermediate_ca(
        "web", "web.bank.example", ca_key, root, root_key, timedelta(days=1), now
    )
    key = generate_key("ECDSA_P256")
    leaf = issue_leaf(CHECKOUT, key, ca, ca_key, timedelta(hours=1), now)
    _refused(bank, tmp_path, [leaf, ca], key, "unable_to_get_local_issuer_certificate")


def test_no_client_certificate_is_refused(bank: Fed, tmp_path: Path) -> None:
    _refused(bank, tmp_path, None, None, "PEER_DID_NOT_RETURN_A_CERTIFICATE")


def test_right_identity_from_another_mesh_intermediate_is_refused(
    bank: Fed, tmp_path: Path
) -> None:
    # Name constraints: payments-dr's intermediate may not vouch for web's trust domain, even
    # though it chains to the same shared root.
    other = bank.ws.pki.meshes["payments-dr"]
    key = generate_key("ECDSA_P256")
    leaf = issue_leaf(
        CHECKOUT, key, other.ca_cert, other.ca_key, timedelta(hours=1), datetime.now(UTC)
    )
    _refused(bank, tmp_path, [leaf, other.ca_cert], key, "permitted_subtree_violation")


def test_expired_certificate_is_refused(bank: Fed, tmp_path: Path) -> None:
    web = bank.ws.pki.meshes["web"]
    key = generate_key("ECDSA_P256")
    then = datetime.now(UTC) - timedelta(hours=3)
    leaf = issue_leaf(CHECKOUT, key, web.ca_cert, web.ca_key, timedelta(hours=1), then)
    _refused(bank, tmp_path, [leaf, web.ca_cert], key, "certificate_has_expired")


def test_the_allowed_certificate_works_directly(bank: Fed, tmp_path: Path) -> None:
    # The control for the refusals above: the same client with a good certificate gets through.
    key, cert = bank.leaf("web", CHECKOUT)
    ctx = client_context(
        tmp_path, [cert, bank.ws.pki.meshes["web"].ca_cert], key, bank.root_pem("payments")
    )
    result = tls_request(*bank.ingress("payments"), SNI, ctx, SNI, "POST", "/v1/tokenize")
    assert result.status == 200 and result.doc["caller"] == CHECKOUT


def _allowed_context(bank: Fed, tmp_path: Path) -> Any:
    key, cert = bank.leaf("web", CHECKOUT)
    return client_context(
        tmp_path, [cert, bank.ws.pki.meshes["web"].ca_cert], key, bank.root_pem("payments")
    )


def _access_line(bank: Fed, before: int, code: int) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = [
            e for e in _ingress_log(bank, "payments", "access")[before:] if e.get("code") == code
        ]
        return bool(found)

    assert poll(logged, timeout=3) is not None, _ingress_log(bank, "payments", "access")[before:]
    return found[-1]


def test_the_ingress_own_replies_name_nothing_of_the_mesh(bank: Fed, tmp_path: Path) -> None:
    """A 503 the ingress makes itself (its workload's sidecar is gone) says only what the
    status says, not Envoy's ``upstream connect error ... reset reason: ...``; the boundary log
    keeps the real reason. A 403 and a 400 likewise, and the 503 the exported workload's
    sidecar answers when the application is down."""
    ctx = _allowed_context(bank, tmp_path)
    address = bank.ingress("payments")
    before = len(_ingress_log(bank, "payments", "access"))
    denied = tls_request(*address, SNI, ctx, SNI, "DELETE", "/v1/tokenize")
    assert (denied.status, denied.body) == (403, b"access denied\n")
    escaped = tls_request(*address, SNI, ctx, SNI, "POST", "/v1/a%2Fb")
    assert (escaped.status, escaped.body) == (400, b"bad request\n")
    assert _access_line(bank, before, 403)["decision"] == "denied"

    victim = bank.pids()["payments/sidecar/cards/tokenizer"]
    os.kill(victim, signal.SIGKILL)
    try:
        assert poll(lambda: victim not in bank.pids().values(), timeout=5) is not None
        before = len(_ingress_log(bank, "payments", "access"))
        result = tls_request(*address, SNI, ctx, SNI, "POST", "/v1/tokenize")
        assert result.status == 503
        assert result.body == b"service unavailable\n", result.body
        assert result.headers.get("content-type") == "text/plain"
        entry = _access_line(bank, before, 503)
        # The log names the real reason, which the caller no longer reads.
        assert "UF" in entry["flags"] and "connection_failure" in entry["details"], entry
    finally:
        assert bank.reup().ok
    assert tls_request(*address, SNI, ctx, SNI, "POST", "/v1/tokenize").status == 200

    # The application down: its sidecar answers 503 for it, which the ingress passes on.
    os.kill(bank.pids()["workloads"], signal.SIGKILL)
    try:
        assert poll(lambda: "workloads" not in bank.pids(), timeout=5) is not None
        before = len(_ingress_log(bank, "payments", "access"))
        result = tls_request(*address, SNI, ctx, SNI, "POST", "/v1/tokenize")
        assert (result.status, result.body) == (503, b"service unavailable\n")
        assert _access_line(bank, before, 503)["details"] == "via_upstream"

        # The application's own 503 passes unchanged, even a body that reads like Envoy's.
        own = b"upstream connect error or disconnect/reset before headers. (the app's own)\n"
        app = bank.sidecar("payments", "cards/tokenizer").app_port
        with _answering(app, 503, own):
            result = tls_request(*address, SNI, ctx, SNI, "POST", "/v1/tokenize")
        assert (result.status, result.body) == (503, own), result
        assert result.headers.get("content-type") == "application/x-own"
    finally:
        assert bank.reup().ok
    assert tls_request(*address, SNI, ctx, SNI, "POST", "/v1/tokenize").status == 200


@contextmanager
def _answering(port: int, status: int, body: bytes) -> Iterator[None]:
    """A stand-in application on ``port`` that answers every request ``status`` with ``body``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(status)
            self.send_header("content-type", "application/x-own")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_boundary_log_names_failures_and_decisions(bank: Fed) -> None:
    summary = bank.runtime.summary()
    files = gateway_logs(bank.runtime.root, summary, "payments", boundary=True)
    entries = boundary_view(read_entries(files, boundary=True), summary)
    assert any(e.doc.get("tls_failure") for e in entries)
    assert any(e.doc.get("decision") == "denied" for e in entries)
    assert any(
        e.doc.get("decision") == "allowed" and e.doc.get("caller") == CHECKOUT for e in entries
    )
    assert not any(not e.doc.get("sni") and not e.doc.get("tls_failure") for e in entries)


MALFORMED = {
    b"GET / HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n": "rejected 400",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n": "rejected 431",
    b"GET / HTTP/1.0\r\nHost: x\r\n\r\n": "rejected 426",
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n": "rejected 501",
}
"""Requests Envoy's codec refuses before any policy sees them, and how the boundary log says it."""


def test_boundary_log_labels_codec_rejections(bank: Fed, tmp_path: Path) -> None:
    key, cert = bank.leaf("web", CHECKOUT)
    ctx = client_context(
        tmp_path, [cert, bank.ws.pki.meshes["web"].ca_cert], key, bank.root_pem("payments")
    )
    policy = bank.ws.plan.mesh("payments").boundary.local_replies
    for raw, label in MALFORMED.items():
        with socket.create_connection(bank.ingress("payments"), timeout=5) as sock:
            tls = ctx.wrap_socket(sock, server_hostname=SNI)
            tls.sendall(raw)
            answer = _read_all(tls)
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(label.split()[-1])
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer
        # Not the codec's own words (``Bad Request``, ``Upgrade Required``): the status's.
        assert body == policy.body(status).encode(), answer

    def logged() -> list[str]:
        result = CliRunner().invoke(
            cli(), ["logs", "--state", str(bank.state), "--boundary", "--mesh", "payments"]
        )
        return [line for line in result.output.splitlines() if "rejected " in line]

    def each_logged(lines: list[str]) -> bool:
        # Other tests' refused requests are in the log too: look for each of these.
        return all(
            any(label in line and f"caller={CHECKOUT}" in line for line in lines)
            for label in MALFORMED.values()
        )

    assert poll(lambda: each_logged(logged()), timeout=10) is not None, logged()
    result = CliRunner().invoke(cli(), ["logs", "--state", str(bank.state), "--boundary"])
    for code in ("400", "426", "431", "501"):
        assert f"allowed {code}" not in result.output
    rows = [row(e, bank.runtime.summary()) for e in _entries(bank) if e.doc.get("code") == 431]
    assert rows and all(r["outcome"] == "rejected" for r in rows)


def _read_all(sock: socket.socket) -> bytes:
    """What the ingress sends until it closes the connection (it does after a codec error)."""
    chunks: list[bytes] = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _entries(bank: Fed) -> list[LogEntry]:
    summary = bank.runtime.summary()
    files = gateway_logs(bank.runtime.root, summary, "payments", boundary=True)
    return boundary_view(read_entries(files, boundary=True), summary)


# --- 5. what crosses the boundary ----------------------------------------------------------------


def test_caller_supplied_xfcc_is_not_identity(bank: Fed, tmp_path: Path) -> None:
    forged = f"By={PAYMENTS_INGRESS};URI=spiffe://web.bank.example/ns/shop/sa/admin"
    # Through the caller's own sidecar...
    resp = bank.call(
        "web", "shop/checkout", TOKENIZE, "POST", b"x", [("x-forwarded-client-cert", forged)]
    )
    assert resp.status == 200
    assert json.loads(resp.body)["caller"] == CHECKOUT
    # ...and straight to the ingress with checkout's certificate.
    key, cert = bank.leaf("web", CHECKOUT)
    ctx = client_context(
        tmp_path, [cert, bank.ws.pki.meshes["web"].ca_cert], key, bank.root_pem("payments")
    )
    result = tls_request(
        *bank.ingress("payments"), SNI, ctx, SNI, "POST", "/v1/tokenize",
        {"x-forwarded-client-cert": forged},
    )  # fmt: skip
    assert result.status == 200 and result.doc["caller"] == CHECKOUT


def test_in_mesh_peer_cannot_forward_an_identity_to_a_workload(bank: Fed, tmp_path: Path) -> None:
    # A workload of payments talks to tokenizer's sidecar directly and claims to be checkout.
    vault = "spiffe://payments.bank.example/ns/cards/sa/vault"
    key, cert = bank.leaf("payments", vault)
    ctx = client_context(tmp_path, [cert, bank.ws.pki.meshes["payments"].ca_cert], key, None)
    inbound = bank.sidecar("payments", "cards/tokenizer").inbound_port
    forged = f"By={PAYMENTS_INGRESS};URI={CHECKOUT}"
    result = tls_request(
        "127.0.0.1", inbound, "x", ctx, "tokenizer", "POST", "/v1/tokenize",
        {"x-forwarded-client-cert": forged},
    )  # fmt: skip
    assert result.status == 403
    plain = tls_request("127.0.0.1", inbound, "x", ctx, "tokenizer", "GET", "/")
    assert plain.status == 200 and plain.doc["caller"] == vault


def test_responses_across_the_boundary_leak_nothing(bank: Fed, tmp_path: Path) -> None:
    key, cert = bank.leaf("web", CHECKOUT)
    ctx = client_context(
        tmp_path, [cert, bank.ws.pki.meshes["web"].ca_cert], key, bank.root_pem("payments")
    )
    for method, path in (("POST", "/v1/tokenize"), ("GET", "/v1/tokenize")):
        r = tls_request(*bank.ingress("payments"), SNI, ctx, SNI, method, path)
        assert r.status in (200, 403)
        assert "server" not in r.headers, r.headers
        assert not [h for h in r.headers if h.startswith("x-envoy-")], r.headers
        for name, value in r.headers.items():
            assert "127.0.0.1" not in value and "localhost" not in value, (name, value)
        assert b"127.0.0.1" not in r.body


# --- status, call CLI, crash recovery, down -----------------------------------------------------


def test_status_reports_processes_and_current_source(bank: Fed) -> None:
    st = collect_status(bank.runtime)
    assert all(p.alive and p.ready for p in st.processes), [p for p in st.processes if not p.ready]
    tokenizer = next(i for i in st.imports if i.local.startswith("tokenizer."))
    assert tokenizer.current == "payments"
    assert [s.mesh for s in tokenizer.sources] == ["payments", "payments-dr"]


def test_cli_call_exit_codes(bank: Fed) -> None:
    runner = CliRunner()
    base = ["call", "--state", str(bank.state), "--mesh", "web"]
    ok = runner.invoke(cli(), [*base, "--as", "shop/checkout", "-X", "POST", TOKENIZE])
    assert ok.exit_code == 0, ok.output
    assert CHECKOUT in ok.output
    denied = runner.invoke(cli(), [*base, "--as", "shop/catalog", "-X", "POST", TOKENIZE])
    assert denied.exit_code == 1
    assert "403" in denied.output
    tcp = runner.invoke(
        cli(),
        [*base, "--as", "shop/checkout", "-d", "hi", "tcp://ledger.shop.svc.cluster.local:9000"],
    )
    assert tcp.exit_code == 0 and "cards/ledger" in tcp.output and "hi" in tcp.output
    unknown = runner.invoke(cli(), [*base, "--as", "shop/nobody", TOKENIZE])
    assert unknown.exit_code == 1 and "serviceAccount" in unknown.output


def test_cli_status_and_logs(bank: Fed) -> None:
    runner = CliRunner()
    st = runner.invoke(cli(), ["status", "--state", str(bank.state), "--json"])
    assert st.exit_code == 0, st.output
    doc = json.loads(st.output)
    assert {p["name"] for p in doc["processes"]} >= {"workloads", "payments/ingress", "web/egress"}
    logs = runner.invoke(cli(), ["logs", "--state", str(bank.state), "--boundary"])
    assert logs.exit_code == 0, logs.output
    assert "TLS handshake failed" in logs.output and "denied 403" in logs.output


def test_up_after_a_crash_restarts_only_what_died(bank: Fed) -> None:
    before = bank.pids()
    victim = before["web/egress"]
    os.kill(victim, signal.SIGKILL)
    assert poll(lambda: "web/egress" not in bank.pids(), timeout=5) is not None
    report = bank.reup()
    assert report.ok
    assert report.started == ["web/egress"]
    after = bank.pids()
    assert after["web/egress"] != victim
    assert {n: p for n, p in after.items() if n != "web/egress"} == {
        n: p for n, p in before.items() if n != "web/egress"
    }
    assert any("gone" in note for note in report.notes)


def test_rerun_changes_nothing(bank: Fed) -> None:
    before = bank.pids()
    report = bank.reup()
    assert report.ok and not report.started and not report.updated and not report.stopped
    assert not report.certificates
    assert bank.pids() == before


def test_down_then_up_again(bank: Fed) -> None:
    # Last in this module: down leaves nothing; up again keeps ports and certificates.
    layout = bank.runtime.layout()
    stopped = bank.runtime.down()
    assert {"workloads", "dashboard"} <= set(stopped)
    assert len(stopped) == len(bank.report.summary.processes) + 2
    assert_nothing_left(bank.state)
    assert not bank.runtime.paths.processes.exists()
    status = collect_status(bank.runtime)
    assert not any(p.alive for p in status.processes)
    report = bank.reup()
    assert report.first_run and report.ok
    assert bank.runtime.layout() == layout
    assert not report.certificates  # kept from the first run
    resp = bank.call("web", "shop/checkout", TOKENIZE, "POST", b"x")
    assert resp.status == 200
