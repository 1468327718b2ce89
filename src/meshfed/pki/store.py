"""The PKI state store: `STATE/pki/`, the only stateful part of meshfed's PKI.

Layout (see docs/design.md, Trust):

    pki/state.json                       federation, mode, key algorithm, domains, fingerprints
    pki/root/root-{cert,key}.pem         SharedRoot: the one root
    pki/<mesh>/root/root-{cert,key}.pem  Federated: the mesh's own root
    pki/<mesh>/ca-cert.pem ca-key.pem root-cert.pem cert-chain.pem   Istio plug-in CA files
    pki/<mesh>/peers/<peer>.pem          Federated: the peer mesh's root (both during a rotation)
    pki/<mesh>/federation-anchor/        Federated: the ingress's anchor CA and cross-certificates
                                         (kept by pki/anchor.py, not by this store)
    pki/rotation.json, pki/_rotation/    a trust rotation in progress (see pki/record.py)
    pki/_requests/<mesh>/                split custody: an intermediate's key and CSR, until import

Custody (``state.json`` ``custody``): ``local`` keeps every key here; ``split`` keeps the meshes'
intermediate keys here but only the root certificate (its key stays with the root holder, whose
own directory has custody ``root``: roots only, see `PKIStore.ensure_roots`).

During a rotation the roots of both generations named in ``rotation.json`` ``trusted`` are in
``root-cert.pem``, ``peers/<peer>.pem`` and `PKIMaterial.trust_anchors`, so the plan's trust
bundles carry both without a special case.

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
from meshfed.pki.files import fsync_dir, mkdir_private, read_bytes, write_atomic
from meshfed.pki.keys import (
    KEY_ALGORITHMS,
    KeyAlgorithm,
    PrivateKey,
    generate_key,
    key_algorithm,
    key_to_pem,
    load_key_pem,
)
from meshfed.pki.record import (
    RECORD_FILE,
    REQUESTS_DIR,
    Custody,
    Gen,
    RotationRecord,
    gen_dir,
    read_record,
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
REQUEST_CSR = "request.csr"
LOCK_FILE = ".lock"
_SWITCHING = ("switch", "switch-back")
"""Rotation steps that move CA files: nobody reads the CA while one is under way."""
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
    #: root-cert.pem: the signing root, and during a rotation's overlap the other generation's
    #: too (old first, then new).
    trusted_roots: tuple[x509.Certificate, ...] = ()
    #: Federated: peer -> every root of that peer currently trusted (peers/<peer>.pem).
    peer_bundles: dict[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)

    @property
    def root_bundle(self) -> tuple[x509.Certificate, ...]:
        """The roots this mesh's own workloads trust (Istio's root-cert.pem)."""
        return self.trusted_roots or (self.root_cert,)

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
    #: root name -> every root trusted in its place: the signing one, and during a rotation's
    #: overlap the other generation's too (old first, then new).
    trust_anchors: dict[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    custody: Custody = "local"
    rotation: RotationRecord | None = None

    def anchors(self, root_name: str) -> tuple[x509.Certificate, ...]:
        return self.trust_anchors.get(root_name) or (self.roots[root_name],)


# --- the store ---------------------------------------------------------------------------------


@dataclass(repr=False)
class _Root:
    name: str
    dir: Path
    cert: x509.Certificate
    key: PrivateKey | None
    """None in split custody: the root key is kept by the root holder."""
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
    #: root name -> trusted roots (old generation first during a rotation's overlap)
    anchors: dict[str, list[x509.Certificate]] = field(default_factory=dict)
    custody: Custody = "local"
    rotation: RotationRecord | None = None

    def anchor_list(self, name: str) -> list[x509.Certificate]:
        return self.anchors.get(name) or [self.roots[name].cert]

    def material(self, req: TrustRequest) -> PKIMaterial:
        return PKIMaterial(
            federation=req.federation,
            mode=req.mode,
            key_algorithm=req.key_algorithm,
            roots={name: r.cert for name, r in self.roots.items()},
            trust_anchors={name: tuple(self.anchor_list(name)) for name in self.roots},
            custody=self.custody,
            rotation=self.rotation,
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
                    trusted_roots=tuple(self.anchor_list(m.root.name)),
                    peer_bundles={
                        peer: tuple(self.anchor_list(peer)) for peer in sorted(m.peer_roots)
                    },
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
            self._check_custody(state, ("local", "split"))
            plan = self._collect(req, now, create=True, state=state)
            self._write_state(req, plan, state)
            self._write_new(req, plan)
            return plan.material(req)

    def ensure_roots(self, req: TrustRequest, now: datetime | None = None) -> PKIMaterial:
        """The root holder's directory in split custody: only the root(s), with their keys.

        Creates missing roots (custody ``root``); the material has no meshes. The trust domains
        of the request's meshes are recorded, so ``sign_request`` can check what a CSR asks for.
        """
        req.validate()
        now = as_utc(now) if now is not None else datetime.now(UTC)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _mkdir_private(self.dir)
        with self._locked():
            self._remove_stale_tmp()
            state = self._read_state(req, must_exist=False)
            if state is None:
                state = {"custody": "root"}
            self._check_custody(state, ("root",))
            plan = _Plan(custody="root", rotation=self._rotation_record())
            recorded = state.get("roots", {})
            names = [SHARED_ROOT_NAME] if req.mode == "SharedRoot" else [m.mesh for m in req.meshes]
            for name in names:
                plan.roots[name] = self._root_only(req, name, now, recorded.get(name))
            self._overlay(req, plan)
            for root in plan.roots.values():
                if root.new:
                    self._install_dir(root.dir, _root_files(root))
            self._write_state(req, plan, state)
            return plan.material(req)

    def custody(self) -> Custody:
        """The custody recorded in ``state.json`` (``local`` if there is none yet)."""
        try:
            state = json.loads(_read(self.dir / STATE_FILE))
        except (OSError, ValueError, UnicodeDecodeError):
            return "local"
        custody = state.get("custody", "local") if isinstance(state, dict) else "local"
        if custody == "split":
            return "split"
        return "root" if custody == "root" else "local"

    def rotation(self) -> RotationRecord | None:
        """The rotation in progress, if any."""
        return read_record(self.dir)

    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """The store's lock: exclusive for writers (ensure, rotation steps), shared to read."""
        _mkdir_private(self.dir)
        with self._locked(shared):
            yield

    def load(self, req: TrustRequest, now: datetime | None = None) -> PKIMaterial:
        """Load and check existing material; PKIError if anything is missing. Writes nothing."""
        req.validate()
        now = as_utc(now) if now is not None else datetime.now(UTC)
        if not self.dir.is_dir():
            raise PKIError(self.dir, "no PKI state", "create it first (PKIStore.ensure)")
        with self._locked(shared=True):
            state = self._read_state(req, must_exist=True)
            self._check_custody(state, ("local", "split"))
            plan = self._collect(req, now, create=False, state=state)
        if plan.missing and plan.rotation is None:
            path = sorted(plan.missing)[0]
            raise PKIError(path, "is missing", "create it (PKIStore.ensure)")
        return plan.material(req)

    def signing_ca(self, mesh: str, now: datetime | None = None) -> MeshCA:
        """The CA that signs ``mesh``'s certificates now, read from the files alone (no spec).

        For long-running issuers (the local runtime's renewer): reads under the shared lock, so
        it never sees half of a rotation's switch.
        """
        now = as_utc(now) if now is not None else datetime.now(UTC)
        with self._locked(shared=True):
            path = self.dir / STATE_FILE
            try:
                state = json.loads(_read(path))
                mode, alg = state["mode"], state["key_algorithm"]
                rec = state["meshes"][mesh]
                domain, root_name = rec["trust_domain"], rec["root"]
            except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise PKIError(
                    path, f"has no usable record of mesh {mesh}", "run meshfed up"
                ) from None
            record = read_record(self.dir)
            if record is not None and record.running in _SWITCHING:
                raise PKIError(self.dir / RECORD_FILE, f"step {record.running} is under way")
            mdir = self.mesh_dir(mesh)
            cert = self._read_cert(mdir / CA_CERT)
            key = self._read_key(mdir / CA_KEY)
            root = self._read_cert(self.root_dir(mode, root_name) / ROOT_CERT)
        if not keys_match(key, cert):
            raise PKIError(mdir / CA_KEY, f"private key does not match {CA_CERT}")
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(mdir / CA_CERT, "is not signed by the recorded root") from None
        _check_ca_cert(mdir / CA_CERT, cert, now, "run meshfed up")
        return MeshCA(
            mesh=mesh,
            trust_domain=domain,
            key_algorithm=alg,
            root_name=root_name,
            root_cert=root,
            ca_cert=cert,
            ca_key=key,
            chain=[cert, root],
        )

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
        custody: Custody = (state or {}).get("custody", "local")
        plan = _Plan(custody=custody, rotation=self._rotation_record())
        if plan.rotation is not None and plan.rotation.running in _SWITCHING:
            raise PKIError(
                self.dir / RECORD_FILE,
                f"rotation step {plan.rotation.running} was interrupted: the CA files are between "
                "two generations",
                "run the same meshfed rotate command again to finish it, or meshfed rotate abort",
            )
        if req.mode == "SharedRoot":
            root = self._root(req, SHARED_ROOT_NAME, now, create, state_roots.get("root"), custody)
            plan.roots[root.name] = root
        for m in req.meshes:
            if req.mode == "Federated":
                root = self._root(req, m.mesh, now, create, state_roots.get(m.mesh), custody)
                plan.roots[root.name] = root
            plan.meshes[m.mesh] = self._mesh(
                req, m, root, now, create, state_meshes.get(m.mesh), plan.rotation
            )
        self._overlay(req, plan)
        # During a rotation, derived files follow the record: rewritten, never an error.
        repair = plan.rotation is not None
        for name, ca in plan.meshes.items():
            for fname, data in (
                (ROOT_CERT, certs_to_pem(plan.anchor_list(ca.root.name))),
                (CHAIN, certs_to_pem([ca.cert, ca.root.cert])),
            ):
                self._derived(plan, ca.dir / fname, data, name, ca.new or repair)
        if req.mode == "Federated":
            for name, peer in req.peerings:
                ca, peer_root = plan.meshes[name], plan.roots[peer]
                path = ca.dir / PEERS_DIR / f"{peer}.pem"
                data = certs_to_pem(plan.anchor_list(peer))
                self._derived(plan, path, data, name, ca.new or repair)
                ca.peer_roots[peer] = peer_root.cert
        return plan

    def _rotation_record(self) -> RotationRecord | None:
        return read_record(self.dir) if (self.dir / RECORD_FILE).exists() else None

    def _overlay(self, req: TrustRequest, plan: _Plan) -> None:
        """A rotation in progress: check the signing generation, and add the other root."""
        record = plan.rotation
        for name, root in plan.roots.items():
            plan.anchors[name] = [root.cert]
        if record is None:
            return
        fix = "run the same meshfed rotate command again, or meshfed rotate abort"
        signing = record.fingerprints.get(record.signing, {})
        want_root = signing.get("root")
        if (
            record.kind == "root"
            and record.root in plan.roots
            and want_root
            and fingerprint(plan.roots[record.root].cert) != want_root
        ):
            raise PKIError(
                self.root_dir(req.mode, record.root) / ROOT_CERT,
                f"is not the {record.signing} root that rotation {record.id} says signs now",
                fix,
            )
        for mesh in record.meshes:
            want = signing.get(mesh)
            if mesh in plan.meshes and want and fingerprint(plan.meshes[mesh].cert) != want:
                raise PKIError(
                    self.mesh_dir(mesh) / CA_CERT,
                    f"is not the {record.signing} intermediate that rotation {record.id} "
                    "says signs now",
                    fix,
                )
        other = record.other
        if record.kind == "root" and other in record.trusted and record.root in plan.roots:
            # Generation order (old, new), whichever signs: a switch leaves bundles unchanged.
            extra = self.generation_root(record, other)
            if other == "new":
                plan.anchors[record.root].append(extra)
            else:
                plan.anchors[record.root].insert(0, extra)

    def generation_root(self, record: RotationRecord, gen: Gen) -> x509.Certificate:
        """The root certificate of generation ``gen`` of a root rotation, checked."""
        path = gen_dir(self.dir, record, gen) / "root" / ROOT_CERT
        fix = "run the same meshfed rotate command again, or meshfed rotate abort"
        if not path.is_file():
            raise PKIError(path, f"is missing (rotation {record.id}, {gen} root)", fix)
        cert = self._read_cert(path)
        want = record.fingerprints.get(gen, {}).get("root")
        if want is not None and fingerprint(cert) != want:
            raise PKIError(path, f"is not the {gen} root recorded in {RECORD_FILE}", fix)
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(path, "is not a self-signed root certificate", fix) from None
        return cert

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
        custody: Custody = "local",
    ) -> _Root:
        rdir = self.root_dir(req.mode, name)
        cert_path, key_path = rdir / ROOT_CERT, rdir / ROOT_KEY
        if custody == "split":
            return self._external_root(req, name, now, recorded)
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
        cert, key = self._read_pair(req, cert_path, key_path, f"remove {self.dir} to start over")
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(
                cert_path, "is not a self-signed root certificate", self._restore_fix()
            ) from None
        _check_ca_cert(cert_path, cert, now, f"remove {self.dir} to start over")
        self._check_recorded(
            cert_path,
            cert,
            recorded,
            f"restore the original root, or remove {self.dir} to start over",
        )
        return _Root(name=name, dir=rdir, cert=cert, key=key, new=False)

    def _external_root(
        self, req: TrustRequest, name: str, now: datetime, recorded: dict[str, Any] | None
    ) -> _Root:
        """Split custody: the root's certificate only; its key stays with the root holder."""
        rdir = self.root_dir(req.mode, name)
        cert_path = rdir / ROOT_CERT
        if not cert_path.is_file():
            raise PKIError(
                cert_path,
                "is missing: in split custody the root certificate arrives with the first "
                "imported intermediate",
                "meshfed pki request --mesh MESH SPEC --state DIR, have the root holder run "
                "meshfed pki sign CSR --state ROOTDIR, then meshfed pki import CERT --state DIR",
            )
        cert = self._read_cert(cert_path)
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(
                cert_path, "is not a self-signed root certificate", self._restore_fix()
            ) from None
        _check_ca_cert(cert_path, cert, now, "have the root holder rotate the root")
        self._check_recorded(
            cert_path,
            cert,
            recorded,
            "restore the original root (a new root comes only through meshfed rotate root)",
        )
        return _Root(name=name, dir=rdir, cert=cert, key=None, new=False)

    def _root_only(
        self, req: TrustRequest, name: str, now: datetime, recorded: dict[str, Any] | None
    ) -> _Root:
        """The root holder's root: created if missing, else loaded and checked with its key."""
        rdir = self.root_dir(req.mode, name)
        cert_path, key_path = rdir / ROOT_CERT, rdir / ROOT_KEY
        if _is_new(rdir):
            cn = f"{req.federation} root CA" if req.mode == "SharedRoot" else f"{name} root CA"
            key = generate_key(req.key_algorithm)
            return _Root(name, rdir, make_root_ca(cn, key, req.root_ttl, now), key, new=True)
        cert, key = self._read_pair(req, cert_path, key_path, f"remove {self.dir} to start over")
        _check_ca_cert(cert_path, cert, now, "rotate the root (meshfed rotate root)")
        self._check_recorded(cert_path, cert, recorded, "restore the original root")
        return _Root(name=name, dir=rdir, cert=cert, key=key, new=False)

    def _check_recorded(
        self,
        path: Path,
        cert: x509.Certificate,
        recorded: dict[str, Any] | None,
        fix: str,
        field: str = "fingerprint",
    ) -> None:
        """The certificate on disk is the one the state file recorded under ``field`` (when it
        recorded one): a CA is never silently replaced."""
        if recorded is not None and recorded.get(field) != fingerprint(cert):
            raise PKIError(
                path,
                f"fingerprint {fingerprint(cert)} differs from the one recorded in "
                f"{self._rel(self.dir / STATE_FILE)} ({recorded.get(field)})",
                fix,
            )

    def _mesh(
        self,
        req: TrustRequest,
        m: MeshTrustRequest,
        root: _Root,
        now: datetime,
        create: bool,
        recorded: dict[str, Any] | None,
        rotation: RotationRecord | None = None,
    ) -> _Mesh:
        mdir = self.mesh_dir(m.mesh)
        cert_path, key_path = mdir / CA_CERT, mdir / CA_KEY
        if _is_new(mdir) or (root.key is None and not cert_path.exists()):
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
                pending = self.dir / REQUESTS_DIR / m.mesh
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
            return _Mesh(req=m, dir=mdir, root=root, cert=cert, key=key, new=True)
        if root.new:  # SharedRoot: the root is gone, but this mesh has an intermediate
            raise PKIError(
                root.dir / ROOT_CERT,
                f"is missing but mesh {m.mesh} has an intermediate CA issued by it",
                f"restore {self._rel(root.dir)}, or remove {self.dir} to start over",
            )
        reissue = f"remove {self._rel(mdir)} to issue a new CA for mesh {m.mesh}"
        cert, key = self._read_pair(req, cert_path, key_path, reissue)
        try:
            cert.verify_directly_issued_by(root.cert)
        except (ValueError, TypeError, InvalidSignature):
            if rotation is not None:
                reissue = "run the same meshfed rotate command again, or meshfed rotate abort"
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
        self._check_recorded(
            cert_path, cert, recorded, f"restore the original file, or {reissue}", "ca_fingerprint"
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

    # --- for the rest of the pki package (rotation, split custody)

    def read_cert(self, path: Path) -> x509.Certificate:
        """One certificate, as the store reads its own (PKIError naming the file)."""
        return self._read_cert(path)

    def read_key(self, path: Path) -> PrivateKey:
        """A private key; PKIError if it is readable by others or unreadable."""
        return self._read_key(path)

    def install_dir(self, target: Path, files: dict[str, tuple[bytes, int]]) -> None:
        """Create directory ``target`` holding ``files`` (name -> data, mode) atomically."""
        _mkdir_private(target.parent)
        self._install_dir(target, files)

    def _read_pair(
        self, req: TrustRequest, cert_path: Path, key_path: Path, reissue: str
    ) -> tuple[x509.Certificate, PrivateKey]:
        """A CA certificate and its key, both present, matching, of the requested algorithm."""
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
        return cert, key

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
            if leftovers == [REQUESTS_DIR] and not must_exist:
                pending = sorted(p.name for p in (self.dir / REQUESTS_DIR).iterdir())
                raise PKIError(
                    self.dir / REQUESTS_DIR,
                    "holds intermediate request(s) for mesh(es) "
                    f"{', '.join(pending) or '(none)'} but no CA has been imported yet "
                    "(split custody)",
                    "have the root holder sign each CSR (meshfed pki sign), then "
                    "meshfed pki import CERT",
                )
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
        if state.get("custody", "local") not in ("local", "split", "root"):
            raise PKIError(path, f"unknown custody {state.get('custody')!r}", self._restore_fix())
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

    def _check_custody(self, state: dict[str, Any] | None, allowed: tuple[str, ...]) -> None:
        custody = (state or {}).get("custody", "local")
        if custody in allowed:
            return
        path = self.dir / STATE_FILE
        if custody == "root":
            raise PKIError(
                path,
                "this directory holds only the root CA (split custody, the root holder's side)",
                "sign intermediate CSRs here (meshfed pki sign CSR --state DIR); render and up "
                "run where the meshes' intermediates are",
            )
        raise PKIError(
            path,
            f"this directory holds meshes' CAs (custody {custody}), not only a root",
            "use the root holder's own directory",
        )

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
        if plan.custody == "root":
            # The root holder records which trust domain each mesh may be constrained to.
            for wanted in req.meshes:
                meshes[wanted.mesh] = {
                    "trust_domain": wanted.trust_domain,
                    "root": SHARED_ROOT_NAME if req.mode == "SharedRoot" else wanted.mesh,
                }
        state = {
            "version": STATE_VERSION,
            "federation": req.federation,
            "mode": req.mode,
            "key_algorithm": req.key_algorithm,
            "roots": roots,
            "meshes": meshes,
        }
        if plan.custody != "local":
            state["custody"] = plan.custody
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
    def _locked(self, shared: bool = False) -> Iterator[None]:
        try:
            fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            if not shared:
                raise
            yield  # a reader of a read-only state directory: nobody can write it either
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
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
    assert root.key is not None
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
    check_started(path, cert, now)


def check_started(path: Path, cert: x509.Certificate, now: datetime) -> None:
    """A kept certificate whose validity has not begun means a wrong clock, not a bad file."""
    if now < cert.not_valid_before_utc:
        raise PKIError(
            path,
            f"is not valid before {cert.not_valid_before_utc.isoformat()} (clock wrong?)",
            "check the system clock",
        )


_read = read_bytes
_mkdir_private = mkdir_private
_write_atomic = write_atomic
_fsync_dir = fsync_dir
