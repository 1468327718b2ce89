"""Bundle endpoints over real HTTPS on loopback, both profiles: serve, fetch, authenticate,
follow, and every kind of bad input refused with the peer named, the last good bundle kept."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from attack import client_hello
from meshfed.bundles import document
from meshfed.bundles.follow import Fetcher, Follower, Outcome
from meshfed.bundles.model import Bootstrap, Endpoint, FollowedPeer, SpiffeBundle
from meshfed.bundles.server import BundleServer, FileTls, SvidTls
from meshfed.bundles.state import Change, PeerBundles, publish
from meshfed.pki import MeshCA, MeshTrustRequest, PKIStore, TrustRequest
from meshfed.pki.certs import cert_to_pem, certs_to_pem, fingerprint
from meshfed.pki.keys import key_to_pem
from test_bundles_format import ca

ENDPOINT_ID = "spiffe://globex.example/meshfed/bundle-endpoint"


def pki(state: Path, mesh: str = "globex", td: str = "globex.example") -> PKIStore:
    store = PKIStore(state)
    store.ensure(
        TrustRequest(
            federation="t",
            mode="Federated",
            key_algorithm="ECDSA_P256",
            root_ttl=timedelta(days=30),
            intermediate_ttl=timedelta(days=10),
            meshes=(MeshTrustRequest(mesh, td),),
        )
    )
    return store


def roots_of(store: PKIStore, mesh: str = "globex") -> tuple[x509.Certificate, ...]:
    return (store.signing_ca(mesh).root_cert,)


class Served:
    """A bundle endpoint on a free loopback port; ``body`` can be swapped by a test."""

    def __init__(self, body: Callable[[], bytes], tls: SvidTls | FileTls) -> None:
        self.body = body
        self.server = BundleServer("127.0.0.1", 0, {"/globex": lambda: self.body()}, tls, log=print)
        self.server.start()
        self.url = f"https://127.0.0.1:{self.server.port}/globex"


@pytest.fixture
def globex(tmp_path: Path) -> Iterator[tuple[PKIStore, Served]]:
    store = pki(tmp_path / "globex-state")

    def doc() -> bytes:
        return document.encode(
            publish(store.state_dir, "globex", "globex.example", roots_of(store), 1)
        )

    served = Served(doc, SvidTls(ENDPOINT_ID, lambda: store.signing_ca("globex")))
    yield store, served
    served.server.stop()


def peer(
    url: str, bootstrap: Bootstrap | None = None, spiffe_id: str = ENDPOINT_ID
) -> FollowedPeer:
    return FollowedPeer(
        "globex",
        "globex.example",
        Endpoint(url, "https_spiffe", spiffe_id),
        ("acme",),
        bootstrap,
    )


def test_https_spiffe_first_fetch_needs_a_bootstrap_never_tofu(
    tmp_path: Path, globex: tuple[PKIStore, Served]
) -> None:
    store, served = globex
    fetcher = Fetcher(tmp_path / "acme")
    out = fetcher.fetch(peer(served.url))
    assert not out.ok and "never trusts a bundle endpoint on first use" in str(out.error)
    assert PeerBundles(tmp_path / "acme").current("globex") is None
    cond = PeerBundles(tmp_path / "acme").condition("globex")
    assert cond is not None and not cond.ok and "globex" in cond.message
    # A bootstrap bundle file (SPIFFE format, as the partner hands it over) authenticates it.
    boot = tmp_path / "globex-bundle.json"
    boot.write_bytes(document.encode(SpiffeBundle("globex.example", roots_of(store))))
    out = fetcher.fetch(peer(served.url, Bootstrap(file=boot)))
    assert out.ok and out.change is not None and out.change.changed, out.describe()
    kept = PeerBundles(tmp_path / "acme").current("globex")
    assert kept is not None and kept.x509_authorities == roots_of(store) and kept.sequence == 1
    assert out.refresh == 1.0  # the published hint
    # Later fetches are authenticated by the kept bundle (the bootstrap is not needed).
    assert fetcher.fetch(peer(served.url)).ok


def test_a_bootstrap_file_is_read_bounded(tmp_path: Path, globex: tuple[PKIStore, Served]) -> None:
    # Before: bootstrapBundle: /dev/zero made `trust fetch` read until memory ran out.
    _, served = globex
    out = Fetcher(tmp_path / "acme").fetch(peer(served.url, Bootstrap(file=Path("/dev/zero"))))
    assert not out.ok
    assert "its bootstrap bundle /dev/zero holds more than 1,048,576 bytes" in str(out.error)
    assert PeerBundles(tmp_path / "acme").current("globex") is None


def test_https_spiffe_fingerprint_bootstrap(
    tmp_path: Path, globex: tuple[PKIStore, Served]
) -> None:
    store, served = globex
    pin = "sha256:" + fingerprint(roots_of(store)[0]).upper()
    out = Fetcher(tmp_path / "acme").fetch(peer(served.url, Bootstrap(fingerprint=pin)))
    assert out.ok, out.describe()
    wrong = Fetcher(tmp_path / "other").fetch(peer(served.url, Bootstrap(fingerprint="ab" * 32)))
    assert not wrong.ok and "no root with the bootstrap fingerprint" in str(wrong.error)
    assert PeerBundles(tmp_path / "other").current("globex") is None


def test_https_spiffe_endpoint_with_the_wrong_identity_or_issuer_is_refused(
    tmp_path: Path, globex: tuple[PKIStore, Served]
) -> None:
    store, served = globex
    boot = Bootstrap(roots=roots_of(store))
    other_id = "spiffe://globex.example/something-else"
    out = Fetcher(tmp_path / "a").fetch(peer(served.url, boot, spiffe_id=other_id))
    assert not out.ok and f"not an X509-SVID of {other_id}" in str(out.error)
    # Authenticated with another trust domain's roots: the TLS handshake fails.
    stranger = pki(tmp_path / "stranger")
    out = Fetcher(tmp_path / "b").fetch(peer(served.url, Bootstrap(roots=roots_of(stranger))))
    assert not out.ok and "not authenticated by the trust domain's bundle" in str(out.error)
    assert "globex" in str(out.error)


def web_pki(tmp_path: Path, host: str) -> tuple[Path, Path, Path]:
    """A private Web PKI: CA file, and a server certificate for ``host`` with its key."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test web CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san: x509.GeneralName = x509.IPAddress(IPv4Address(host))
    except ValueError:
        san = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    d = tmp_path / f"web-{host}"
    d.mkdir()
    (d / "ca.pem").write_bytes(cert_to_pem(ca_cert))
    (d / "cert.pem").write_bytes(cert_to_pem(cert))
    (d / "key.pem").write_bytes(key_to_pem(key))  # type: ignore[arg-type]
    (d / "key.pem").chmod(0o600)
    return d / "ca.pem", d / "cert.pem", d / "key.pem"


