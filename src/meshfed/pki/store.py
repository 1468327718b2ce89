"""The PKI state store: ``STATE/pki/``, the only stateful part of meshfed's PKI.

Where things live is `meshfed.pki.layout`; ``state.json`` is `meshfed.pki.state`; each CA's files
are read and checked by `meshfed.pki.cafiles`; the values handed out are `meshfed.pki.material`.
This module puts them together under the store's lock.

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
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshfed.pki.cafiles import CAFiles, MeshCAFiles, RootCA, check_ca_cert, root_files
from meshfed.pki.certs import as_utc, cert_to_pem, certs_to_pem, fingerprint, keys_match
from meshfed.pki.errors import PKIError
from meshfed.pki.files import (
    CERT_MODE,
    DIR_MODE,
    KEY_MODE,
    TMP_PREFIX,
    fsync_dir,
    mkdir_private,
    read_bytes,
    write_atomic,
)
from meshfed.pki.keys import PrivateKey, key_to_pem
from meshfed.pki.layout import (
    CA_CERT,
    CA_KEY,
    CHAIN,
    LOCK_FILE,
    PEERS_DIR,
    ROOT_CERT,
    SHARED_ROOT_NAME,
    PKILayout,
    TrustMode,
)
from meshfed.pki.material import MeshCA, PKIMaterial, TrustRequest
from meshfed.pki.record import RECORD_FILE, Custody, Gen, RotationRecord, read_record
from meshfed.pki.state import State, check_custody, read_state, recorded_custody, write_state

_SWITCHING = ("switch", "switch-back")
"""Rotation steps that move CA files: nobody reads the CA while one is under way."""


@dataclass(repr=False)
class _Loaded:
    """Everything loaded or generated (in memory) by one ensure/load call."""

    roots: dict[str, RootCA] = field(default_factory=dict)
    meshes: dict[str, MeshCAFiles] = field(default_factory=dict)
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
        self.layout = PKILayout(Path(state_dir))
        self.cas = CAFiles(self.layout)
        self.state_dir = self.layout.state_dir
        self.dir = self.layout.dir
        self._made: list[Path] | None = None  # what the current writing call created

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
        with self._writing(), self._locked():
            self._remove_stale_tmp()
            state = read_state(self.layout, req, must_exist=False)
            check_custody(self.layout, state, ("local", "split"))
            plan = self._collect(req, now, create=True, state=state)
            # Files first, the record last: a record never names a CA that is not on disk
            # (an unrecorded CA found on disk is adopted by the next run).
            self._write_new(req, plan)
            self._record(req, plan, state)
            return plan.material(req)

    def ensure_roots(self, req: TrustRequest, now: datetime | None = None) -> PKIMaterial:
        """The root holder's directory in split custody: only the root(s), with their keys.

        Creates missing roots (custody ``root``); the material has no meshes. The trust domains
        of the request's meshes are recorded, so ``sign_request`` can check what a CSR asks for.
        """
        req.validate()
        now = as_utc(now) if now is not None else datetime.now(UTC)
        with self._writing(), self._locked():
            self._remove_stale_tmp()
            state = read_state(self.layout, req, must_exist=False)
            if state is None:
                state = {"custody": "root"}
            check_custody(self.layout, state, ("root",))
            plan = _Loaded(custody="root", rotation=self._rotation_record())
            recorded = state.get("roots", {})
            names = [SHARED_ROOT_NAME] if req.mode == "SharedRoot" else [m.mesh for m in req.meshes]
            for name in names:
                plan.roots[name] = self.cas.root_only(req, name, now, recorded.get(name))
            self._overlay(req, plan)
            for root in plan.roots.values():
                if root.new:
                    self._install_dir(root.dir, root_files(root))
            self._record(req, plan, state)
            return plan.material(req)

    def custody(self) -> Custody:
        """The custody recorded in ``state.json`` (``local`` if there is none yet)."""
        return recorded_custody(self.layout)

    def rotation(self) -> RotationRecord | None:
        """The rotation in progress, if any."""
        return read_record(self.dir)

    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """The store's lock: exclusive for writers (ensure, rotation steps), shared to read."""
        mkdir_private(self.dir)
        with self._locked(shared):
            yield

    def load(self, req: TrustRequest, now: datetime | None = None) -> PKIMaterial:
        """Load and check existing material; PKIError if anything is missing. Writes nothing."""
        req.validate()
        now = as_utc(now) if now is not None else datetime.now(UTC)
        if not self.dir.is_dir():
            raise PKIError(self.dir, "no PKI state", "create it first (PKIStore.ensure)")
        with self._locked(shared=True):
            state = read_state(self.layout, req, must_exist=True)
            check_custody(self.layout, state, ("local", "split"))
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
            path = self.layout.state_file
            try:
                state = json.loads(read_bytes(path))
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
            cert = self.cas.read_cert(mdir / CA_CERT)
            key = self.cas.read_key(mdir / CA_KEY)
            root = self.cas.read_cert(self.root_dir(mode, root_name) / ROOT_CERT)
        if not keys_match(key, cert):
            raise PKIError(mdir / CA_KEY, f"private key does not match {CA_CERT}")
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(mdir / CA_CERT, "is not signed by the recorded root") from None
        check_ca_cert(mdir / CA_CERT, cert, now, "run meshfed up")
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
        return self.layout.root_dir(mode, root_name)

    def mesh_dir(self, mesh: str) -> Path:
        return self.layout.mesh_dir(mesh)

    # --- for the rest of the pki package (rotation, split custody, anchors)

    def read_cert(self, path: Path) -> x509.Certificate:
        """One certificate, as the store reads its own (PKIError naming the file)."""
        return self.cas.read_cert(path)

    def read_key(self, path: Path) -> PrivateKey:
        """A private key; PKIError if it is readable by others or unreadable."""
        return self.cas.read_key(path)

    def generation_root(self, record: RotationRecord, gen: Gen) -> x509.Certificate:
        """The root certificate of generation ``gen`` of a root rotation, checked."""
        return self.cas.generation_root(record, gen)

    def install_dir(self, target: Path, files: dict[str, tuple[bytes, int]]) -> None:
        """Create directory ``target`` holding ``files`` (name -> data, mode) atomically."""
        mkdir_private(target.parent)
        self._install_dir(target, files)

    # --- loading and checking (read-only)

    def _collect(
        self, req: TrustRequest, now: datetime, *, create: bool, state: dict[str, Any] | None
    ) -> _Loaded:
        state_roots: dict[str, Any] = (state or {}).get("roots", {})
        state_meshes: dict[str, Any] = (state or {}).get("meshes", {})
        custody: Custody = (state or {}).get("custody", "local")
        plan = _Loaded(custody=custody, rotation=self._rotation_record())
        if plan.rotation is not None and plan.rotation.running in _SWITCHING:
            raise PKIError(
                self.dir / RECORD_FILE,
                f"rotation step {plan.rotation.running} was interrupted: the CA files are between "
                "two generations",
                "run the same meshfed rotate command again to finish it, or meshfed rotate abort",
            )
        if req.mode == "SharedRoot":
            root = self.cas.root(
                req, SHARED_ROOT_NAME, now, create, state_roots.get("root"), custody
            )
            plan.roots[root.name] = root
        for m in req.meshes:
            if req.mode == "Federated":
                root = self.cas.root(req, m.mesh, now, create, state_roots.get(m.mesh), custody)
                plan.roots[root.name] = root
            plan.meshes[m.mesh] = self.cas.mesh(
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

    def _overlay(self, req: TrustRequest, plan: _Loaded) -> None:
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
            extra = self.cas.generation_root(record, other)
            if other == "new":
                plan.anchors[record.root].append(extra)
            else:
                plan.anchors[record.root].insert(0, extra)

    def _derived(self, plan: _Loaded, path: Path, data: bytes, mesh: str, new: bool) -> None:
        """A file derived from checked material: must match if present; noted if missing."""
        if not new and path.exists():
            if read_bytes(path) != data:
                what = (
                    f"is not the current root of mesh {path.stem}"
                    if path.parent.name == PEERS_DIR
                    else f"does not match {CA_CERT} and the root of mesh {mesh}"
                )
                raise PKIError(path, what, f"remove {path} to have it rewritten")
            return
        plan.missing[path] = data

    # --- writing (only after everything existing has been checked)

    def _record(self, req: TrustRequest, plan: _Loaded, old: State | None) -> None:
        write_state(
            self.layout,
            req,
            {name: root.cert for name, root in plan.roots.items()},
            {name: (m.req.trust_domain, m.root.name, m.cert) for name, m in plan.meshes.items()},
            plan.custody,
            old,
        )

    def _write_new(self, req: TrustRequest, plan: _Loaded) -> None:
        if req.mode == "SharedRoot":
            root = plan.roots[SHARED_ROOT_NAME]
            if root.new:
                self._install_dir(root.dir, root_files(root))
        for m in plan.meshes.values():
            if not m.new:
                continue
            files = {
                CA_CERT: (cert_to_pem(m.cert), CERT_MODE),
                CA_KEY: (key_to_pem(m.key), KEY_MODE),
            }
            if req.mode == "Federated":
                files.update({f"root/{k}": v for k, v in root_files(m.root).items()})
            self._install_dir(m.dir, files)
        for path, data in sorted(plan.missing.items()):
            if not path.parent.exists():
                mkdir_private(path.parent)
                self._created(path.parent)
            write_atomic(path, data, CERT_MODE)
            self._created(path)

    def _install_dir(self, target: Path, files: dict[str, tuple[bytes, int]]) -> None:
        """Create `target` with `files` atomically: build it beside, then rename it into place."""
        tmp = self.dir / f"{TMP_PREFIX}{target.name}-{secrets.token_hex(4)}"
        os.mkdir(tmp, DIR_MODE)
        try:
            for rel, (data, mode) in files.items():
                path = tmp / rel
                mkdir_private(path.parent)
                write_atomic(path, data, mode)
            target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.rename(tmp, target)  # target is missing or an empty directory
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._created(target)
        fsync_dir(target.parent)

    def _created(self, path: Path) -> None:
        if self._made is not None:
            self._made.append(path)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One writing call (ensure, ensure_roots): all of it, or nothing.

        Creates the state and PKI directories; if the call fails, removes every CA directory
        and file it created and, when it made them, the PKI directory and its lock, so a failed
        ``pki init`` leaves nothing behind (not a lone ``pki/.lock``, not half a CA).
        """
        made_state = not self.state_dir.exists()
        made_pki = not self.dir.exists()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        mkdir_private(self.dir)
        self._made = []
        try:
            yield
        except BaseException:
            for path in reversed(self._made):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            if made_pki and {p.name for p in self.dir.iterdir()} <= {LOCK_FILE}:
                (self.dir / LOCK_FILE).unlink(missing_ok=True)
                self.dir.rmdir()
            if made_state:
                with contextlib.suppress(OSError):
                    self.state_dir.rmdir()  # only when empty
            raise
        finally:
            self._made = None

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
        for p in self.dir.glob(f"{TMP_PREFIX}*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
