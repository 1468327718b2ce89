"""Federation anchors and cross-certificates: what binds a partner root to its trust domain at an
Istio ingress gateway (whose ``ca.crt`` is a plain CA bundle).

Regression evidence, run against real verifiers:

- ``openssl verify`` (OpenSSL 3) and a real Envoy 1.40 (BoringSSL) listener with
  ``require_client_certificate`` and the DEFAULT certificate validator (as an Istio gateway with
  ``tls.mode: MUTUAL`` uses), trusting the anchor plus cross-certificates. The client sends its
  full chain: leaf, its mesh's intermediate and its self-signed root (as Istio sidecars do), so
  the verifier must prefer the trusted cross-certificate to the root the client sent.
- the same listener trusting the consumer roots themselves (what meshfed rendered before): the
  "rogue" chains (a consumer root signing an unconstrained intermediate) get through there.
- SharedRoot: an intermediate name-constrained to one trust domain cannot sign another's.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshfed.local import admin
from meshfed.pki.anchor import (
    ANCHOR_CERT,
    ANCHOR_KEY,
    CROSS_DIR,
    TrustedRoot,
    anchor_dir,
    ensure_anchor,
)
from meshfed.pki.certs import (
    anchor_name,
    cert_to_pem,
    certs_to_pem,
    cross_certify,
    fingerprint,
    is_cross_certificate,
    issue_leaf,
    load_certs_pem,
    make_intermediate_ca,
    make_root_ca,
    permitted_uri_domains,
)
from meshfed.pki.errors import PKIError
from meshfed.pki.keys import PrivateKey, generate_key, key_to_pem, load_key_pem
from meshfed.pki.verify import verify_chain
from meshfed.render.envoy.files import admin as envoy_admin
from meshfed.rotation.machine import Rotator
from meshfed.workspace import Workspace, open_workspace

from conftest import EXAMPLES, render_example

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
C1, C2 = "c1.test", "c2.test"
ENVOY = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
needs_envoy = pytest.mark.skipif(not os.access(ENVOY, os.X_OK), reason="no envoy binary")


def _key() -> PrivateKey:
    return generate_key("ECDSA_P256")


def _id(domain: str, case: str) -> str:
    return f"spiffe://{domain}/ns/{case}/sa/app"


def _leaf(
    uris: Sequence[str], issuer: x509.Certificate, issuer_key: PrivateKey
) -> tuple[PrivateKey, x509.Certificate]:
    """A client leaf with any URI SANs (issue_leaf allows one SPIFFE ID only, by design)."""
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfed")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


def _unconstrained_ca(
    subject: str, issuer: x509.Certificate, issuer_key: PrivateKey
) -> tuple[PrivateKey, x509.Certificate]:
    """What a consumer's root holder can always sign: an intermediate with no name constraint."""
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


@dataclass(frozen=True)
class Case:
    name: str
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    """What the client sends: leaf first, then its CAs (the self-signed root last)."""
    cross_ok: bool
    """Accepted when the verifier trusts the anchor and cross-certificates."""
    roots_ok: bool
    """Accepted when the verifier trusts the consumer roots themselves."""


@dataclass(frozen=True)
class World:
    anchor: x509.Certificate
    anchor_key: PrivateKey
    roots: tuple[x509.Certificate, ...]
    cross: tuple[x509.Certificate, ...]
    server_key: PrivateKey
    server: x509.Certificate
    cases: tuple[Case, ...]
    shared_root: x509.Certificate
    shared_cases: tuple[Case, ...]

    @property
    def cross_bundle(self) -> tuple[x509.Certificate, ...]:
        return (self.anchor, *self.cross)


