"""The CA files of a PKI state directory: each root and intermediate, read and checked, or
created in memory when missing (the store writes them, after checking everything that exists).

Every problem is a PKIError naming the file, what is wrong and how to recover.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshfed.pki.certs import (
    cert_to_pem,
    check_self_signed,
    fingerprint,
    keys_match,
    load_cert_pem,
    make_intermediate_ca,
    make_root_ca,
    permitted_uri_domains,
)
from meshfed.pki.errors import PKIError
from meshfed.pki.files import CERT_MODE, KEY_MODE, read_bytes
from meshfed.pki.keys import PrivateKey, generate_key, key_algorithm, key_to_pem, load_key_pem
from meshfed.pki.layout import (
    CA_CERT,
    CA_KEY,
    REQUEST_CSR,
    ROOT_CERT,
    ROOT_KEY,
    PKILayout,
    is_new,
)
from meshfed.pki.material import MeshTrustRequest, TrustRequest
from meshfed.pki.record import RECORD_FILE, REQUESTS_DIR, Custody, Gen, RotationRecord, gen_dir
from meshfed.pki.state import check_recorded


@dataclass(repr=False)
class RootCA:
    """A root as loaded or created by one ensure/load call."""

    name: str
    dir: Path
    cert: x509.Certificate
    key: PrivateKey | None
    """None in split custody: the root key is kept by the root holder."""
    new: bool


@dataclass(repr=False)
class MeshCAFiles:
    """A mesh's intermediate CA as loaded or created by one ensure/load call."""

    req: MeshTrustRequest
    dir: Path
    root: RootCA
    cert: x509.Certificate
    key: PrivateKey
    new: bool
    peer_roots: dict[str, x509.Certificate] = field(default_factory=dict)