def test_https_web_profile(tmp_path: Path) -> None:
    roots = (ca(),)
    body = document.encode(SpiffeBundle("globex.example", roots, 4, 60))
    web_ca, cert, key = web_pki(tmp_path, "127.0.0.1")
    served = Served(lambda: body, FileTls(cert, key))
    try:
        web = FollowedPeer("globex", "globex.example", Endpoint(served.url, "https_web"), ("acme",))
        out = Fetcher(tmp_path / "acme", web_ca=web_ca).fetch(web)
        assert out.ok, out.describe()
        assert PeerBundles(tmp_path / "acme").current("globex").x509_authorities == roots  # type: ignore[union-attr]
        # Without the CA (the system store does not know it): refused.
        out = Fetcher(tmp_path / "b").fetch(web)
        assert not out.ok and "not authenticated as a Web PKI server" in str(out.error)
        # A certificate for another host: refused by the hostname check.
        other_ca, other_cert, other_key = web_pki(tmp_path, "bundles.other.example")
        served.server._server.tls = FileTls(other_cert, other_key)
        out = Fetcher(tmp_path / "c", web_ca=other_ca).fetch(web)
        assert not out.ok and "not authenticated as a Web PKI server" in str(out.error)
        assert "127.0.0.1" in str(out.error) or "match" in str(out.error)
    finally:
        served.server.stop()