@pytest.fixture(scope="module")
def world() -> World:
    anchor_key = _key()
    anchor = make_root_ca(anchor_name("e"), anchor_key, 365 * DAY, NOW)
    r1_key, r2_key = _key(), _key()
    r1 = make_root_ca("c1 root CA", r1_key, 365 * DAY, NOW)
    r2 = make_root_ca("c2 root CA", r2_key, 365 * DAY, NOW)
    i1_key = _key()
    i1 = make_intermediate_ca("c1", C1, i1_key, r1, r1_key, 30 * DAY, NOW)
    u1_key, u1 = _unconstrained_ca("c1 rogue CA", r1, r1_key)
    # A rogue intermediate named like c2's root: the verifier finds c2's cross-certificate by
    # name first, its signature does not match, and the path must go on through c1's.
    m1_key, m1 = _unconstrained_ca("c2 root CA", r1, r1_key)
    cross = (
        cross_certify(r1, [C1], anchor, anchor_key, NOW),
        cross_certify(r2, [C2], anchor, anchor_key, NOW),
    )
    server_key = _key()
    server = issue_leaf(
        "spiffe://e.test/ns/meshfed-system/sa/federation-ingress",
        server_key,
        anchor,
        anchor_key,
        DAY,
        NOW,
    )

    def case(
        name: str,
        domains: Sequence[str],
        cas: Sequence[x509.Certificate],
        key: PrivateKey,
        cross_ok: bool,
        roots_ok: bool,
    ) -> Case:
        leaf_key, leaf = _leaf([_id(d, name) for d in domains], cas[0], key)
        return Case(name, leaf_key, (leaf, *cas), cross_ok, roots_ok)

    cases = (
        case("good", [C1], [i1, r1], i1_key, True, True),
        case("good-no-root-sent", [C1], [i1], i1_key, True, True),
        case("c2-san", [C2], [i1, r1], i1_key, False, False),
        case("c1-then-c2-san", [C1, C2], [i1, r1], i1_key, False, False),
        case("rogue-c1", [C1], [u1, r1], u1_key, True, True),
        case("rogue-c2-san", [C2], [u1, r1], u1_key, False, True),
        case("rogue-c1-then-c2-san", [C1, C2], [u1, r1], u1_key, False, True),
        case("root-signs-c2-san", [C2], [r1], r1_key, False, True),
        case("mimic-c2-root", [C2], [m1, r1], m1_key, False, True),
    )
    # SharedRoot: one root, per mesh an intermediate constrained to its trust domain.
    shared_key = _key()
    shared = make_root_ca("shared root CA", shared_key, 365 * DAY, NOW)
    a_key = _key()
    a = make_intermediate_ca("a", "a.test", a_key, shared, shared_key, 30 * DAY, NOW)
    shared_cases = (
        case("shared-good", ["a.test"], [a, shared], a_key, True, True),
        case("shared-b-san", ["b.test"], [a, shared], a_key, False, False),
        case("shared-a-then-b-san", ["a.test", "b.test"], [a, shared], a_key, False, False),
    )
    return World(
        anchor, anchor_key, (r1, r2), cross, server_key, server, cases, shared, shared_cases
    )


CASES = [
    "good",
    "good-no-root-sent",
    "c2-san",
    "c1-then-c2-san",
    "rogue-c1",
    "rogue-c2-san",
    "rogue-c1-then-c2-san",
    "root-signs-c2-san",
    "mimic-c2-root",
]
SHARED_CASES = ["shared-good", "shared-b-san", "shared-a-then-b-san"]


def _case(world: World, name: str) -> Case:
    return next(c for c in (*world.cases, *world.shared_cases) if c.name == name)


# --- certificate contents ----------------------------------------------------------------------


def test_cross_certificate_contents(world: World) -> None:
    root, cross = world.roots[0], world.cross[0]
    assert cross.subject == root.subject and cross.issuer == world.anchor.subject
    assert cross.public_key() == root.public_key()
    assert cross != root and is_cross_certificate(cross) and not is_cross_certificate(root)
    cross.verify_directly_issued_by(world.anchor)
    ext = cross.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    nc = ext.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and nc.value.excluded_subtrees is None
    assert nc.value.permitted_subtrees == [x509.UniformResourceIdentifier(C1)]
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    anchor_ski = world.anchor.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == anchor_ski.digest
    assert cross.not_valid_after_utc <= root.not_valid_after_utc
    assert world.anchor.subject.rfc4514_string() == "CN=e federation anchor,O=meshfed"


