"""The PKI state store: `STATE/pki/`, the only stateful part of meshfed's PKI.

Layout (see docs/design.md, Trust):

    pki/state.json                       federation, mode, key algorithm, domains, fingerprints
    pki/root/root-{cert,key}.pem         SharedRoot: the one root
    pki/<mesh>/root/root-{cert,key}.pem  Federated: the mesh's own root
    pki/<mesh>/ca-cert.pem ca-key.pem root-cert.pem cert-chain.pem   Istio plug-in CA files
    pki/<mesh>/peers/<peer>.pem          Federated: the peer mesh's root

`PKIStore.ensure` first loads and checks everything that exists (read-only), and only then
creates what is missing, so a mismatch never leaves half-regenerated state behind. New roots and
new mesh directories are assembled in a temporary directory and renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshfed.pki.certs import (
    as_utc,
    cert_to_pem,
    certs_to_pem,
    fingerprint,
    issue_leaf,
    keys_match,
    load_cert_pem,
    make_intermediate_ca,
    make_root_ca,
    permitted_uri_domains,
    spiffe_trust_domain,
    validate_trust_domain,
)
from meshfed.pki.errors import PKIError
from meshfed.pki.keys import (
    KEY_ALGORITHMS,
    KeyAlgorithm,
    PrivateKey,
    generate_key,
    key_algorithm,
    key_to_pem,
    load_key_pem,
)

TrustMode = Literal["SharedRoot", "Federated"]
TRUST_MODES: tuple[TrustMode, ...] = ("SharedRoot", "Federated")

STATE_VERSION = 1
SHARED_ROOT_NAME = "root"
ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CHAIN = "cert-chain.pem"
PEERS_DIR = "peers"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"
_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700
_MESH_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshTrustRequest:
    mesh: str
    trust_domain: str


@dataclass(frozen=True)
class TrustRequest:
    """What the spec asks of the PKI, independent of the spec model."""

    federation: str
    mode: TrustMode
    key_algorithm: KeyAlgorithm
    root_ttl: timedelta
    intermediate_ttl: timedelta
    meshes: tuple[MeshTrustRequest, ...]
    #: (mesh, peer): `mesh` holds `peer`'s root bundle. Federated only; ignored for SharedRoot.
    peerings: tuple[tuple[str, str], ...] = ()

    def validate(self) -> None:
        """ValueError if the request is inconsistent (the spec checks should have caught it)."""
        if not self.federation.strip():
            raise ValueError("federation name must not be empty")
        if self.mode not in TRUST_MODES:
            raise ValueError(f"unknown trust mode {self.mode!r}")
        if self.key_algorithm not in KEY_ALGORITHMS:
            raise ValueError(f"unknown key algorithm {self.key_algorithm!r}")
        if self.root_ttl <= timedelta(0) or self.intermediate_ttl <= timedelta(0):
            raise ValueError("root_ttl and intermediate_ttl must be positive")
        names: set[str] = set()
        domains: set[str] = set()
        for m in self.meshes:
            if not _MESH_NAME.match(m.mesh) or m.mesh == SHARED_ROOT_NAME:
                raise ValueError(
                    f"invalid mesh name {m.mesh!r}: use a DNS label (a-z, 0-9, '-'), not 'root'"
                )
            validate_trust_domain(m.trust_domain)
            if m.mesh in names:
                raise ValueError(f"mesh {m.mesh!r} listed twice")
            if m.trust_domain in domains:
                raise ValueError(f"trust domain {m.trust_domain!r} used by two meshes")
            names.add(m.mesh)
            domains.add(m.trust_domain)
        for mesh, peer in self.peerings:
            if mesh not in names or peer not in names:
                raise ValueError(f"peering ({mesh!r}, {peer!r}) names a mesh not in the request")
            if mesh == peer:
                raise ValueError(f"peering ({mesh!r}, {peer!r}) pairs a mesh with itself")


# --- material ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshCA:
    """One mesh's Istio plug-in CA: intermediate certificate and key, and the roots it trusts."""

    mesh: str
    trust_domain: str
    key_algorithm: KeyAlgorithm
    root_name: str
    root_cert: x509.Certificate
    ca_cert: x509.Certificate
    ca_key: PrivateKey = field(repr=False)
    #: Istio's cert-chain.pem: the intermediate, then the root.
    chain: list[x509.Certificate]
    #: Federated: peer mesh name -> that mesh's root (pki/<mesh>/peers/<peer>.pem), as requested.
    peer_roots: dict[str, x509.Certificate] = field(default_factory=dict)

    def issue(
        self,
        spiffe_id: str,
        ttl: timedelta,
        now: datetime,
        dns_names: Sequence[str] = (),
    ) -> tuple[PrivateKey, x509.Certificate]:
        """A fresh key and a leaf for `spiffe_id` (must be in this mesh's trust domain)."""
        if spiffe_trust_domain(spiffe_id) != self.trust_domain:
            raise ValueError(
                f"{spiffe_id} is not in trust domain {self.trust_domain} of mesh {self.mesh}"
            )
        key = generate_key(self.key_algorithm)
        cert = issue_leaf(spiffe_id, key, self.ca_cert, self.ca_key, ttl, now, dns_names)
        return key, cert


