"""The PKI store: layout, Istio plug-in files, idempotency, corrupt and mismatched state."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshfed.pki import MeshTrustRequest, PKIMaterial, PKIStore, TrustRequest
from meshfed.pki.certs import cert_to_pem, certs_to_pem, load_certs_pem, spiffe_ids
from meshfed.pki.errors import PKIError
from meshfed.pki.keys import KeyAlgorithm, generate_key, key_to_pem, load_key_pem
from meshfed.pki.verify import openssl_verify, verify_chain

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
has_openssl = shutil.which("openssl") is not None


def request(
    mode: str = "SharedRoot",
    alg: KeyAlgorithm = "ECDSA_P256",
    meshes: tuple[tuple[str, str], ...] = (("east", "east.test"), ("west", "west.test")),
    peerings: tuple[tuple[str, str], ...] = (),
    federation: str = "fed",
) -> TrustRequest:
    return TrustRequest(
        federation=federation,
        mode=mode,  # type: ignore[arg-type]
        key_algorithm=alg,
        root_ttl=timedelta(days=3650),
        intermediate_ttl=timedelta(days=365),
        meshes=tuple(MeshTrustRequest(m, td) for m, td in meshes),
        peerings=peerings,
    )


FEDERATED = request(
    "Federated",
    meshes=(("east", "east.test"), ("west", "west.test"), ("north", "north.test")),
    peerings=(("east", "west"), ("west", "east"), ("north", "east")),
)


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every file and directory under root: content, mtime_ns, mode."""
    out: dict[str, tuple[bytes | None, int, int]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if p.is_file() else None
        out[str(p.relative_to(root))] = (data, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


def mode_of(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def leaf_for(material: PKIMaterial, mesh: str, now: datetime = NOW) -> tuple[x509.Certificate, str]:
    ca = material.meshes[mesh]
    spiffe_id = f"spiffe://{ca.trust_domain}/ns/default/sa/app"
    _, leaf = ca.issue(spiffe_id, timedelta(hours=1), now)
    return leaf, spiffe_id


# --- SharedRoot ----------------------------------------------------------------------------------


def test_shared_root_layout_and_istio_files(tmp_path: Path) -> None:
    store = PKIStore(tmp_path)
    material = store.ensure(request(), now=NOW)
    pki = tmp_path / "pki"
    root_cert = load_certs_pem((pki / "root/root-cert.pem").read_bytes(), "root")[0]
    assert material.mode == "SharedRoot"
    assert material.roots == {"root": root_cert}
    assert set(material.meshes) == {"east", "west"}
    assert not (pki / "east/root").exists() and not (pki / "east/peers").exists()
    for mesh, td in [("east", "east.test"), ("west", "west.test")]:
        d = pki / mesh
        ca_cert = load_certs_pem((d / "ca-cert.pem").read_bytes(), "ca")
        assert len(ca_cert) == 1
        assert (d / "root-cert.pem").read_bytes() == cert_to_pem(root_cert)
        assert load_certs_pem((d / "cert-chain.pem").read_bytes(), "chain") == [
            ca_cert[0],
            root_cert,
        ]
        key = load_key_pem((d / "ca-key.pem").read_bytes(), "key")
        assert key.public_key() == ca_cert[0].public_key()
        ca_cert[0].verify_directly_issued_by(root_cert)
        ca = material.meshes[mesh]
        assert (ca.mesh, ca.trust_domain, ca.root_name) == (mesh, td, "root")
        assert ca.ca_cert == ca_cert[0] and ca.root_cert == root_cert
        assert ca.chain == [ca_cert[0], root_cert]
        assert ca.peer_roots == {}
        nc = ca.ca_cert.extensions.get_extension_for_class(x509.NameConstraints)
        assert nc.critical and nc.value.permitted_subtrees == [x509.UniformResourceIdentifier(td)]
    # Leaves of every mesh chain to the one root.
    for mesh in material.meshes:
        leaf, spiffe_id = leaf_for(material, mesh)
        verify_chain(leaf, [material.meshes[mesh].ca_cert], [root_cert], NOW, spiffe_id=spiffe_id)


def test_permissions(tmp_path: Path) -> None:
    PKIStore(tmp_path).ensure(FEDERATED, now=NOW)
    PKIStore(tmp_path / "s").ensure(request(), now=NOW)
    keys = list(tmp_path.rglob("*-key.pem"))
    assert len(keys) == 3 * 2 + 3  # Federated: root + ca per mesh; SharedRoot: root + 2 ca
    for key in keys:
        assert mode_of(key) == 0o600, key
    for d in [p for p in tmp_path.rglob("*") if p.is_dir()]:
        if d != tmp_path / "s":
            assert mode_of(d) == 0o700, d
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_key_file_mode_independent_of_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        PKIStore(tmp_path).ensure(request(), now=NOW)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "pki/root/root-key.pem") == 0o600
    assert mode_of(tmp_path / "pki/east/ca-key.pem") == 0o600
    assert mode_of(tmp_path / "pki/east") == 0o700


@pytest.mark.parametrize("req", [request(), FEDERATED], ids=["SharedRoot", "Federated"])
def test_idempotent(tmp_path: Path, req: TrustRequest) -> None:
    store = PKIStore(tmp_path)
    first = store.ensure(req, now=NOW)
    before = snapshot(tmp_path)
    second = store.ensure(req, now=LATER)
    assert snapshot(tmp_path) == before
    assert second.roots == first.roots
    for mesh, ca in first.meshes.items():
        other = second.meshes[mesh]
        assert other.ca_cert == ca.ca_cert and other.chain == ca.chain
        assert other.peer_roots == ca.peer_roots
        assert key_to_pem(other.ca_key) == key_to_pem(ca.ca_key)
    assert PKIStore(tmp_path).load(req, now=LATER).roots == first.roots
    assert snapshot(tmp_path) == before


def test_new_mesh_gets_material_others_untouched(tmp_path: Path) -> None:
    store = PKIStore(tmp_path)
    store.ensure(request(), now=NOW)
    before = snapshot(tmp_path)
    bigger = request(meshes=(("east", "east.test"), ("west", "west.test"), ("south", "south.test")))
    material = store.ensure(bigger, now=LATER)
    after = snapshot(tmp_path)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {
        "pki/state.json",
        "pki",  # a new entry in the directory
        "pki/south",
        "pki/south/ca-cert.pem",
        "pki/south/ca-key.pem",
        "pki/south/root-cert.pem",
        "pki/south/cert-chain.pem",
    }
    leaf, sid = leaf_for(material, "south", LATER)
    verify_chain(leaf, [material.meshes["south"].ca_cert], [material.roots["root"]], LATER, sid)
    # A mesh dropped from the spec keeps its files.
    store.ensure(request(meshes=(("east", "east.test"),)), now=LATER)
    assert (tmp_path / "pki/west/ca-key.pem").exists()


def test_load_requires_existing_state(tmp_path: Path) -> None:
    store = PKIStore(tmp_path)
    with pytest.raises(PKIError, match="no PKI state"):
        store.load(request())
    store.ensure(request(), now=NOW)
    with pytest.raises(PKIError, match=r"pki/south/ca-cert\.pem: CA of mesh south is missing"):
        store.load(request(meshes=(("east", "east.test"), ("south", "south.test"))), now=NOW)
    (tmp_path / "pki/east/cert-chain.pem").unlink()
    with pytest.raises(PKIError, match=r"east/cert-chain\.pem: is missing"):
        store.load(request(), now=NOW)
    store.ensure(request(), now=NOW)  # derived files are rewritten from the checked material
    store.load(request(), now=NOW)


# --- Federated -----------------------------------------------------------------------------------


def test_federated_layout_and_peers(tmp_path: Path) -> None:
    material = PKIStore(tmp_path).ensure(FEDERATED, now=NOW)
    pki = tmp_path / "pki"
    assert not (pki / "root").exists()
    assert set(material.roots) == {"east", "west", "north"}
    assert len({r.fingerprint(hashes.SHA256()) for r in material.roots.values()}) == 3
    for mesh, ca in material.meshes.items():
        d = pki / mesh
        root = load_certs_pem((d / "root/root-cert.pem").read_bytes(), "r")[0]
        assert root == material.roots[mesh] == ca.root_cert and ca.root_name == mesh
        assert (d / "root-cert.pem").read_bytes() == cert_to_pem(root)
        assert load_certs_pem((d / "cert-chain.pem").read_bytes(), "c") == [ca.ca_cert, root]
        assert mode_of(d / "root/root-key.pem") == 0o600
        leaf, sid = leaf_for(material, mesh)
        verify_chain(leaf, [ca.ca_cert], [root], NOW, spiffe_id=sid)
        others = [r for n, r in material.roots.items() if n != mesh]
        with pytest.raises(PKIError):
            verify_chain(leaf, [ca.ca_cert], others, NOW)
    peers = sorted(str(p.relative_to(pki)) for p in pki.glob("*/peers/*"))
    assert peers == ["east/peers/west.pem", "north/peers/east.pem", "west/peers/east.pem"]
    assert (pki / "north/peers/east.pem").read_bytes() == cert_to_pem(material.roots["east"])
    assert material.meshes["north"].peer_roots == {"east": material.roots["east"]}
    assert material.meshes["east"].peer_roots == {"west": material.roots["west"]}
    # A new peering adds a bundle; a dropped one is neither removed nor loaded.
    more = dataclasses.replace(FEDERATED, peerings=(("east", "north"),))
    m2 = PKIStore(tmp_path).ensure(more, now=LATER)
    assert (pki / "east/peers/north.pem").read_bytes() == cert_to_pem(material.roots["north"])
    assert (pki / "east/peers/west.pem").exists()
    assert m2.meshes["east"].peer_roots == {"north": material.roots["north"]}


def test_federated_peer_bundle_mismatch(tmp_path: Path) -> None:
    store = PKIStore(tmp_path)
    material = store.ensure(FEDERATED, now=NOW)
    bundle = tmp_path / "pki/east/peers/west.pem"
    bundle.write_bytes(cert_to_pem(material.roots["north"]))
    with pytest.raises(
        PKIError, match=r"east/peers/west\.pem: is not the current root of mesh west"
    ):
        store.ensure(FEDERATED, now=NOW)


# --- leaves per algorithm ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ECDSA_P256", "RSA_2048", "RSA_4096"])  # RSA_4096: only here
def test_leaf_chain_per_algorithm(tmp_path: Path, alg: KeyAlgorithm) -> None:
    req = request(alg=alg, meshes=(("east", "east.test"),))
    material = PKIStore(tmp_path).ensure(req, now=NOW)
    ca = material.meshes["east"]
    key, leaf = ca.issue("spiffe://east.test/ns/a/sa/b", timedelta(hours=1), NOW, ["b.example"])
    assert key.key_size == {"ECDSA_P256": 256, "RSA_2048": 2048, "RSA_4096": 4096}[alg]
    assert spiffe_ids(leaf) == ["spiffe://east.test/ns/a/sa/b"]
    verify_chain(leaf, [ca.ca_cert], [ca.root_cert], NOW, spiffe_id="spiffe://east.test/ns/a/sa/b")
    if has_openssl:
        openssl_verify(leaf, [ca.ca_cert], [ca.root_cert], NOW, "spiffe://east.test/ns/a/sa/b")
    with pytest.raises(ValueError, match=r"not in trust domain east\.test"):
        ca.issue("spiffe://west.test/ns/a/sa/b", timedelta(hours=1), NOW)


# --- name constraints through the store ----------------------------------------------------------


def test_mesh_intermediate_cannot_issue_for_other_mesh(tmp_path: Path) -> None:
    from meshfed.pki.certs import issue_leaf

    material = PKIStore(tmp_path).ensure(request(), now=NOW)
    east, root = material.meshes["east"], material.roots["root"]
    key = generate_key("ECDSA_P256")
    forged = issue_leaf(
        "spiffe://west.test/ns/a/sa/b", key, east.ca_cert, east.ca_key, timedelta(hours=1), NOW
    )
    with pytest.raises(PKIError, match="name constraint violated"):
        verify_chain(forged, [east.ca_cert], [root], NOW)
    if has_openssl:
        with pytest.raises(PKIError, match="permitted subtree violation"):
            openssl_verify(forged, [east.ca_cert], [root], NOW)


# --- corrupt or mismatched state -----------------------------------------------------------------


@pytest.fixture
def shared(tmp_path: Path) -> tuple[PKIStore, dict[str, tuple[bytes | None, int, int]]]:
    store = PKIStore(tmp_path)
    store.ensure(request(), now=NOW)
    return store, snapshot(tmp_path)


def expect_error(store: PKIStore, req: TrustRequest, pattern: str) -> PKIError:
    before = snapshot(store.state_dir)
    with pytest.raises(PKIError, match=pattern) as err:
        store.ensure(req, now=LATER)
    assert snapshot(store.state_dir) == before, "nothing may be written on error"
    with pytest.raises(PKIError, match=pattern):
        store.load(req, now=LATER)
    assert "fix:" in str(err.value)
    return err.value


def test_garbage_ca_cert(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    (store.dir / "east/ca-cert.pem").write_bytes(b"garbage\n")
    err = expect_error(store, request(), r"pki/east/ca-cert\.pem: contains no PEM certificate")
    assert "remove" in str(err)


def test_truncated_key(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    path = store.dir / "east/ca-key.pem"
    path.write_bytes(path.read_bytes()[:100])
    err = expect_error(store, request(), r"pki/east/ca-key\.pem: not a readable")
    assert "PRIVATE KEY" not in str(err)


def test_key_not_matching_cert(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    (store.dir / "east/ca-key.pem").write_bytes((store.dir / "west/ca-key.pem").read_bytes())
    expect_error(store, request(), r"pki/east/ca-key\.pem: private key does not match")


def test_intermediate_not_signed_by_root(shared: tuple[PKIStore, object], tmp_path: Path) -> None:
    store, _ = shared
    other = PKIStore(tmp_path / "other")
    other.ensure(request(), now=NOW)
    for f in ["ca-cert.pem", "ca-key.pem"]:
        (store.dir / "east" / f).write_bytes((other.dir / "east" / f).read_bytes())
    expect_error(store, request(), r"pki/east/ca-cert\.pem: is not signed by the root")


def test_root_replaced(shared: tuple[PKIStore, object], tmp_path: Path) -> None:
    store, _ = shared
    other = PKIStore(tmp_path / "other")
    other.ensure(request(), now=NOW)
    for d in ["root", "east", "west"]:
        for f in (other.dir / d).iterdir():
            (store.dir / d / f.name).write_bytes(f.read_bytes())
    expect_error(store, request(), r"pki/root/root-cert\.pem: fingerprint .* differs")


def test_root_that_is_not_self_signed(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    for root, mesh in (("root-cert.pem", "ca-cert.pem"), ("root-key.pem", "ca-key.pem")):
        (store.dir / "root" / root).write_bytes((store.dir / "east" / mesh).read_bytes())
    expect_error(store, request(), r"pki/root/root-cert\.pem: is not a self-signed root")


def test_root_removed_while_meshes_exist(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    shutil.rmtree(store.dir / "root")
    expect_error(store, request(), r"pki/root/root-cert\.pem: is missing but mesh east has")


def test_trust_domain_changed(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    req = request(meshes=(("east", "east.example"), ("west", "west.test")))
    err = expect_error(store, req, r"state\.json: mesh east has trust domain 'east.test'")
    assert f"remove {store.dir / 'east'} to issue a new CA" in str(err)


def test_trust_domain_changed_detected_by_name_constraint(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    state = store.dir / "state.json"
    state.write_text(state.read_text().replace('"east.test"', '"east.example"'))
    req = request(meshes=(("east", "east.example"), ("west", "west.test")))
    expect_error(store, req, r"pki/east/ca-cert\.pem: is constrained to trust domain east\.test")


def test_mode_changed(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    err = expect_error(
        store, request("Federated"), r"state\.json: trust mode is 'SharedRoot' on disk"
    )
    assert "remove" in str(err)


def test_key_algorithm_changed(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    expect_error(store, request(alg="RSA_2048"), r"key algorithm is 'ECDSA_P256' on disk")


def test_federation_renamed(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    expect_error(store, request(federation="other"), r"federation name is 'fed' on disk")


def test_state_json_missing(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    (store.dir / "state.json").unlink()
    expect_error(store, request(), r"state\.json: is missing but east, root, west exist")


def test_partial_mesh_dir(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    (store.dir / "east/ca-key.pem").unlink()
    expect_error(store, request(), r"pki/east/ca-key\.pem: is missing although")


def test_derived_file_tampered(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    chain = store.dir / "west/cert-chain.pem"
    chain.write_bytes(certs_to_pem(list(reversed(load_certs_pem(chain.read_bytes(), "c")))))
    expect_error(store, request(), r"west/cert-chain\.pem: does not match")


def test_group_readable_key_rejected(shared: tuple[PKIStore, object]) -> None:
    store, _ = shared
    os.chmod(store.dir / "east/ca-key.pem", 0o640)
    expect_error(store, request(), r"east/ca-key\.pem: private key file is accessible")


def test_expired_intermediate(tmp_path: Path) -> None:
    store = PKIStore(tmp_path)
    store.ensure(request(), now=NOW)
    with pytest.raises(PKIError, match=r"east/ca-cert\.pem: expired at"):
        store.ensure(request(), now=NOW + timedelta(days=400))


def test_invalid_requests(tmp_path: Path) -> None:
    store = PKIStore(tmp_path)
    for bad in [
        request(meshes=(("root", "root.test"),)),
        request(meshes=(("East", "east.test"),)),
        request(meshes=(("a", "same.test"), ("b", "same.test"))),
        request(meshes=(("a", "a.test"),), peerings=(("a", "zzz"),)),
        request(meshes=(("a", "spiffe://a.test"),)),
    ]:
        with pytest.raises(ValueError):
            store.ensure(bad, now=NOW)
    assert not (tmp_path / "pki").exists() or not any((tmp_path / "pki").iterdir())


# --- no key material in output -------------------------------------------------------------------


def test_no_key_material_printed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    store = PKIStore(tmp_path)
    material = store.ensure(FEDERATED, now=NOW)
    store.ensure(FEDERATED, now=NOW)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    texts = [repr(material), str(material), repr(store), repr(material.meshes["east"])]
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert "ca_key" not in text
    assert "east.test" in repr(material)  # the repr is still useful