def test_cross_certify_refuses_what_it_cannot_bind(world: World) -> None:
    root = world.roots[0]
    with pytest.raises(ValueError, match="at least one trust domain"):
        cross_certify(root, [], world.anchor, world.anchor_key, NOW)
    with pytest.raises(ValueError, match="invalid trust domain"):
        cross_certify(root, ["spiffe://c1.test"], world.anchor, world.anchor_key, NOW)
    with pytest.raises(ValueError, match="does not belong"):
        cross_certify(root, [C1], world.anchor, _key(), NOW)
    with pytest.raises(PKIError, match="expired"):
        cross_certify(root, [C1], world.anchor, world.anchor_key, NOW + 400 * DAY)
    # Several trust domains (a shared root behind one bundle): all permitted, nothing else.
    two = cross_certify(root, [C1, C2], world.anchor, world.anchor_key, NOW)
    assert permitted_uri_domains(two) == [C1, C2]


@pytest.mark.parametrize("name", CASES)
def test_in_process_verifier_agrees(world: World, name: str) -> None:
    """meshfed's own verifier: the anchor as the root, the cross-certificates as intermediates
    beside what the client sent (it tries every path, so the client's root gives no way out)."""
    case = _case(world, name)
    leaf, *cas = case.chain
    ok = True
    try:
        verify_chain(leaf, [*cas, *world.cross], [world.anchor], NOW)
    except PKIError:
        ok = False
    assert ok == case.cross_ok


def _uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


# --- openssl ---------------------------------------------------------------------------------


def _openssl(
    tmp: Path, case: Case, trusted: Sequence[x509.Certificate]
) -> subprocess.CompletedProcess[str]:
    (tmp / "ca.pem").write_bytes(certs_to_pem(trusted))
    (tmp / "leaf.pem").write_bytes(cert_to_pem(case.chain[0]))
    (tmp / "untrusted.pem").write_bytes(certs_to_pem(case.chain[1:]))
    args = ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-show_chain"]
    args += ["-CAfile", str(tmp / "ca.pem"), "-no-CApath", "-no-CAstore"]
    args += ["-untrusted", str(tmp / "untrusted.pem"), str(tmp / "leaf.pem")]
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)


@needs_openssl
@pytest.mark.parametrize("name", CASES)
def test_openssl_with_cross_certificates(world: World, tmp_path: Path, name: str) -> None:
    case = _case(world, name)
    proc = _openssl(tmp_path, case, world.cross_bundle)
    out = proc.stdout + proc.stderr
    if case.cross_ok:
        assert proc.returncode == 0, out
        # The path went through the trusted cross-certificate to the anchor, not to the
        # self-signed root the client sent.
        assert out.strip().splitlines()[-1].endswith("CN = e federation anchor"), out
    else:
        assert proc.returncode != 0
        assert "permitted subtree violation" in out, out


@needs_openssl
@pytest.mark.parametrize("name", CASES)
def test_openssl_with_plain_roots(world: World, tmp_path: Path, name: str) -> None:
    """What a plain CA bundle of consumer roots lets through (the documented hole)."""
    case = _case(world, name)
    proc = _openssl(tmp_path, case, world.roots)
    assert (proc.returncode == 0) == case.roots_ok, proc.stdout + proc.stderr


@needs_openssl
@pytest.mark.parametrize("name", SHARED_CASES)
def test_openssl_shared_root_intermediate_constraint(
    world: World, tmp_path: Path, name: str
) -> None:
    case = _case(world, name)
    proc = _openssl(tmp_path, case, [world.shared_root])
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == case.cross_ok, out
    if not case.cross_ok:
        assert "permitted subtree violation" in out, out


