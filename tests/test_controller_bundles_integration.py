"""The controller follows a partner's SPIFFE bundle endpoint, on real kube-apiservers.

``MESHFED_TEST_KUBECONFIG`` as for ``test_controller_integration.py`` (whose helpers this
uses); only its first cluster is used: the management cluster, and acme's cluster. The
partner, globex, is a real HTTPS bundle endpoint on loopback (``bundles.server``, https_spiffe,
an X509-SVID from globex's own PKI) run by the test, which changes what it serves:

- globex rotates (adds a root, sequence 2): acme's ingress ``ca.crt`` on the cluster gains a
  cross-certificate of the new root, and the status says sequence 2;
- garbage, then a replayed older bundle: the ``PeerBundles`` condition names globex and the
  reason, an Event says so, and the last good bundle stays in force (``ca.crt`` unchanged);
- a good bundle again: the condition recovers.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from meshfed.bundles import document
from meshfed.bundles.errors import BundleError
from meshfed.bundles.fetch import fetch_document
from meshfed.bundles.model import Endpoint, SpiffeBundle
from meshfed.bundles.server import SvidTls
from meshfed.pki.certs import fingerprint, make_root_ca, same_public_key
from meshfed.pki.keys import generate_key
from test_bundles_endpoint import ENDPOINT_ID, Served, pki, roots_of
from test_controller_integration import (
    FED_API,
    KUBECONFIG,
    MESHFED,
    NS,
    ROOT,
    Controllers,
    _contexts,
    _service_account_kubeconfig,
    prepared_clients,
    wait,
)

FED = "ftest"
pytestmark = pytest.mark.skipif(
    not KUBECONFIG,
    reason="MESHFED_TEST_KUBECONFIG is not set: following a partner's bundle through the "
    "controller needs a real Kubernetes API server (see test_controller_integration.py); the "
    "follower's decisions are tested in test_controller_follow.py",
)
Obj = dict[str, Any]


class Partner:
    """globex's bundle endpoint: what it serves is set by the test."""

    def __init__(self, state: Path) -> None:
        self.store = pki(state)
        self.roots: tuple[x509.Certificate, ...] = roots_of(self.store)
        self.sequence = 1
        self.raw: bytes | None = None
        self.lock = threading.Lock()
        self.served = Served(
            self.body, SvidTls(ENDPOINT_ID, lambda: self.store.signing_ca("globex"))
        )

    def body(self) -> bytes:
        with self.lock:
            if self.raw is not None:
                return self.raw
            bundle = SpiffeBundle("globex.example", self.roots, self.sequence, 1)
            return document.encode(bundle)

    def serve(self, roots: tuple[x509.Certificate, ...], sequence: int) -> None:
        with self.lock:
            self.roots, self.sequence, self.raw = roots, sequence, None

    def serve_raw(self, raw: bytes) -> None:
        with self.lock:
            self.raw = raw


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spec(context: str, partner: Partner, bootstrap: Path, port: int) -> Obj:
    doc = yaml.safe_load((ROOT / "src/meshfed/examples/acme.yaml").read_text())
    doc["metadata"]["name"] = FED
    meshes = {m["name"]: m for m in doc["spec"]["meshes"]}
    meshes["acme"]["kubernetes"] = {"context": context}
    meshes["acme"]["bundleEndpoint"]["url"] = f"https://127.0.0.1:{port}/acme"
    # 5 s: the root rotation's switch then waits 3 x 5 s + one look (5 s) after the overlap is
    # published, longer than a rotation step takes on a loaded machine.
    meshes["acme"]["bundleEndpoint"]["refreshHint"] = "5s"
    endpoint = meshes["globex"]["bundleEndpoint"]
    endpoint["url"] = partner.served.url
    endpoint["bootstrapBundle"] = str(bootstrap)
    return dict(doc)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    context = _contexts()[0]
    base = tmp_path_factory.mktemp("follow")
    client = prepared_clients([context], ("istio-system", "checkout", "orders"))[context]
    install = [MESHFED, "controller", "install", "--kubeconfig", KUBECONFIG, "--context", context,
               "--target-context", context]  # fmt: skip
    done = subprocess.run(install, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    manifests = subprocess.run(
        [MESHFED, "controller", "manifests"], capture_output=True, text=True, check=True
    )
    crd = next(
        d
        for d in yaml.safe_load_all(manifests.stdout)
        if d and d["kind"] == "CustomResourceDefinition"
    )
    client.apply(crd, force=True)

    def served() -> bool:
        client.rediscover()
        return client.find(FED_API, "Federation") is not None

    wait("the Federation CRD", served, 30)
    state = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"meshfed-state-{FED}"}}
    state["metadata"]["namespace"] = NS
    client.delete(state)  # a run before this one kept another globex's bundle there
    partner = Partner(base / "globex-state")
    bootstrap = base / "globex-bundle.json"
    bootstrap.write_bytes(partner.body())
    controllers = Controllers(_service_account_kubeconfig(context, base), base)
    port = _free_port()
    env = {"client": client, "partner": partner, "ctl": controllers, "base": base, "port": port}
    try:
        controllers.start("follower", "--bundle-listen", f"127.0.0.1:{port}")
        client.apply(_spec(context, partner, bootstrap, port), force=True)
        yield env
    finally:
        if client.get(FED_API, "Federation", FED) is not None:
            client.delete({"apiVersion": FED_API, "kind": "Federation", "metadata": {"name": FED}})
            with contextlib.suppress(AssertionError):
                wait(
                    "the Federation deleted", lambda: client.get(FED_API, "Federation", FED) is None
                )
        controllers.stop_all()
        partner.served.server.stop()
        client.close()