def test_head_answers_with_the_headers_of_get(tmp_path: Path) -> None:
    body = document.encode(SpiffeBundle("globex.example", (ca(),), 4, 60))
    web_ca, cert, key = web_pki(tmp_path, "127.0.0.1")
    served = Served(lambda: body, FileTls(cert, key))
    try:
        context = ssl.create_default_context(cafile=str(web_ca))
        answers = {}
        for method in ("GET", "HEAD"):
            conn = http.client.HTTPSConnection("127.0.0.1", served.server.port, context=context)
            conn.request(method, "/globex")
            resp = conn.getresponse()
            answers[method] = (
                resp.status,
                sorted((k, v) for k, v in resp.getheaders() if k not in ("Date", "Server")),
                resp.read(),
            )
            conn.close()
        assert answers["HEAD"][:2] == answers["GET"][:2]
        assert ("Cache-Control", "no-store") in answers["HEAD"][1]
        assert answers["GET"][2] == body and answers["HEAD"][2] == b""
    finally:
        served.server.stop()


# --- bad input: the last good bundle stays, the condition names the peer -----------------------


def test_bad_input_keeps_the_last_good_bundle(
    tmp_path: Path, globex: tuple[PKIStore, Served]
) -> None:
    store, served = globex
    acme = tmp_path / "acme"
    fetcher = Fetcher(acme)  # its default timeout: a loaded machine fails no fetch by time
    good = peer(served.url, Bootstrap(roots=roots_of(store)))
    assert fetcher.fetch(good).ok
    kept = PeerBundles(acme).current("globex")
    assert kept is not None

    def wrong(body: bytes | Callable[[], bytes], expect: str, using: Fetcher = fetcher) -> None:
        served.body = body if callable(body) else (lambda: body)
        out = using.fetch(good)
        assert not out.ok, expect
        assert expect in str(out.error), str(out.error)
        assert out.error is not None and out.error.source == "globex"
        assert PeerBundles(acme).current("globex") == kept
        cond = PeerBundles(acme).condition("globex")
        assert cond is not None and not cond.ok and expect in cond.message
        assert cond.sequence == kept.sequence

    wrong(b"<html>502 Bad Gateway</html>", "not a JSON document")
    wrong(document.encode(SpiffeBundle("globex.example", (ca("acme.example"),), 9)),
          "names trust domain 'acme.example'")  # fmt: skip
    expired = ca(start=datetime.now(UTC) - timedelta(days=40), days=30)
    wrong(document.encode(SpiffeBundle("globex.example", (expired,), 9)), "expired")
    wrong(document.encode(SpiffeBundle("globex.example", (ca(is_ca=False),), 9)), "not a CA")
    wrong(b'{"keys": [' + b" " * (2 << 20) + b"]}", "1048576 allowed")  # Content-Length
    wrong(document.encode(SpiffeBundle("globex.example", roots_of(store), 0)), "older than")

    answer = threading.Event()

    def slow() -> bytes:  # answers only once the fetch has given up, by its own timeout
        answer.wait(60)
        return b"{}"

    try:
        wrong(slow, "within 1 s", using=Fetcher(acme, timeout=1.0))
    finally:
        answer.set()
    # Endpoint down.
    served.server.stop()
    out = fetcher.fetch(good)
    assert not out.ok and "unreachable" in str(out.error) and out.error.source == "globex"  # type: ignore[union-attr]
    assert PeerBundles(acme).current("globex") == kept
    served.server = BundleServer("127.0.0.1", 0, {}, served.server._server.tls)  # for teardown
    served.server.start()