# --- Envoy (BoringSSL, default validator) --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Envoy:
    """One Envoy with a TLS listener per trust bundle, each answering 200 to a verified client."""

    def __init__(
        self,
        folder: Path,
        server: tuple[bytes, bytes],
        bundles: dict[str, bytes],
    ) -> None:
        self.dir = folder
        self.log = folder / "listener.log"
        (folder / "server.pem").write_bytes(server[0])
        (folder / "server.key").write_bytes(server[1])
        os.chmod(folder / "server.key", 0o600)
        self.ports: dict[str, int] = {}
        listeners = []
        for name, pem in bundles.items():
            (folder / f"{name}-ca.pem").write_bytes(pem)
            self.ports[name] = _free_port()
            listeners.append(self._listener(name, self.ports[name]))
        # The admin endpoint on a unix socket in the test's own directory (pytest's are 0700).
        self.admin = str(folder / "admin.sock")
        config = {
            "admin": envoy_admin(self.admin),
            "static_resources": {"listeners": listeners},
        }
        (folder / "envoy.json").write_text(json.dumps(config))
        self.stderr = open(folder / "envoy.err", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *(ENVOY, "-c", str(folder / "envoy.json"), "--concurrency", "1"),
                *("--file-flush-interval-msec", "20"),
                *("-l", "warning", "--disable-hot-restart"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError((folder / "envoy.err").read_text())
            if admin.ready(self.admin, timeout=1):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Envoy not ready: {(folder / 'envoy.err').read_text()}")
            time.sleep(0.05)

    def _listener(self, name: str, port: int) -> dict[str, Any]:
        tls = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(self.dir / "server.pem")},
                        "private_key": {"filename": str(self.dir / "server.key")},
                    }
                ],
                # The default validator, as an Istio gateway's MUTUAL credential gets it.
                "validation_context": {
                    "trusted_ca": {"filename": str(self.dir / f"{name}-ca.pem")}
                },
            },
        }
        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                        "Router"
                    },
                }
            ],
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "direct_response": {
                                    "status": 200,
                                    "body": {"inline_string": "verified"},
                                },
                            }
                        ],
                    }
                ]
            },
        }
        log_format = f"{name} %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_TRANSPORT_FAILURE_REASON%\n"
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                        "FileAccessLog",
                        "path": str(self.log),
                        "log_format": {"text_format_source": {"inline_string": log_format}},
                    },
                }
            ],
            "filter_chains": [
                {
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": tls,
                    },
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ],
                }
            ],
        }

    def call(
        self,
        listener: str,
        key: PrivateKey,
        chain: Sequence[x509.Certificate],
        tls13: bool = False,
    ) -> str | None:
        """The HTTP status line, or None if the handshake (or the connection) failed."""
        chain_path = self.dir / f"client-{fingerprint(chain[0])[:12]}.pem"
        key_path = chain_path.with_suffix(".key")
        chain_path.write_bytes(certs_to_pem(chain))
        key_path.write_bytes(key_to_pem(key))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if not tls13:  # TLS 1.2: a refused client certificate fails the handshake itself
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(chain_path, key_path)
        try:
            with (
                socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=5) as raw,
                ctx.wrap_socket(raw) as conn,
            ):
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                    data += chunk  # the status line is enough (no wait for Envoy's close)
        except (ssl.SSLError, ConnectionError, TimeoutError):
            return None
        return data.split(b"\r\n", 1)[0].decode() if data else None

    def failure_reason(self, listener: str, uri: str) -> str:
        """The listener log's transport failure reason for the connection of ``uri``."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.log.exists():
                for line in self.log.read_text().splitlines():
                    fields = line.split(" ", 2)
                    if fields[0] == listener and uri in fields[1].split(","):
                        return fields[2]
            time.sleep(0.02)
        raise AssertionError(f"no {listener} log line for {uri}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.stderr.close()


@pytest.fixture(scope="module")
def envoy(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    if not os.access(ENVOY, os.X_OK):
        pytest.skip("no envoy binary")
    proxy = Envoy(
        tmp_path_factory.mktemp("envoy-cross"),
        (cert_to_pem(world.server), key_to_pem(world.server_key)),
        {
            "cross": certs_to_pem(world.cross_bundle),
            "roots": certs_to_pem(world.roots),
            "shared": cert_to_pem(world.shared_root),
        },
    )
    try:
        yield proxy
    finally:
        proxy.stop()


@needs_envoy
@pytest.mark.parametrize("name", CASES)
def test_envoy_with_cross_certificates(world: World, envoy: Envoy, name: str) -> None:
    case = _case(world, name)
    status = envoy.call("cross", case.key, case.chain)
    if case.cross_ok:
        assert status == "HTTP/1.1 200 OK"
    else:
        assert status is None
        reason = envoy.failure_reason("cross", _uris(case.chain[0])[0])
        assert "CERTIFICATE_VERIFY_FAILED" in reason and "permitted_subtree_violation" in reason


@needs_envoy
@pytest.mark.parametrize("name", ["good", "rogue-c2-san", "rogue-c1-then-c2-san"])
def test_envoy_with_cross_certificates_tls13(world: World, envoy: Envoy, name: str) -> None:
    case = _case(world, name)
    status = envoy.call("cross", case.key, case.chain, tls13=True)
    assert (status == "HTTP/1.1 200 OK") == case.cross_ok
    assert (status is None) == (not case.cross_ok)


@needs_envoy
@pytest.mark.parametrize("name", CASES)
def test_envoy_with_plain_roots(world: World, envoy: Envoy, name: str) -> None:
    """The hole the cross-certificates close: a consumer root is trusted for any identity."""
    case = _case(world, name)
    status = envoy.call("roots", case.key, case.chain)
    assert (status == "HTTP/1.1 200 OK") == case.roots_ok


@needs_envoy
@pytest.mark.parametrize("name", SHARED_CASES)
def test_envoy_shared_root_intermediate_constraint(world: World, envoy: Envoy, name: str) -> None:
    case = _case(world, name)
    status = envoy.call("shared", case.key, case.chain)
    assert (status == "HTTP/1.1 200 OK") == case.cross_ok
    if not case.cross_ok:
        reason = envoy.failure_reason("shared", _uris(case.chain[0])[-1])
        assert "permitted_subtree_violation" in reason


# --- the PKI state -------------------------------------------------------------------------------


@pytest.fixture
def trusted(world: World) -> list[TrustedRoot]:
    return [TrustedRoot(world.roots[0], (C1,)), TrustedRoot(world.roots[1], (C2,))]


def test_anchor_is_created_once_and_kept_private(
    tmp_path: Path, trusted: list[TrustedRoot]
) -> None:
    first = ensure_anchor(tmp_path, "e", "ECDSA_P256", trusted, NOW)
    folder = anchor_dir(tmp_path, "e")
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert (folder / ANCHOR_KEY).stat().st_mode & 0o777 == 0o600
    assert load_key_pem((folder / ANCHOR_KEY).read_bytes(), "k").public_key() == (
        first.cert.public_key()
    )
    assert [c.subject for c in first.cross] == [t.root.subject for t in trusted]
    assert [permitted_uri_domains(c) for c in first.cross] == [[C1], [C2]]
    for cross in first.cross:
        cross.verify_directly_issued_by(first.cert)
    again = ensure_anchor(tmp_path, "e", "ECDSA_P256", trusted, NOW + DAY)
    assert again.cert == first.cert and again.cross == first.cross
    assert again.bundle_pem() == first.bundle_pem()
    assert load_certs_pem(first.bundle_pem(), "b") == [first.cert, *first.cross]
    # Not a mesh root: a separate key, in its own directory.
    assert first.cert.subject.rfc4514_string() == "CN=e federation anchor,O=meshfed"


def test_cross_certificates_follow_the_trusted_roots(
    tmp_path: Path, world: World, trusted: list[TrustedRoot]
) -> None:
    first = ensure_anchor(tmp_path, "e", "ECDSA_P256", trusted, NOW)
    cross_dir = anchor_dir(tmp_path, "e") / CROSS_DIR
    assert len(list(cross_dir.glob("*.pem"))) == 2
    # c1 rotates its root: both generations are trusted (and cross-certified) meanwhile.
    new_key = _key()
    new_root = make_root_ca("c1 root CA", new_key, 365 * DAY, NOW)
    overlap = [trusted[0], TrustedRoot(new_root, (C1,)), trusted[1]]
    during = ensure_anchor(tmp_path, "e", "ECDSA_P256", overlap, NOW)
    assert during.cert == first.cert
    assert during.cross[0] == first.cross[0] and during.cross[2] == first.cross[1]
    assert during.cross[1].public_key() == new_root.public_key()
    assert permitted_uri_domains(during.cross[1]) == [C1]
    # The old root retired: its cross-certificate goes.
    after = ensure_anchor(tmp_path, "e", "ECDSA_P256", overlap[1:], NOW)
    assert after.cross == during.cross[1:]
    assert len(list(cross_dir.glob("*.pem"))) == 2
    # A changed trust domain re-issues the cross-certificate.
    moved = ensure_anchor(tmp_path, "e", "ECDSA_P256", [TrustedRoot(new_root, ("c9.test",))], NOW)
    assert permitted_uri_domains(moved.cross[0]) == ["c9.test"]
    assert len(list(cross_dir.glob("*.pem"))) == 1


def test_a_due_anchor_is_replaced_whole(tmp_path: Path, trusted: list[TrustedRoot]) -> None:
    first = ensure_anchor(tmp_path, "e", "ECDSA_P256", trusted, NOW, ttl=30 * DAY)
    later = ensure_anchor(tmp_path, "e", "ECDSA_P256", trusted, NOW + 25 * DAY)
    assert later.cert != first.cert
    for cross in later.cross:
        cross.verify_directly_issued_by(later.cert)


@pytest.mark.parametrize("damage", ["garbage-cert", "other-key", "readable-key", "no-key"])
def test_damaged_anchor_is_refused(tmp_path: Path, trusted: list[TrustedRoot], damage: str) -> None:
    ensure_anchor(tmp_path, "e", "ECDSA_P256", trusted, NOW)
    folder = anchor_dir(tmp_path, "e")
    key_path, cert_path = folder / ANCHOR_KEY, folder / ANCHOR_CERT
    if damage == "garbage-cert":
        cert_path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    elif damage == "other-key":
        key_path.write_bytes(key_to_pem(_key()))
    elif damage == "readable-key":
        key_path.chmod(0o644)
    else:
        key_path.unlink()
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(PKIError) as err:
        ensure_anchor(tmp_path, "e", "ECDSA_P256", trusted, NOW)
    assert ("chmod 600" if damage == "readable-key" else "remove") in str(err.value)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


# --- rendered credentials, and Envoy driven by them ----------------------------------------------


def _secret(doc: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(doc["data"][key])


def _credential(out: Path, mesh: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (out / mesh / "secrets" / "ingress-credential.yaml").read_text()
    )
    return doc


def test_rendered_ingress_ca_holds_no_consumer_root(tmp_path: Path) -> None:
    rendered = render_example("partners", tmp_path)
    pki = rendered.workspace.pki
    roots = {fingerprint(r) for rs in pki.trust_anchors.values() for r in rs}
    for mesh in rendered.workspace.plan.meshes:
        doc = _credential(rendered.out, mesh.name)
        if not mesh.ingress.trusted:
            assert "ca.crt" not in doc["data"]
            continue
        anchor, *cross = load_certs_pem(_secret(doc, "ca.crt"), "ca.crt")
        assert not roots & {fingerprint(c) for c in [anchor, *cross]}
        assert anchor.subject.rfc4514_string() == f"CN={mesh.name} federation anchor,O=meshfed"
        expected = {b.name: b.trust_domains for b in mesh.ingress.trusted}
        assert {c.subject: permitted_uri_domains(c) for c in cross} == {
            pki.roots[name].subject: list(domains) for name, domains in expected.items()
        }
        for c in cross:
            assert is_cross_certificate(c)
            c.verify_directly_issued_by(anchor)
    # Rendering again changes nothing (kept anchor and cross-certificates).
    before = {p: p.read_bytes() for p in rendered.out.rglob("*.yaml")}
    again = render_example("partners", tmp_path)
    assert {p: p.read_bytes() for p in again.out.rglob("*.yaml")} == before


@needs_envoy
def test_envoy_with_the_rendered_ingress_credential(tmp_path: Path) -> None:
    """globex's rendered credential (tls.crt, tls.key, ca.crt) on the default validator: acme's
    workloads get in; acme's root cannot vouch for anyone outside acme.example."""
    rendered = render_example("partners", tmp_path)
    doc = _credential(rendered.out, "globex")
    ws = rendered.workspace
    acme = ws.pki.meshes["acme"]
    root_key = load_key_pem(
        (ws.state_dir / "pki" / "acme" / "root" / "root-key.pem").read_bytes(), "acme root key"
    )
    good_key, good = acme.issue("spiffe://acme.example/ns/checkout/sa/storefront", DAY, NOW)
    rogue_ca_key, rogue_ca = _unconstrained_ca("acme rogue CA", acme.root_cert, root_key)
    forged = [
        _leaf(uris, rogue_ca, rogue_ca_key)
        for uris in (
            ["spiffe://initech.example/ns/logistics/sa/tracker"],
            [
                "spiffe://acme.example/ns/checkout/sa/storefront",
                "spiffe://globex.example/ns/billing/sa/charge",
            ],
        )
    ]
    (tmp_path / "envoy").mkdir()
    proxy = Envoy(
        tmp_path / "envoy",
        (_secret(doc, "tls.crt"), _secret(doc, "tls.key")),
        {"rendered": _secret(doc, "ca.crt"), "roots": cert_to_pem(acme.root_cert)},
    )
    try:
        assert proxy.call("rendered", good_key, [good, acme.ca_cert, acme.root_cert]) == (
            "HTTP/1.1 200 OK"
        )
        assert proxy.call("rendered", good_key, [good, acme.ca_cert]) == "HTTP/1.1 200 OK"
        for key, leaf in forged:
            chain = [leaf, rogue_ca, acme.root_cert]
            assert proxy.call("rendered", key, chain) is None
            reason = proxy.failure_reason("rendered", _uris(leaf)[-1])
            assert "permitted_subtree_violation" in reason
            # What a plain bundle of acme's root (meshfed before) let through:
            assert proxy.call("roots", key, chain) == "HTTP/1.1 200 OK"
    finally:
        proxy.stop()