def federation(env: dict[str, Any]) -> Obj:
    return env["client"].get(FED_API, "Federation", FED) or {}


def condition(env: dict[str, Any], kind: str) -> Obj:
    for cond in (federation(env).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def peer_sequence(env: dict[str, Any]) -> int | None:
    for entry in (federation(env).get("status") or {}).get("peerBundles") or []:
        if entry.get("peer") == "globex":
            return entry.get("sequence")
    return None


def events(env: dict[str, Any], reason: str) -> list[str]:
    found = env["client"].list("v1", "Event", namespace=NS)
    return [
        e.get("message", "")
        for e in found
        if e.get("reason") == reason and (e.get("involvedObject") or {}).get("name") == FED
    ]


def ca_crt_data(env: dict[str, Any]) -> str:
    secret = env["client"].get("v1", "Secret", "federation-ingress-credential", NS)
    return str(((secret or {}).get("data") or {}).get("ca.crt") or "")


def ca_crt(env: dict[str, Any]) -> list[x509.Certificate]:
    data = ca_crt_data(env)
    return x509.load_pem_x509_certificates(base64.b64decode(data)) if data else []


def cross_certified(env: dict[str, Any], root: x509.Certificate) -> bool:
    """acme's ingress trusts ``root`` (through a cross-certificate of its key)."""
    return any(same_public_key(c, root) for c in ca_crt(env))


def test_the_partners_bundle_is_followed_into_the_cluster(env: dict[str, Any]) -> None:
    partner: Partner = env["partner"]
    first = partner.roots[0]
    wait("Ready", lambda: condition(env, "Ready").get("status") == "True", 120)
    assert cross_certified(env, first)
    assert condition(env, "PeerBundles")["status"] == "True"
    assert peer_sequence(env) == 1
    # globex rotates: the new root beside the old, sequence 2.
    key = generate_key("ECDSA_P256")
    new_root = make_root_ca("globex new root", key, timedelta(days=30), datetime.now(UTC))
    partner.serve((first, new_root), 2)
    wait("the new root cross-certified on the cluster", lambda: cross_certified(env, new_root), 60)
    assert cross_certified(env, first)
    wait("sequence 2 in the status", lambda: peer_sequence(env) == 2, 30)
    assert any("sequence 2" in m for m in events(env, "BundleAccepted"))
    env["rotated"] = (first, new_root)


def test_a_bad_bundle_leaves_the_last_good_one_and_names_the_peer(env: dict[str, Any]) -> None:
    partner: Partner = env["partner"]
    first, new_root = env.get("rotated") or pytest.skip("needs the rotation test first")
    before = ca_crt_data(env)
    partner.serve_raw(b"<html>not a bundle</html>")

    def refused() -> bool:
        cond = condition(env, "PeerBundles")
        return cond.get("status") == "False" and "globex" in cond.get("message", "")

    wait("PeerBundles False naming globex", refused, 60)
    assert any("globex" in m for m in events(env, "BundleRefused"))
    assert peer_sequence(env) == 2
    # A replayed older bundle (sequence 1, the old root alone) is refused too.
    partner.serve((first,), 1)
    wait(
        "the replay refused",
        lambda: "older" in condition(env, "PeerBundles").get("message", ""),
        60,
    )
    assert cross_certified(env, new_root) and cross_certified(env, first)
    assert ca_crt_data(env) == before  # nothing else changed
    # Good again (sequence 3, the old root retired): followed, condition recovers.
    partner.serve((new_root,), 3)
    wait("PeerBundles True", lambda: condition(env, "PeerBundles").get("status") == "True", 60)
    wait("the retired root gone from ca.crt", lambda: not cross_certified(env, first), 60)
    assert cross_certified(env, new_root)
    assert peer_sequence(env) == 3


ACME_ID = "spiffe://acme.example/meshfed/bundle-endpoint"


def cacerts(env: dict[str, Any]) -> dict[str, list[x509.Certificate]]:
    secret = env["client"].get("v1", "Secret", "cacerts", "istio-system") or {}
    return {
        key: x509.load_pem_x509_certificates(base64.b64decode(value))
        for key, value in (secret.get("data") or {}).items()
        if key.endswith(".pem") and key != "ca-key.pem"
    }


def served_bundle(env: dict[str, Any], roots: list[x509.Certificate]) -> SpiffeBundle | None:
    """acme's bundle as a partner fetches it from the controller: https_spiffe, the endpoint's
    SVID checked against ``roots``."""
    endpoint = Endpoint(f"https://127.0.0.1:{env['port']}/acme", "https_spiffe", ACME_ID)
    try:
        raw, _ = fetch_document(endpoint, "acme", roots=roots, timeout=5.0)
    except BundleError:
        return None
    return document.parse(raw, "acme.example", datetime.now(UTC), "acme")


def fingerprints(certs: Sequence[x509.Certificate]) -> frozenset[str]:
    return frozenset(fingerprint(c) for c in certs)


def test_the_controller_serves_acmes_bundle_through_a_root_rotation(env: dict[str, Any]) -> None:
    """Every replica's endpoint serves the mesh's bundle; a root rotation started through the
    controller runs to completion, and at every moment seen: the cluster's intermediate chains
    to a root its cacerts trust, the bundle's sequence never goes backwards, the new root is
    published beside the old before the cluster signs with it, and the old one is dropped."""
    wait("Ready", lambda: condition(env, "Ready").get("status") == "True", 120)
    old_roots = wait("acme's cacerts", lambda: cacerts(env).get("root-cert.pem"), 60)
    first = wait("acme's bundle served", lambda: served_bundle(env, old_roots), 30)
    assert fingerprints(first.x509_authorities) == fingerprints(old_roots)
    assert first.sequence is not None and first.refresh_hint == 5
    asked = subprocess.run(
        [MESHFED, "controller", "rotate", FED, "root", "--mesh", "acme",
         "--kubeconfig", KUBECONFIG, "--context", _contexts()[0]],
        capture_output=True, text=True,
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    seen: list[tuple[frozenset[str], frozenset[str], frozenset[str], int]] = []
    trusted = list(old_roots)
    deadline = time.monotonic() + 240

    def finished() -> bool:
        annotations = (federation(env).get("metadata") or {}).get("annotations") or {}
        return "meshfed.dev/rotate" not in annotations

    held = False
    while True:
        done = finished()
        held = held or "partners following" in condition(env, "Progressing").get("message", "")
        files = cacerts(env)
        roots, chain = files.get("root-cert.pem", []), files.get("cert-chain.pem", [])
        trusted += [r for r in roots if fingerprint(r) not in fingerprints(trusted)]
        bundle = served_bundle(env, trusted)
        if bundle is not None and chain:
            signer = chain[-1]  # the root the intermediate chains to
            seen.append(
                (
                    fingerprints(roots),
                    frozenset({fingerprint(signer)}),
                    fingerprints(bundle.x509_authorities),
                    int(bundle.sequence or 0),
                )
            )
        if done:
            break
        assert time.monotonic() < deadline, "the rotation did not finish"
        time.sleep(0.2)
    wait("Ready after the rotation", lambda: condition(env, "Ready").get("status") == "True", 120)
    new_roots = wait(
        "the old root retired from acme's cacerts",
        lambda: (r := cacerts(env).get("root-cert.pem", [])) and len(r) == 1 and r,
        60,
    )
    assert fingerprints(new_roots).isdisjoint(fingerprints(old_roots))
    final = wait("the new bundle served", lambda: served_bundle(env, new_roots), 30)
    wait(
        "the old root dropped from the bundle",
        lambda: (
            (b := served_bundle(env, new_roots)) is not None
            and fingerprints(b.x509_authorities) == fingerprints(new_roots)
        ),
        30,
    )
    final = served_bundle(env, new_roots)
    assert final is not None and (final.sequence or 0) > (first.sequence or 0)
    sequences = [s[3] for s in seen]
    assert sequences == sorted(sequences), sequences
    for trusted_roots, signer, _published, _seq in seen:
        assert signer <= trusted_roots  # the cluster never signs with a root it does not trust
    both = fingerprints(old_roots) | fingerprints(new_roots)
    assert any(s[2] == both for s in seen), "the overlap (both roots) was never published"
    for _roots, signer, published_roots, _seq in seen:
        # A partner never sees a certificate of a root the bundle does not hold yet.
        assert signer <= published_roots, (signer, published_roots)
    assert held, "the switch never waited for the published overlap"
    assert {"prepare", "switch", "retire"} <= {m.split(":")[0] for m in events(env, "RotationStep")}