@dataclass(frozen=True)
class PKIMaterial:
    federation: str
    mode: TrustMode
    key_algorithm: KeyAlgorithm
    #: root name ("root" for SharedRoot, the mesh name for Federated) -> root certificate
    roots: dict[str, x509.Certificate]
    meshes: dict[str, MeshCA]


# --- the store ---------------------------------------------------------------------------------


@dataclass(repr=False)
class _Root:
    name: str
    dir: Path
    cert: x509.Certificate
    key: PrivateKey
    new: bool


@dataclass(repr=False)
class _Mesh:
    req: MeshTrustRequest
    dir: Path
    root: _Root
    cert: x509.Certificate
    key: PrivateKey
    new: bool
    peer_roots: dict[str, x509.Certificate] = field(default_factory=dict)


@dataclass(repr=False)
class _Plan:
    """Everything loaded or generated (in memory) by one ensure/load call."""

    roots: dict[str, _Root] = field(default_factory=dict)
    meshes: dict[str, _Mesh] = field(default_factory=dict)
    #: files derived from checked material that are missing on disk: path -> content
    missing: dict[Path, bytes] = field(default_factory=dict)

    def material(self, req: TrustRequest) -> PKIMaterial:
        return PKIMaterial(
            federation=req.federation,
            mode=req.mode,
            key_algorithm=req.key_algorithm,
            roots={name: r.cert for name, r in self.roots.items()},
            meshes={
                name: MeshCA(
                    mesh=name,
                    trust_domain=m.req.trust_domain,
                    key_algorithm=req.key_algorithm,
                    root_name=m.root.name,
                    root_cert=m.root.cert,
                    ca_cert=m.cert,
                    ca_key=m.key,
                    chain=[m.cert, m.root.cert],
                    peer_roots=dict(m.peer_roots),
                )
                for name, m in self.meshes.items()
            },
        )


