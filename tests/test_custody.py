"""Split custody: CSRs made where a mesh is administered, signed where the root is kept,
imported back; the checks on what a CSR asks for; rotations in this mode."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshfed.examples import example_path
from meshfed.pki import PKIStore
from meshfed.pki.certs import fingerprint, permitted_uri_domains
from meshfed.pki.custody import check_csr, load_csr, make_csr
from meshfed.pki.errors import PKIError
from meshfed.pki.keys import PrivateKey, generate_key
from meshfed.pki.signing import (
    bundle_pem,
    import_certificate,
    request_intermediate,
    sign_request,
)
from meshfed.pki.verify import verify_chain
from meshfed.plan.trust import trust_request
from meshfed.rotation.machine import Rotator
from meshfed.spec.load import load_spec
from meshfed.workspace import open_workspace

BANK = example_path("bank")
NOW = datetime.now(UTC)
YEAR = timedelta(days=365)
CA_PATHLEN_0 = x509.BasicConstraints(ca=True, path_length=0)
DOMAINS = {"payments": "payments.bank.example", "web": "web.bank.example"}


def cli() -> click.Group:
    from meshfed.cli.main import main

    if "rotate" not in main.commands:
        from meshfed.cli.rotate import register

        register(main)
    return main


def _csr(
    key: PrivateKey,
    *,
    bc: x509.BasicConstraints | None = CA_PATHLEN_0,
    domains: list[str] = ["payments.bank.example"],  # noqa: B006 - never mutated
    san: list[x509.GeneralName] | None = None,
    extra: list[x509.ExtensionType] = [],  # noqa: B006 - never mutated
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything the requester likes")])
    )
    if bc is not None:
        builder = builder.add_extension(bc, critical=True)
    if domains:
        builder = builder.add_extension(
            x509.NameConstraints([x509.UniformResourceIdentifier(d) for d in domains], None),
            critical=True,
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA256())


def _check(csr: x509.CertificateSigningRequest, mesh: str | None = "payments") -> str:
    return check_csr(csr, "test.csr", DOMAINS, "ECDSA_P256", mesh).trust_domain


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_key("ECDSA_P256")


def test_the_csr_meshfed_makes_passes(key: PrivateKey) -> None:
    csr = make_csr("payments", "payments.bank.example", key)
    assert _check(csr) == "payments.bank.example"
    assert check_csr(csr, "x", DOMAINS, "ECDSA_P256").mesh == "payments"  # found by its domain


@pytest.mark.parametrize(
    ("kwargs", "mesh", "problem"),
    [
        ({"domains": ["web.bank.example"]}, "payments", "asks for trust domain web.bank.example"),
        ({"domains": ["evil.example"]}, None, "which is no mesh's under this root"),
        ({"domains": ["payments.bank.example", "web.bank.example"]}, None, "2 trust domains"),
        ({"domains": []}, None, "names no trust domain"),
        ({"bc": x509.BasicConstraints(ca=True, path_length=1)}, None, "asks for pathlen 1"),
        ({"bc": x509.BasicConstraints(ca=True, path_length=None)}, None, "unlimited path"),
        ({"bc": x509.BasicConstraints(ca=False, path_length=None)}, None, "CA:false"),
        (
            {"san": [x509.UniformResourceIdentifier("spiffe://web.bank.example")]},
            None,
            "2 trust domains",
        ),
        ({"san": [x509.DNSName("payments.bank.example")]}, None, "subject alternative name"),
        (
            {"extra": [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])]},
            None,
            "does not grant",
        ),
    ],
)
def test_csr_refusals(key: PrivateKey, kwargs: dict, mesh: str | None, problem: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(PKIError, match=problem):
        _check(_csr(key, **kwargs), mesh)


def test_csr_dns_constraint_wrong_key_and_bad_signature_are_refused(key: PrivateKey) -> None:
    dns = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.NameConstraints([x509.DNSName("example.com")], None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PKIError, match="DNSName name constraint"):
        _check(dns)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(PKIError, match="key algorithm is RSA_2048"):
        _check(make_csr("payments", "payments.bank.example", rsa_key))
    der = bytearray(
        make_csr("payments", "payments.bank.example", key).public_bytes(serialization.Encoding.DER)
    )
    der[-5] ^= 0x01  # inside the signature
    with pytest.raises(PKIError, match=r"signature does not verify|not a PEM or DER CSR"):
        _check(load_csr(bytes(der), "tampered"))


def _root_holder(tmp_path: Path) -> Path:
    root = tmp_path / "root-holder"
    PKIStore(root).ensure_roots(trust_request(load_spec(BANK)))
    return root


def test_signer_sets_every_extension_itself(tmp_path: Path, key: PrivateKey) -> None:
    root_dir = _root_holder(tmp_path)
    # Asks for nothing but a SAN naming the domain; gets pathlen 0 and the name constraint.
    bare = _csr(
        key,
        bc=None,
        domains=[],
        san=[x509.UniformResourceIdentifier("spiffe://payments.bank.example")],
    )
    pem = bare.public_bytes(serialization.Encoding.PEM)
    cert, root = sign_request(PKIStore(root_dir), pem, "bare.csr", YEAR, NOW)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert permitted_uri_domains(cert) == ["payments.bank.example"]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "payments intermediate CA" in cert.subject.rfc4514_string()
    cert.verify_directly_issued_by(root)
    # A root holder's directory holds no meshes: it refuses to act as a mesh's state.
    with pytest.raises(PKIError, match="holds only the root CA"):
        open_workspace(BANK, root_dir)


def test_split_custody_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    root_dir, mesh_dir = tmp_path / "root-holder", tmp_path / "admin"
    result = runner.invoke(cli(), ["pki", "init-root", str(BANK), "--state", str(root_dir)])
    assert result.exit_code == 0, result.output
    for mesh in ("payments", "payments-dr", "web"):
        csr = tmp_path / f"{mesh}.csr"
        args = [
            "pki",
            "request",
            "--mesh",
            mesh,
            str(BANK),
            "--state",
            str(mesh_dir),
            "-o",
            str(csr),
        ]
        result = runner.invoke(cli(), args)
        assert result.exit_code == 0, result.output
        if mesh == "payments":
            # Before anything is imported, the mesh state says what is missing.
            with pytest.raises(PKIError, match="no CA has been imported yet"):
                open_workspace(BANK, mesh_dir)
        signed = tmp_path / f"{mesh}.crt"
        result = runner.invoke(
            cli(), ["pki", "sign", str(csr), "--state", str(root_dir), "-o", str(signed)]
        )
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli(), ["pki", "import", str(signed), "--state", str(mesh_dir)])
        assert result.exit_code == 0, result.output
        assert f"imported {mesh} intermediate as the mesh's CA" in result.output
    ws = open_workspace(BANK, mesh_dir)
    assert ws.pki.custody == "split"
    # The root key never left its holder; no intermediate key ever reached the root holder.
    assert not list(mesh_dir.rglob("root-key.pem"))
    assert list(root_dir.rglob("root-key.pem")) and not list(root_dir.rglob("ca-key.pem"))
    for mesh, ca in ws.pki.meshes.items():
        path = mesh_dir / "pki" / mesh / "ca-key.pem"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        _, leaf = ca.issue(f"spiffe://{ca.trust_domain}/ns/a/sa/b", timedelta(hours=1), NOW)
        verify_chain(leaf, [ca.ca_cert], [ws.pki.roots["root"]], NOW)
    assert not (mesh_dir / "pki" / "_requests").exists()
    # Idempotent, and a plain `pki init` there keeps it (nothing to create).
    assert runner.invoke(cli(), ["pki", "init", str(BANK), "--state", str(mesh_dir)]).exit_code == 0
    # A second request for a mesh that has its CA is refused (that is a rotation).
    result = runner.invoke(
        cli(), ["pki", "request", "--mesh", "web", str(BANK), "--state", str(mesh_dir)]
    )
    assert result.exit_code == 1 and "meshfed rotate intermediate" in result.output


@pytest.mark.parametrize("command", ["sign", "import"])
def test_what_another_party_hands_over_is_read_bounded(tmp_path: Path, command: str) -> None:
    # Before: `pki sign /dev/zero` read until memory ran out (a MemoryError traceback).
    runner = CliRunner()
    root_dir = _root_holder(tmp_path)
    state = root_dir if command == "sign" else tmp_path / "admin"
    huge = tmp_path / "huge.csr"
    huge.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * (2 << 20))
    what = "CSR" if command == "sign" else "signed certificate"
    for handed in ("/dev/zero", str(huge)):
        result = runner.invoke(cli(), ["pki", command, handed, "--state", str(state)])
        assert result.exit_code == 1, result.output
        assert f"{handed}: more than 1,048,576 bytes: not a {what}" in result.output
        assert isinstance(result.exception, SystemExit)  # a clear error, no traceback


def _split_pair(tmp_path: Path) -> tuple[Path, Path]:
    root_dir = _root_holder(tmp_path)
    mesh_dir = tmp_path / "admin"
    req = trust_request(load_spec(BANK))
    for mesh in ("payments", "payments-dr", "web"):
        csr = request_intermediate(PKIStore(mesh_dir), req, mesh, NOW)
        cert, root = sign_request(PKIStore(root_dir), csr.read_bytes(), str(csr), YEAR, NOW)
        import_certificate(PKIStore(mesh_dir), bundle_pem(cert, root), "x", NOW)
    return root_dir, mesh_dir


def test_import_refusals(tmp_path: Path) -> None:
    root_dir, mesh_dir = _split_pair(tmp_path)
    other = tmp_path / "other-root"
    PKIStore(other).ensure_roots(trust_request(load_spec(BANK)))
    # A certificate for a key that is not here.
    csr = make_csr("web", "web.bank.example", generate_key("ECDSA_P256"))
    pem = csr.public_bytes(serialization.Encoding.PEM)
    cert, root = sign_request(PKIStore(root_dir), pem, "c", YEAR, NOW)
    with pytest.raises(PKIError, match="no pending request"):
        import_certificate(PKIStore(mesh_dir), bundle_pem(cert, root), "x", NOW)
    # A rotation of web's intermediate waits for the import; a certificate from another root
    # (or a root rotation's certificate from the old root) is refused.
    rotator = Rotator(mesh_dir, BANK)
    record = rotator.start("intermediate", "web")
    waiting = rotator.run(record).waiting
    assert len(waiting) == 1
    cert, root = sign_request(PKIStore(other), waiting[0].read_bytes(), "w", YEAR, NOW)
    with pytest.raises(PKIError, match="another root"):
        import_certificate(PKIStore(mesh_dir), bundle_pem(cert, root), "x", NOW)
    rotator.abort()
    assert rotator.status() is None


def test_split_custody_rotations(tmp_path: Path) -> None:
    root_dir, mesh_dir = _split_pair(tmp_path)
    before = open_workspace(BANK, mesh_dir)
    runner = CliRunner()

    # Intermediate: the step waits (exit 3) until the signed certificate is imported.
    args = ["rotate", "intermediate", "--mesh", "payments", str(BANK), "--state", str(mesh_dir)]
    result = runner.invoke(cli(), args)
    assert result.exit_code == 3, result.output
    csr = next(line.strip() for line in result.output.splitlines() if line.strip().endswith(".csr"))
    again = runner.invoke(cli(), args)
    assert again.exit_code == 3 and csr in again.output  # the same CSR, the same key
    signed = tmp_path / "payments-new.crt"
    assert (
        runner.invoke(
            cli(), ["pki", "sign", csr, "--state", str(root_dir), "-o", str(signed)]
        ).exit_code
        == 0
    )
    result = runner.invoke(cli(), ["pki", "import", str(signed), "--state", str(mesh_dir)])
    assert "as rotation" in result.output, result.output
    result = runner.invoke(cli(), args)
    assert result.exit_code == 0 and "completed" in result.output, result.output
    ws = open_workspace(BANK, mesh_dir)
    assert ws.pki.meshes["payments"].ca_cert != before.pki.meshes["payments"].ca_cert
    assert ws.pki.roots == before.pki.roots

    # Root: the meshes' CSRs must be signed by the new root: one signed before the root holder
    # rotated (by the old root) is refused; after `rotate root` there, they are accepted.
    args = ["rotate", "root", str(BANK), "--state", str(mesh_dir)]
    result = runner.invoke(cli(), args)
    assert result.exit_code == 3, result.output
    csrs = [line.strip() for line in result.output.splitlines() if line.strip().endswith(".csr")]
    assert len(csrs) == 3
    store = PKIStore(mesh_dir)
    cert, old_root = sign_request(PKIStore(root_dir), Path(csrs[0]).read_bytes(), "c", YEAR, NOW)
    with pytest.raises(PKIError, match="signed by the old root"):
        import_certificate(store, bundle_pem(cert, old_root), csrs[0], NOW)
    result = runner.invoke(cli(), ["rotate", "root", str(BANK), "--state", str(root_dir)])
    assert result.exit_code == 0 and "completed" in result.output, result.output
    assert not list((root_dir / "pki").rglob("_rotation"))
    for csr in csrs:
        cert, root = sign_request(PKIStore(root_dir), Path(csr).read_bytes(), csr, YEAR, NOW)
        assert fingerprint(root) != fingerprint(old_root)
        import_certificate(store, bundle_pem(cert, root), csr, NOW)
    result = runner.invoke(cli(), args)
    assert result.exit_code == 0 and "completed" in result.output, result.output
    ws = open_workspace(BANK, mesh_dir)
    assert ws.pki.roots["root"] == root
    assert ws.pki.anchors("root") == (root,)
    assert not list(mesh_dir.rglob("root-key.pem"))