def test_streamed_huge_body_and_silent_server_are_cut_off(tmp_path: Path) -> None:
    """No Content-Length, endless body; a TCP server that never speaks TLS."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def silent() -> None:
        conns = []
        while not stop.is_set():
            listener.settimeout(0.2)
            try:
                conns.append(listener.accept()[0])
            except OSError:
                continue
        for c in conns:
            c.close()

    t = threading.Thread(target=silent, daemon=True)
    t.start()
    try:
        web = FollowedPeer(
            "globex", "globex.example",
            Endpoint(f"https://127.0.0.1:{port}/b", "https_web"), ("acme",),
        )  # fmt: skip
        # The fetch gives up by its own timeout (the error says so) rather than waiting on a
        # server that never answers; the thread's join only keeps a hang from stalling the suite.
        result: list[Outcome] = []
        fetching = threading.Thread(
            target=lambda: result.append(Fetcher(tmp_path, timeout=0.8).fetch(web)), daemon=True
        )
        fetching.start()
        fetching.join(120)
        assert result, "the fetch from a silent endpoint never returned"
        out = result[0]
        assert not out.ok and "globex" in str(out.error)
        assert "in time" in str(out.error) or "within" in str(out.error)
    finally:
        stop.set()
        t.join()
        listener.close()


def test_follower_honours_the_refresh_hint_and_propagates_changes(
    tmp_path: Path, globex: tuple[PKIStore, Served]
) -> None:
    store, served = globex
    roots = list(roots_of(store))
    served.body = lambda: document.encode(
        publish(store.state_dir, "globex", "globex.example", roots, 1)
    )
    changes: list[list[Change]] = []
    fetcher = Fetcher(tmp_path / "acme")
    follower = Follower(fetcher, [peer(served.url, Bootstrap(roots=tuple(roots)))],
                        changes.append, log=lambda _: None)  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=follower.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30  # hang guards: the follower's pace is not under test
        while not changes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(changes) == 1 and changes[0][0].sequence == 1
        roots.append(ca())  # the peer publishes a second root: sequence 2, within ~1 s
        deadline = time.monotonic() + 30
        while len(changes) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(changes) == 2, changes
        assert changes[1][0].sequence == 2 and changes[1][0].added == (fingerprint(roots[1]),)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert [h["sequence"] for h in PeerBundles(tmp_path / "acme").history("globex")] == [1, 2]


def test_served_svid_follows_the_signing_ca(tmp_path: Path) -> None:
    store = pki(tmp_path)
    tls = SvidTls(ENDPOINT_ID, lambda: store.signing_ca("globex"))
    tls.context()
    leaf = tls.leaf
    assert leaf is not None
    ca_now: MeshCA = store.signing_ca("globex")
    assert leaf.issuer == ca_now.ca_cert.subject
    assert json.loads(document.encode(SpiffeBundle("globex.example", (leaf,))))["keys"]
    assert certs_to_pem([leaf])


def test_redirects_are_followed_only_to_https_with_the_same_checks(tmp_path: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    roots = (ca(),)
    body = document.encode(SpiffeBundle("globex.example", roots, 1, 60))
    web_ca, cert, key = web_pki(tmp_path, "127.0.0.1")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            targets = {
                "/moved": "/bundle",
                "/insecure": "http://127.0.0.1/bundle",
                "/loop": "/loop",
            }
            if self.path in targets:
                self.send_response(302)
                self.send_header("Location", targets[self.path])
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = FileTls(cert, key).context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"https://127.0.0.1:{server.server_address[1]}"

    def fetch(path: str) -> object:
        web = FollowedPeer("globex", "globex.example", Endpoint(base + path, "https_web"), ("a",))
        return Fetcher(tmp_path / path.strip("/"), web_ca=web_ca).fetch(web)

    try:
        moved = fetch("/moved")
        assert moved.ok, moved.describe()  # type: ignore[attr-defined]
        insecure = fetch("/insecure")
        assert "must use https" in str(insecure.error)  # type: ignore[attr-defined]
        loop = fetch("/loop")
        assert "redirected more than" in str(loop.error)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


# --- the endpoint faces the partner's network: nobody may hold it -------------------------------


def _closed_by_server(
    sock: socket.socket | ssl.SSLSocket, trickle: bytes = b"", guard: float = 30.0
) -> bool:
    """Whether the server closed ``sock`` while the bytes of ``trickle`` were sent one every
    0.1 s (as a slowloris client does). ``guard`` only keeps a server that never closes it from
    hanging the test: why it was closed is told by the server's counts, never by a time."""
    t0 = time.monotonic()
    sock.settimeout(0.1)
    left = iter(trickle)
    while time.monotonic() - t0 < guard:
        try:
            byte = next(left, None)
            if byte is not None:
                sock.send(bytes([byte]))
            if sock.recv(1) == b"":
                return True
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            return True
    return False