class PKIStore:
    """Creates, loads and checks the PKI files under `state_dir/pki/`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "pki"

    def __repr__(self) -> str:
        return f"PKIStore({str(self.state_dir)!r})"

    # --- public API

    def ensure(self, req: TrustRequest, now: datetime | None = None) -> PKIMaterial:
        """Create whatever is missing, load and check what exists; idempotent.

        Raises PKIError (naming the file, the problem and the fix) on corrupt or mismatched state;
        in that case nothing has been written.
        """
        req.validate()
        now = as_utc(now) if now is not None else datetime.now(UTC)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _mkdir_private(self.dir)
        with self._locked():
            self._remove_stale_tmp()
            state = self._read_state(req, must_exist=False)
            plan = self._collect(req, now, create=True, state=state)
            self._write_state(req, plan, state)
            self._write_new(req, plan)
            return plan.material(req)

    def load(self, req: TrustRequest, now: datetime | None = None) -> PKIMaterial:
        """Load and check existing material; PKIError if anything is missing. Writes nothing."""
        req.validate()
        now = as_utc(now) if now is not None else datetime.now(UTC)
        if not self.dir.is_dir():
            raise PKIError(self.dir, "no PKI state", "create it first (PKIStore.ensure)")
        state = self._read_state(req, must_exist=True)
        plan = self._collect(req, now, create=False, state=state)
        if plan.missing:
            path = sorted(plan.missing)[0]
            raise PKIError(path, "is missing", "create it (PKIStore.ensure)")
        return plan.material(req)

    def root_dir(self, mode: TrustMode, root_name: str) -> Path:
        if mode == "SharedRoot":
            return self.dir / SHARED_ROOT_NAME
        return self.dir / root_name / "root"

    def mesh_dir(self, mesh: str) -> Path:
        return self.dir / mesh

    # --- loading and checking (read-only)

    def _collect(
        self, req: TrustRequest, now: datetime, *, create: bool, state: dict[str, Any] | None
    ) -> _Plan:
        state_roots: dict[str, Any] = (state or {}).get("roots", {})
        state_meshes: dict[str, Any] = (state or {}).get("meshes", {})
        plan = _Plan()
        if req.mode == "SharedRoot":
            root = self._root(req, SHARED_ROOT_NAME, now, create, state_roots.get("root"))
            plan.roots[root.name] = root
        for m in req.meshes:
            if req.mode == "Federated":
                root = self._root(req, m.mesh, now, create, state_roots.get(m.mesh))
                plan.roots[root.name] = root
            plan.meshes[m.mesh] = self._mesh(req, m, root, now, create, state_meshes.get(m.mesh))
        for name, ca in plan.meshes.items():
            for fname, data in (
                (ROOT_CERT, cert_to_pem(ca.root.cert)),
                (CHAIN, certs_to_pem([ca.cert, ca.root.cert])),
            ):
                self._derived(plan, ca.dir / fname, data, name, ca.new)
        if req.mode == "Federated":
            for name, peer in req.peerings:
                ca, peer_root = plan.meshes[name], plan.roots[peer]
                path = ca.dir / PEERS_DIR / f"{peer}.pem"
                self._derived(plan, path, cert_to_pem(peer_root.cert), name, ca.new)
                ca.peer_roots[peer] = peer_root.cert
        return plan

    def _derived(self, plan: _Plan, path: Path, data: bytes, mesh: str, new: bool) -> None:
        """A file derived from checked material: must match if present; noted if missing."""
        if not new and path.exists():
            if _read(path) != data:
                what = (
                    f"is not the current root of mesh {path.stem}"
                    if path.parent.name == PEERS_DIR
                    else f"does not match {CA_CERT} and the root of mesh {mesh}"
                )
                raise PKIError(path, what, f"remove {self._rel(path)} to have it rewritten")
            return
        plan.missing[path] = data

    def _root(
        self,
        req: TrustRequest,
        name: str,
        now: datetime,
        create: bool,
        recorded: dict[str, Any] | None,
    ) -> _Root:
        rdir = self.root_dir(req.mode, name)
        cert_path, key_path = rdir / ROOT_CERT, rdir / ROOT_KEY
        # Federated: the mesh directory holds the root; it is new iff the mesh directory is.
        if _is_new(rdir if req.mode == "SharedRoot" else self.mesh_dir(name)):
            in_use = [m.mesh for m in req.meshes if not _is_new(self.mesh_dir(m.mesh))]
            if req.mode == "SharedRoot" and in_use:
                raise PKIError(
                    cert_path,
                    f"is missing but mesh {in_use[0]} has an intermediate CA issued by it",
                    f"restore {self._rel(rdir)}, or remove {self.dir} to start over",
                )
            if not create:
                raise PKIError(cert_path, "root CA is missing", "create it (PKIStore.ensure)")
            cn = f"{req.federation} root CA" if req.mode == "SharedRoot" else f"{name} root CA"
            key = generate_key(req.key_algorithm)
            cert = make_root_ca(cn, key, req.root_ttl, now)
            return _Root(name=name, dir=rdir, cert=cert, key=key, new=True)
        self._require_files(cert_path, key_path)
        cert = self._read_cert(cert_path)
        key = self._read_key(key_path)
        if not keys_match(key, cert):
            raise PKIError(
                key_path,
                f"private key does not match {self._rel(cert_path)}",
                f"restore both files, or remove {self.dir} to start over",
            )
        self._check_algorithm(req, key, key_path)
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(
                cert_path, "is not a self-signed root certificate", self._restore_fix()
            ) from None
        _check_ca_cert(cert_path, cert, now, f"remove {self.dir} to start over")
        if recorded is not None and recorded.get("fingerprint") != fingerprint(cert):
            raise PKIError(
                cert_path,
                f"fingerprint {fingerprint(cert)} differs from the one recorded in "
                f"{self._rel(self.dir / STATE_FILE)} ({recorded.get('fingerprint')})",
                f"restore the original root, or remove {self.dir} to start over",
            )
        return _Root(name=name, dir=rdir, cert=cert, key=key, new=False)

    def _mesh(
        self,
        req: TrustRequest,
        m: MeshTrustRequest,
        root: _Root,
        now: datetime,
        create: bool,
        recorded: dict[str, Any] | None,
    ) -> _Mesh:
        mdir = self.mesh_dir(m.mesh)
        cert_path, key_path = mdir / CA_CERT, mdir / CA_KEY
        if _is_new(mdir):
            if not create:
                raise PKIError(
                    cert_path, f"CA of mesh {m.mesh} is missing", "create it (PKIStore.ensure)"
                )
            key = generate_key(req.key_algorithm)
            cert = make_intermediate_ca(
                m.mesh, m.trust_domain, key, root.cert, root.key, req.intermediate_ttl, now
            )
            return _Mesh(req=m, dir=mdir, root=root, cert=cert, key=key, new=True)
        if root.new:  # SharedRoot: the root is gone, but this mesh has an intermediate
            raise PKIError(
                root.dir / ROOT_CERT,
                f"is missing but mesh {m.mesh} has an intermediate CA issued by it",
                f"restore {self._rel(root.dir)}, or remove {self.dir} to start over",
            )
        reissue = f"remove {self._rel(mdir)} to issue a new CA for mesh {m.mesh}"
        self._require_files(cert_path, key_path)
        cert = self._read_cert(cert_path)
        key = self._read_key(key_path)
        if not keys_match(key, cert):
            raise PKIError(
                key_path,
                f"private key does not match {self._rel(cert_path)}",
                f"restore both files, or {reissue}",
            )
        self._check_algorithm(req, key, key_path)
        try:
            cert.verify_directly_issued_by(root.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(
                cert_path,
                f"is not signed by the root in {self._rel(root.dir / ROOT_CERT)}",
                f"restore the matching root, or {reissue}",
            ) from None
        _check_ca_cert(cert_path, cert, now, reissue)
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
        if recorded is not None and recorded.get("ca_fingerprint") != fingerprint(cert):
            raise PKIError(
                cert_path,
                f"fingerprint {fingerprint(cert)} differs from the one recorded in "
                f"{self._rel(self.dir / STATE_FILE)}",
                f"restore the original file, or {reissue}",
            )
        return _Mesh(req=m, dir=mdir, root=root, cert=cert, key=key, new=False)

    def _check_algorithm(self, req: TrustRequest, key: PrivateKey, path: Path) -> None:
        alg = key_algorithm(key)
        if alg != req.key_algorithm:
            raise PKIError(
                path,
                f"key algorithm is {alg or 'unsupported'}, the spec asks for {req.key_algorithm}",
                f"set the key algorithm back to {alg} in the spec, or remove {self.dir} "
                "to start over",
            )

    def _require_files(self, *paths: Path) -> None:
        for p in paths:
            if not p.is_file():
                raise PKIError(
                    p,
                    f"is missing although {self._rel(p.parent)} holds other PKI files",
                    f"restore it, or remove {self._rel(p.parent)} to have it created anew",
                )

    def _read_cert(self, path: Path) -> x509.Certificate:
        try:
            return load_cert_pem(_read(path), self._rel(path))
        except PKIError as exc:
            raise PKIError(exc.source, exc.problem, self._fix_for(path)) from None

    def _fix_for(self, path: Path) -> str:
        """How to recover from a broken CA file: restore it, or re-create what depends on it."""
        if path.parent.name == "root" or path.parent.parent != self.dir:
            return f"restore the file, or remove {self.dir} to start over"
        mesh = path.parent.name
        return f"restore the file, or remove {path.parent} to issue a new CA for mesh {mesh}"

    def _read_key(self, path: Path) -> PrivateKey:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PKIError(
                path,
                f"private key file is accessible by group/others (mode {mode:04o})",
                f"chmod 600 {path}",
            )
        try:
            return load_key_pem(_read(path), self._rel(path))
        except PKIError as exc:
            raise PKIError(exc.source, exc.problem, self._fix_for(path)) from None

    def _rel(self, path: Path) -> str:
        """How paths appear in messages: as the user can type them (under the given state_dir)."""
        return str(path)

    def _restore_fix(self) -> str:
        return f"restore the file, or remove {self.dir} to start over"

    # --- state.json

    def _read_state(self, req: TrustRequest, *, must_exist: bool) -> dict[str, Any] | None:
        path = self.dir / STATE_FILE
        if not path.exists():
            leftovers = sorted(p.name for p in self.dir.iterdir() if not p.name.startswith("."))
            if must_exist or leftovers:
                raise PKIError(
                    path,
                    "is missing" + (f" but {', '.join(leftovers)} exist(s)" if leftovers else ""),
                    f"restore it, or remove {self.dir} to start over",
                )
            return None
        try:
            state = json.loads(_read(path))
        except (ValueError, UnicodeDecodeError) as exc:
            raise PKIError(path, f"is not valid JSON ({exc})", self._restore_fix()) from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise PKIError(
                path,
                f"is not a meshfed PKI state file (version {STATE_VERSION})",
                self._restore_fix(),
            )
        fix = f"use the original setting in the spec, or remove {self.dir} to start over"
        for key, want, what in (
            ("federation", req.federation, "federation name"),
            ("mode", req.mode, "trust mode"),
            ("key_algorithm", req.key_algorithm, "key algorithm"),
        ):
            if state.get(key) != want:
                raise PKIError(
                    path, f"{what} is {state.get(key)!r} on disk, the spec says {want!r}", fix
                )
        for m in req.meshes:
            rec = state.get("meshes", {}).get(m.mesh)
            if (
                rec is not None
                and rec.get("trust_domain") != m.trust_domain
                and not _is_new(self.mesh_dir(m.mesh))
            ):
                raise PKIError(
                    path,
                    f"mesh {m.mesh} has trust domain {rec.get('trust_domain')!r} on disk, the "
                    f"spec says {m.trust_domain!r} (trust domain changed?)",
                    f"restore the trust domain in the spec, or remove "
                    f"{self._rel(self.mesh_dir(m.mesh))} to issue a new CA for mesh {m.mesh} "
                    "(its workloads get new identities)",
                )
        return state

    def _write_state(self, req: TrustRequest, plan: _Plan, old: dict[str, Any] | None) -> None:
        roots = dict((old or {}).get("roots", {}))
        meshes = dict((old or {}).get("meshes", {}))
        for name, root in plan.roots.items():
            roots[name] = {"fingerprint": fingerprint(root.cert)}
        for name, m in plan.meshes.items():
            meshes[name] = {
                "trust_domain": m.req.trust_domain,
                "root": m.root.name,
                "ca_fingerprint": fingerprint(m.cert),
            }
        state = {
            "version": STATE_VERSION,
            "federation": req.federation,
            "mode": req.mode,
            "key_algorithm": req.key_algorithm,
            "roots": roots,
            "meshes": meshes,
        }
        data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
        path = self.dir / STATE_FILE
        if not path.exists() or _read(path) != data:
            _write_atomic(path, data, _CERT_MODE)

    # --- writing (only after everything existing has been checked)

    def _write_new(self, req: TrustRequest, plan: _Plan) -> None:
        if req.mode == "SharedRoot":
            root = plan.roots[SHARED_ROOT_NAME]
            if root.new:
                self._install_dir(root.dir, _root_files(root))
        for m in plan.meshes.values():
            if not m.new:
                continue
            files = {
                CA_CERT: (cert_to_pem(m.cert), _CERT_MODE),
                CA_KEY: (key_to_pem(m.key), _KEY_MODE),
            }
            if req.mode == "Federated":
                files.update({f"root/{k}": v for k, v in _root_files(m.root).items()})
            self._install_dir(m.dir, files)
        for path, data in sorted(plan.missing.items()):
            _mkdir_private(path.parent)
            _write_atomic(path, data, _CERT_MODE)

    def _install_dir(self, target: Path, files: dict[str, tuple[bytes, int]]) -> None:
        """Create `target` with `files` atomically: build it beside, then rename it into place."""
        tmp = self.dir / f"{_TMP_PREFIX}{target.name}-{secrets.token_hex(4)}"
        os.mkdir(tmp, _DIR_MODE)
        try:
            for rel, (data, mode) in files.items():
                path = tmp / rel
                _mkdir_private(path.parent)
                _write_atomic(path, data, mode)
            target.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            os.rename(tmp, target)  # target is missing or an empty directory
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(target.parent)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _remove_stale_tmp(self) -> None:
        """Remove what an interrupted run left behind (it may hold private keys)."""
        for p in self.dir.glob(f"{_TMP_PREFIX}*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)


# --- helpers -----------------------------------------------------------------------------------


def _root_files(root: _Root) -> dict[str, tuple[bytes, int]]:
    return {
        ROOT_CERT: (cert_to_pem(root.cert), _CERT_MODE),
        ROOT_KEY: (key_to_pem(root.key), _KEY_MODE),
    }


def _is_new(path: Path) -> bool:
    """A directory that does not exist or is empty: material there gets created."""
    if not path.exists():
        return True
    return path.is_dir() and not any(path.iterdir())


def _check_ca_cert(path: Path, cert: x509.Certificate, now: datetime, fix: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PKIError(path, "is not a CA certificate", fix)
    if now > cert.not_valid_after_utc:
        raise PKIError(path, f"expired at {cert.not_valid_after_utc.isoformat()}", fix)
    if now < cert.not_valid_before_utc:
        raise PKIError(
            path,
            f"is not valid before {cert.not_valid_before_utc.isoformat()} (clock wrong?)",
            "check the system clock",
        )


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _mkdir_private(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700; existing directories are left alone."""
    if path.is_dir():
        return
    _mkdir_private(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, _DIR_MODE)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file created with `mode` in the same directory, then os.replace."""
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