class CAFiles:
    """Reads and checks the CA files of ``layout`` (nothing here writes)."""

    def __init__(self, layout: PKILayout) -> None:
        self.layout = layout

    def root(
        self,
        req: TrustRequest,
        name: str,
        now: datetime,
        create: bool,
        recorded: dict[str, Any] | None,
        custody: Custody = "local",
    ) -> RootCA:
        rdir = self.layout.root_dir(req.mode, name)
        cert_path, key_path = rdir / ROOT_CERT, rdir / ROOT_KEY
        if custody == "split":
            return self.external_root(req, name, now, recorded)
        # Federated: the mesh directory holds the root; it is new iff the mesh directory is.
        if is_new(rdir if req.mode == "SharedRoot" else self.layout.mesh_dir(name)):
            in_use = [m.mesh for m in req.meshes if not is_new(self.layout.mesh_dir(m.mesh))]
            if req.mode == "SharedRoot" and in_use:
                raise PKIError(
                    cert_path,
                    f"is missing but mesh {in_use[0]} has an intermediate CA issued by it",
                    f"restore {rdir}, or remove {self.layout.dir} to start over",
                )
            if not create:
                raise PKIError(cert_path, "root CA is missing", "create it (PKIStore.ensure)")
            cn = f"{req.federation} root CA" if req.mode == "SharedRoot" else f"{name} root CA"
            key = generate_key(req.key_algorithm)
            cert = make_root_ca(cn, key, req.root_ttl, now)
            return RootCA(name=name, dir=rdir, cert=cert, key=key, new=True)
        cert, key = self.read_pair(
            req, cert_path, key_path, f"remove {self.layout.dir} to start over"
        )
        check_self_signed(cert_path, cert, self.layout.restore_fix())
        check_ca_cert(cert_path, cert, now, f"remove {self.layout.dir} to start over")
        check_recorded(
            self.layout,
            cert_path,
            cert,
            recorded,
            f"restore the original root, or remove {self.layout.dir} to start over",
        )
        return RootCA(name=name, dir=rdir, cert=cert, key=key, new=False)

    def external_root(
        self, req: TrustRequest, name: str, now: datetime, recorded: dict[str, Any] | None
    ) -> RootCA:
        """Split custody: the root's certificate only; its key stays with the root holder."""
        rdir = self.layout.root_dir(req.mode, name)
        cert_path = rdir / ROOT_CERT
        if not cert_path.is_file():
            raise PKIError(
                cert_path,
                "is missing: in split custody the root certificate arrives with the first "
                "imported intermediate",
                "meshfed pki request --mesh MESH SPEC --state DIR, have the root holder run "
                "meshfed pki sign CSR --state ROOTDIR, then meshfed pki import CERT --state DIR",
            )
        cert = self.read_cert(cert_path)
        check_self_signed(cert_path, cert, self.layout.restore_fix())
        check_ca_cert(cert_path, cert, now, "have the root holder rotate the root")
        check_recorded(
            self.layout,
            cert_path,
            cert,
            recorded,
            "restore the original root (a new root comes only through meshfed rotate root)",
        )
        return RootCA(name=name, dir=rdir, cert=cert, key=None, new=False)

    def root_only(
        self, req: TrustRequest, name: str, now: datetime, recorded: dict[str, Any] | None
    ) -> RootCA:
        """The root holder's root: created if missing, else loaded and checked with its key."""
        rdir = self.layout.root_dir(req.mode, name)
        cert_path, key_path = rdir / ROOT_CERT, rdir / ROOT_KEY
        if is_new(rdir):
            cn = f"{req.federation} root CA" if req.mode == "SharedRoot" else f"{name} root CA"
            key = generate_key(req.key_algorithm)
            return RootCA(name, rdir, make_root_ca(cn, key, req.root_ttl, now), key, new=True)
        cert, key = self.read_pair(
            req, cert_path, key_path, f"remove {self.layout.dir} to start over"
        )
        check_ca_cert(cert_path, cert, now, "rotate the root (meshfed rotate root)")
        check_recorded(self.layout, cert_path, cert, recorded, "restore the original root")
        return RootCA(name=name, dir=rdir, cert=cert, key=key, new=False)

    def mesh(
        self,
        req: TrustRequest,
        m: MeshTrustRequest,
        root: RootCA,
        now: datetime,
        create: bool,
        recorded: dict[str, Any] | None,
        rotation: RotationRecord | None = None,
    ) -> MeshCAFiles:
        mdir = self.layout.mesh_dir(m.mesh)
        cert_path, key_path = mdir / CA_CERT, mdir / CA_KEY
        if is_new(mdir) or (root.key is None and not cert_path.exists()):
            if not create:
                raise PKIError(
                    cert_path, f"CA of mesh {m.mesh} is missing", "create it (PKIStore.ensure)"
                )
            if rotation is not None:
                raise PKIError(
                    cert_path,
                    f"mesh {m.mesh} has no CA yet, and rotation {rotation.id} is under way",
                    "finish the rotation (meshfed rotate ...) or abort it before adding meshes",
                )
            if root.key is None:
                pending = self.layout.dir / REQUESTS_DIR / m.mesh
                step = (
                    "have the root holder sign "
                    f"{pending / REQUEST_CSR} (meshfed pki sign), then meshfed pki import CERT"
                    if (pending / REQUEST_CSR).is_file()
                    else f"meshfed pki request --mesh {m.mesh}, have the root holder sign the "
                    "CSR (meshfed pki sign), then meshfed pki import CERT"
                )
                raise PKIError(
                    cert_path,
                    f"mesh {m.mesh} has no intermediate CA, and the root key is held elsewhere "
                    "(split custody)",
                    step,
                )
            key = generate_key(req.key_algorithm)
            assert root.key is not None
            cert = make_intermediate_ca(
                m.mesh, m.trust_domain, key, root.cert, root.key, req.intermediate_ttl, now
            )
            return MeshCAFiles(req=m, dir=mdir, root=root, cert=cert, key=key, new=True)
        if root.new:  # SharedRoot: the root is gone, but this mesh has an intermediate
            raise PKIError(
                root.dir / ROOT_CERT,
                f"is missing but mesh {m.mesh} has an intermediate CA issued by it",
                f"restore {root.dir}, or remove {self.layout.dir} to start over",
            )
        reissue = f"remove {mdir} to issue a new CA for mesh {m.mesh}"
        cert, key = self.read_pair(req, cert_path, key_path, reissue)
        try:
            cert.verify_directly_issued_by(root.cert)
        except (ValueError, TypeError, InvalidSignature):
            if rotation is not None:
                reissue = "run the same meshfed rotate command again, or meshfed rotate abort"
            raise PKIError(
                cert_path,
                f"is not signed by the root in {root.dir / ROOT_CERT}",
                f"restore the matching root, or {reissue}",
            ) from None
        check_ca_cert(cert_path, cert, now, reissue)
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.path_length != 0:
            raise PKIError(cert_path, "intermediate CA is not limited to pathlen 0", reissue)
        domains = permitted_uri_domains(cert)
        if domains != [m.trust_domain]:
            raise PKIError(
                cert_path,
                f"is constrained to trust domain {', '.join(domains or ['(none)'])} but the "
                f"spec asks for {m.trust_domain} for mesh {m.mesh} (trust domain changed?)",
                f"restore the trust domain in the spec, or {reissue} "
                "(its workloads get new identities)",
            )
        check_recorded(
            self.layout,
            cert_path,
            cert,
            recorded,
            f"restore the original file, or {reissue}",
            "ca_fingerprint",
        )
        return MeshCAFiles(req=m, dir=mdir, root=root, cert=cert, key=key, new=False)

    def _check_algorithm(self, req: TrustRequest, key: PrivateKey, path: Path) -> None:
        alg = key_algorithm(key)
        if alg != req.key_algorithm:
            raise PKIError(
                path,
                f"key algorithm is {alg or 'unsupported'}, the spec asks for {req.key_algorithm}",
                f"set the key algorithm back to {alg} in the spec, or remove {self.layout.dir} "
                "to start over",
            )

    def _require_files(self, *paths: Path) -> None:
        for p in paths:
            if not p.is_file():
                raise PKIError(
                    p,
                    f"is missing although {p.parent} holds other PKI files",
                    f"restore it, or remove {p.parent} to have it created anew",
                )

    def generation_root(self, record: RotationRecord, gen: Gen) -> x509.Certificate:
        """The root certificate of generation ``gen`` of a root rotation, checked."""
        path = gen_dir(self.layout.dir, record, gen) / "root" / ROOT_CERT
        fix = "run the same meshfed rotate command again, or meshfed rotate abort"
        if not path.is_file():
            raise PKIError(path, f"is missing (rotation {record.id}, {gen} root)", fix)
        cert = self.read_cert(path)
        want = record.fingerprints.get(gen, {}).get("root")
        if want is not None and fingerprint(cert) != want:
            raise PKIError(path, f"is not the {gen} root recorded in {RECORD_FILE}", fix)
        check_self_signed(path, cert, fix)
        return cert

    def read_pair(
        self, req: TrustRequest, cert_path: Path, key_path: Path, reissue: str
    ) -> tuple[x509.Certificate, PrivateKey]:
        """A CA certificate and its key, both present, matching, of the requested algorithm."""
        self._require_files(cert_path, key_path)
        cert = self.read_cert(cert_path)
        key = self.read_key(key_path)
        if not keys_match(key, cert):
            raise PKIError(
                key_path,
                f"private key does not match {cert_path}",
                f"restore both files, or {reissue}",
            )
        self._check_algorithm(req, key, key_path)
        return cert, key

    def read_cert(self, path: Path) -> x509.Certificate:
        """One certificate, as the store reads its own (PKIError naming the file)."""
        try:
            return load_cert_pem(read_bytes(path), str(path))
        except PKIError as exc:
            raise PKIError(exc.source, exc.problem, self.layout.fix_for(path)) from None

    def read_key(self, path: Path) -> PrivateKey:
        """A private key; PKIError if it is readable by others or unreadable."""
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PKIError(
                path,
                f"private key file is accessible by group/others (mode {mode:04o})",
                f"chmod 600 {path}",
            )
        try:
            return load_key_pem(read_bytes(path), str(path))
        except PKIError as exc:
            raise PKIError(exc.source, exc.problem, self.layout.fix_for(path)) from None


# --- helpers -----------------------------------------------------------------------------------


def root_files(root: RootCA) -> dict[str, tuple[bytes, int]]:
    assert root.key is not None
    return {
        ROOT_CERT: (cert_to_pem(root.cert), CERT_MODE),
        ROOT_KEY: (key_to_pem(root.key), KEY_MODE),
    }


def check_ca_cert(path: Path, cert: x509.Certificate, now: datetime, fix: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PKIError(path, "is not a CA certificate", fix)
    if now > cert.not_valid_after_utc:
        raise PKIError(path, f"expired at {cert.not_valid_after_utc.isoformat()}", fix)
    check_started(path, cert, now)


def check_started(path: Path, cert: x509.Certificate, now: datetime) -> None:
    """A kept certificate whose validity has not begun means a wrong clock, not a bad file."""
    if now < cert.not_valid_before_utc:
        raise PKIError(
            path,
            f"is not valid before {cert.not_valid_before_utc.isoformat()} (clock wrong?)",
            "check the system clock",
        )