def _render_secrets(ws: Workspace, mesh: str) -> dict[str, Any]:
    files: dict[str, Any] = ws.istio_mesh(mesh).secret_files
    return files


def test_consumer_root_rotation_cross_certifies_both_generations(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spec = EXAMPLES / "partners.yaml"
    before = open_workspace(spec, state)
    old = before.pki.roots["acme"]

    def ingress_ca() -> list[x509.Certificate]:
        secrets = _render_secrets(open_workspace(spec, state), "globex")
        return load_certs_pem(_secret(secrets["ingress-credential.yaml"][0], "ca.crt"), "ca")

    anchor, cross = ingress_ca()
    rotator = Rotator(state, spec)
    record = rotator.start("root", "acme")
    rotator.run(record, until="trust")
    new = rotator.store.generation_root(record, "new")
    during = ingress_ca()
    assert during[0] == anchor and during[1] == cross
    assert [c.public_key() for c in during[1:]] == [old.public_key(), new.public_key()]
    assert all(permitted_uri_domains(c) == ["acme.example"] for c in during[1:])
    assert rotator.run(record).finished
    after = ingress_ca()
    assert after[0] == anchor and [c.public_key() for c in after[1:]] == [new.public_key()]


def test_audit_accepts_cross_certificates_only_for_federation_domains(tmp_path: Path) -> None:
    from meshfed.audit import audit_manifests
    from meshfed.audit.model import Severity

    rendered = render_example("partners", tmp_path)
    assert not audit_manifests(rendered.out).at_or_above(Severity.HIGH)
    # A cross-certificate for a trust domain outside the federation is a finding.
    folder = anchor_dir(rendered.workspace.state_dir, "globex")
    anchor_key = load_key_pem((folder / ANCHOR_KEY).read_bytes(), "anchor key")
    path = rendered.out / "globex" / "secrets" / "ingress-credential.yaml"
    doc = yaml.safe_load(path.read_text())
    anchor, _ = load_certs_pem(_secret(doc, "ca.crt"), "ca.crt")
    acme = rendered.workspace.pki.roots["acme"]
    evil = cross_certify(acme, ["evil.example"], anchor, anchor_key, NOW)
    doc["data"]["ca.crt"] = base64.b64encode(certs_to_pem([anchor, evil])).decode()
    path.write_text(yaml.safe_dump(doc))
    found = [
        f
        for f in audit_manifests(rendered.out).at_or_above(Severity.HIGH)
        if f.check == "intermediate-name-constraints"
    ]
    assert len(found) == 1 and "evil.example" in found[0].message