def test_a_client_that_trickles_its_request_is_cut_at_the_deadline(tmp_path: Path) -> None:
    # Before: each byte restarted the 10 s socket timeout, so 4,000 such clients held 4,000
    # threads (310 MB) of a `trust serve` for as long as they liked. Sent in full, the request
    # takes 114 s and the ClientHello 52 s: closed before that, and counted as cut, they were cut
    # at the deadline (a read timing out is no cut).
    store = pki(tmp_path / "globex-state")
    tls = SvidTls(ENDPOINT_ID, lambda: store.signing_ca("globex"))
    server = BundleServer(
        "127.0.0.1", 0, {"/globex": lambda: b"{}"}, tls, log=print, connection_deadline=1.0
    ).start()
    try:
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        slow = client.wrap_socket(socket.create_connection(("127.0.0.1", server.port)))
        request = b"GET /globex HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: 1\r\n" * 100
        assert _closed_by_server(slow, trickle=request)
        slow_handshake = socket.create_connection(("127.0.0.1", server.port))
        assert _closed_by_server(slow_handshake, trickle=client_hello("globex"))
        slow.close()
        slow_handshake.close()
        assert (server.server.cut, server.server.active) == (2, 0)
    finally:
        server.stop()


def _https_server(
    tmp_path: Path,
    routes: dict[str, Callable[[], bytes]],
    max_connections: int,
    connection_deadline: float,
) -> tuple[BundleServer, ssl.SSLContext]:
    """A bundle endpoint of the ``https_web`` profile, started, and a client context for it."""
    web_ca, cert, key = web_pki(tmp_path, "127.0.0.1")
    tls = FileTls(cert, key)
    server = BundleServer("127.0.0.1", 0, routes, tls, print, max_connections, connection_deadline)
    return server.start(), ssl.create_default_context(cafile=str(web_ca))


def _get(server: BundleServer, context: ssl.SSLContext, path: str = "/globex") -> bytes:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def test_connections_over_the_cap_are_closed_at_accept_and_serving_goes_on(
    tmp_path: Path,
) -> None:
    body = document.encode(SpiffeBundle("globex.example", (ca(),), 4, 60))
    server, context = _https_server(
        tmp_path, {"/globex": lambda: body}, max_connections=4, connection_deadline=1.5
    )
    # The five connections reach the listen queue in this order and the server takes them from
    # it in order, so the fifth finds the four held: waiting here for the four to be accepted
    # first could let the first one's deadline pass on a loaded machine.
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    over = socket.create_connection(("127.0.0.1", server.port))
    try:
        assert _closed_by_server(over)
        assert server.server.refused == 1  # closed at accept, not cut at a deadline
        # The held ones are cut at their deadline. A cut connection's slot is free before its
        # client sees it closed: the next client is served at once, however late the cut
        # connections' threads run (it was refused while they had not yet ended: load 12).
        assert all(_closed_by_server(s) for s in held)
        assert (server.server.cut, server.server.active) == (4, 0)
        assert _get(server, context) == body
        assert server.server.refused == 1
    finally:
        over.close()
        for s in held:
            s.close()
        server.stop()


def test_threads_held_up_in_a_route_past_the_deadline_do_not_pile_up(tmp_path: Path) -> None:
    # A cut connection's slot is free at once, but its thread runs on until the route returns:
    # while twice the cap of threads are alive, new connections are refused too.
    body = b"{}"
    entered, release = threading.Semaphore(0), threading.Event()

    def stuck() -> bytes:
        entered.release()
        release.wait()
        return body

    server, context = _https_server(
        tmp_path, {"/globex": lambda: body, "/stuck": stuck},
        max_connections=1, connection_deadline=0.5,
    )  # fmt: skip
    try:
        for n in (1, 2):
            conn = context.wrap_socket(
                socket.create_connection(("127.0.0.1", server.port)), server_hostname="127.0.0.1"
            )
            conn.sendall(b"GET /stuck HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            assert entered.acquire(timeout=30)  # its thread waits in the route
            assert _closed_by_server(conn)
            conn.close()
            assert (server.server.cut, server.server.active, server.server.finishing) == (n, 0, n)
        over = socket.create_connection(("127.0.0.1", server.port))
        assert _closed_by_server(over)
        over.close()
        assert server.server.refused == 1
        release.set()
        deadline = time.monotonic() + 30  # a hang guard: the threads end once the route returns
        while server.server.finishing and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.server.finishing == 0
        assert _get(server, context) == body
    finally:
        release.set()
        server.stop()
