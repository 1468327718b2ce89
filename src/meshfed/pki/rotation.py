"""A rotation's CA material: the file operations behind each step (see pki/record.py).

Every operation here is idempotent, so a step interrupted at any point is simply done again:
generations are written as whole directories (built beside, renamed into place), single files
atomically, and ``install`` (switch) copies a generation's files into the usual places, which
repeated gives the same result. The orchestration (which step, propagation, verification) is
`meshfed.rotation`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshfed.pki.certs import (
    cert_to_pem,
    fingerprint,
    intermediate_name,
    keys_match,
    make_intermediate_ca,
    make_root_ca,
    permitted_uri_domains,
)
from meshfed.pki.custody import REQUEST_CSR, RequestMeta, write_request
from meshfed.pki.errors import PKIError
from meshfed.pki.files import CERT_MODE, KEY_MODE, read_bytes, write_atomic
from meshfed.pki.keys import PrivateKey, generate_key, key_to_pem
from meshfed.pki.layout import CA_CERT, CA_KEY, ROOT_CERT, ROOT_KEY, SHARED_ROOT_NAME, STATE_FILE
from meshfed.pki.material import MeshCA, TrustRequest
from meshfed.pki.record import (
    ROTATION_DIR,
    Gen,
    Kind,
    RotationRecord,
    archive_record,
    gen_dir,
    now_text,
    read_record,
    write_record,
)
from meshfed.pki.store import PKIStore

_FIX = "run the same meshfed rotate command again, or meshfed rotate abort"


def _label(record: RotationRecord) -> str:
    """The generation label in new CA names: the rotation's start (e.g. 20260301T120000Z)."""
    return record.id.split("-", 1)[0]


def _state(store: PKIStore) -> dict[str, Any]:
    path = store.dir / STATE_FILE
    try:
        doc = json.loads(read_bytes(path))
    except (OSError, ValueError, UnicodeDecodeError):
        raise PKIError(path, "is missing or unreadable", "run meshfed pki init first") from None
    if not isinstance(doc, dict):
        raise PKIError(path, "is not a meshfed PKI state file")
    return doc


def begin(
    store: PKIStore,
    req: TrustRequest,
    kind: Kind,
    mesh: str | None,
    spec: str | None,
    now: datetime,
) -> RotationRecord:
    """Record a new rotation (nothing else changes yet); PKIError if it cannot be done."""
    with store.locked():
        existing = read_record(store.dir)
        if existing is not None:
            raise PKIError(
                store.dir / "rotation.json",
                f"rotation {existing.id} ({existing.kind}) is under way",
                "finish it (meshfed rotate ...) or meshfed rotate abort",
            )
        state = _state(store)
        custody = store.custody()
        names = {m.mesh for m in req.meshes}
        if mesh is not None and mesh not in names:
            raise PKIError(
                "--mesh",
                f"mesh {mesh} is not in the spec",
                "use one of: " + ", ".join(sorted(names)),
            )
        if kind == "intermediate":
            if custody == "root":
                raise PKIError(
                    store.dir,
                    "holds only the root; intermediates are rotated where they are kept",
                    "run meshfed rotate intermediate in the mesh admin's state directory",
                )
            if mesh is None:
                raise PKIError("--mesh", "which mesh's intermediate?", "pass --mesh MESH")
            root = SHARED_ROOT_NAME if req.mode == "SharedRoot" else mesh
            meshes = [mesh]
        elif req.mode == "SharedRoot":
            if mesh is not None:
                raise PKIError(
                    "--mesh",
                    "SharedRoot has one root for every mesh",
                    "omit --mesh (every mesh gets a new intermediate under the new root)",
                )
            root = SHARED_ROOT_NAME
            meshes = [] if custody == "root" else sorted(names)
        else:
            if mesh is None:
                raise PKIError("--mesh", "Federated: every mesh has its own root", "pass --mesh")
            root = mesh
            meshes = [] if custody == "root" else [mesh]
        recorded_roots = state.get("roots", {})
        recorded_meshes = state.get("meshes", {})
        if root not in recorded_roots:
            raise PKIError(store.dir / STATE_FILE, f"has no root {root}", "run meshfed pki init")
        old: dict[str, str] = {"root": recorded_roots[root]["fingerprint"]}
        for m in meshes:
            fp = recorded_meshes.get(m, {}).get("ca_fingerprint")
            if fp is None:
                raise PKIError(store.dir / STATE_FILE, f"has no CA of mesh {m}", "run meshfed up")
            old[m] = fp
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        record = RotationRecord(
            id=f"{stamp}-{kind}-{mesh or 'all'}",
            kind=kind,
            root=root,
            meshes=meshes,
            mesh=mesh,
            custody=custody,
            spec=spec,
            started=now_text(now),
            updated=now_text(now),
            fingerprints={"old": old},
        )
        record.material = {
            gen: str(gen_dir(store.dir, record, gen).relative_to(store.dir))
            for gen in ("old", "new")
        }
        write_record(store.dir, record)
        return record


# --- generations -------------------------------------------------------------------------------


def _root_dir(store: PKIStore, req: TrustRequest, record: RotationRecord) -> Path:
    return store.root_dir(req.mode, record.root)


def _files_of_current(
    store: PKIStore, req: TrustRequest, record: RotationRecord
) -> dict[str, tuple[bytes, int]]:
    files: dict[str, tuple[bytes, int]] = {}
    if record.kind == "root":
        rdir = _root_dir(store, req, record)
        files[f"root/{ROOT_CERT}"] = (read_bytes(rdir / ROOT_CERT), CERT_MODE)
        if (rdir / ROOT_KEY).is_file():
            files[f"root/{ROOT_KEY}"] = (read_bytes(rdir / ROOT_KEY), KEY_MODE)
    for m in record.meshes:
        mdir = store.mesh_dir(m)
        files[f"{m}/{CA_CERT}"] = (read_bytes(mdir / CA_CERT), CERT_MODE)
        files[f"{m}/{CA_KEY}"] = (read_bytes(mdir / CA_KEY), KEY_MODE)
    return files


def _current_root_and_key(
    store: PKIStore, req: TrustRequest, record: RotationRecord
) -> tuple[x509.Certificate, PrivateKey | None]:
    rdir = _root_dir(store, req, record)
    cert = store.read_cert(rdir / ROOT_CERT)
    key = store.read_key(rdir / ROOT_KEY) if (rdir / ROOT_KEY).is_file() else None
    return cert, key


@dataclass(frozen=True)
class Prepared:
    waiting: list[Path]
    """Split custody: CSRs still to be signed and imported (empty: prepared)."""


def prepare(store: PKIStore, req: TrustRequest, record: RotationRecord, now: datetime) -> Prepared:
    """Keep a copy of the old generation; create the new one (or its CSRs); record both."""
    with store.locked():
        old_dir = gen_dir(store.dir, record, "old")
        if not old_dir.exists():
            store.install_dir(old_dir, _files_of_current(store, req, record))
        new_dir = gen_dir(store.dir, record, "new")
        label = _label(record)
        if record.custody == "split":
            waiting = []
            for m in record.meshes:
                folder = new_dir / m
                if (folder / CA_CERT).is_file():
                    continue
                domain = next(x.trust_domain for x in req.meshes if x.mesh == m)
                meta = RequestMeta(
                    m, domain, req.federation, req.mode, req.key_algorithm, now_text(now), record.id
                )
                waiting.append(write_request(folder, meta))
            if waiting:
                return Prepared(waiting)
        elif not new_dir.exists():
            root_cert, root_key = _current_root_and_key(store, req, record)
            files: dict[str, tuple[bytes, int]] = {}
            if record.kind == "root":
                base = (
                    f"{req.federation} root CA"
                    if req.mode == "SharedRoot"
                    else f"{record.root} root CA"
                )
                root_key = generate_key(req.key_algorithm)
                root_cert = make_root_ca(f"{base} {label}", root_key, req.root_ttl, now)
                files[f"root/{ROOT_CERT}"] = (cert_to_pem(root_cert), CERT_MODE)
                files[f"root/{ROOT_KEY}"] = (key_to_pem(root_key), KEY_MODE)
            if root_key is None:
                raise PKIError(
                    _root_dir(store, req, record) / ROOT_KEY,
                    "is missing: the root key is needed to sign the new intermediate",
                    "restore it, or use split custody (meshfed pki request/sign/import)",
                )
            for m in record.meshes:
                domain = next(x.trust_domain for x in req.meshes if x.mesh == m)
                key = generate_key(req.key_algorithm)
                cert = make_intermediate_ca(
                    m,
                    domain,
                    key,
                    root_cert,
                    root_key,
                    req.intermediate_ttl,
                    now,
                    intermediate_name(m, label),
                )
                files[f"{m}/{CA_CERT}"] = (cert_to_pem(cert), CERT_MODE)
                files[f"{m}/{CA_KEY}"] = (key_to_pem(key), KEY_MODE)
            store.install_dir(new_dir, files)
        new_fps = _check_generation(store, req, record, "new", now)
        record.fingerprints["new"] = new_fps
        write_record(store.dir, record)
        return Prepared([])


def _check_generation(
    store: PKIStore, req: TrustRequest, record: RotationRecord, gen: Gen, now: datetime
) -> dict[str, str]:
    """Check a generation's files; their fingerprints."""
    folder = gen_dir(store.dir, record, gen)
    if record.kind == "root":
        root = store.generation_root(record, gen)
        if gen == "new" and fingerprint(root) == record.fingerprints["old"]["root"]:
            raise PKIError(
                folder / "root" / ROOT_CERT,
                "is the old root: a root rotation needs a new one",
                "have the root holder rotate the root first (meshfed rotate root --state ROOTDIR)",
            )
    else:
        root, _ = _current_root_and_key(store, req, record)
    fps = {"root": fingerprint(root)}
    for m in record.meshes:
        domain = next(x.trust_domain for x in req.meshes if x.mesh == m)
        cert_path, key_path = folder / m / CA_CERT, folder / m / CA_KEY
        cert = store.read_cert(cert_path)
        key = store.read_key(key_path)
        if not keys_match(key, cert):
            raise PKIError(key_path, f"does not match {cert_path}", _FIX)
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(cert_path, f"is not signed by the {gen} root", _FIX) from None
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca or bc.path_length != 0 or permitted_uri_domains(cert) != [domain]:
            raise PKIError(
                cert_path,
                f"is not a pathlen-0 CA constrained to {domain}",
                "import a certificate signed by meshfed pki sign",
            )
        if now > cert.not_valid_after_utc:
            raise PKIError(cert_path, "has expired", _FIX)
        fps[m] = fingerprint(cert)
    return fps


def generation_ca(
    store: PKIStore, req: TrustRequest, record: RotationRecord, gen: Gen, mesh: str
) -> MeshCA:
    """Mesh ``mesh``'s CA of generation ``gen`` (with its key): for test certificates."""
    folder = gen_dir(store.dir, record, gen)
    for path in (folder / mesh / CA_CERT, folder / mesh / CA_KEY):
        if not path.is_file():
            raise PKIError(path, f"is missing ({gen} generation of rotation {record.id})", _FIX)
    cert = store.read_cert(folder / mesh / CA_CERT)
    key = store.read_key(folder / mesh / CA_KEY)
    if record.kind == "root":
        root = store.generation_root(record, gen)
    else:
        root, _ = _current_root_and_key(store, req, record)
    domain = next(x.trust_domain for x in req.meshes if x.mesh == mesh)
    return MeshCA(
        mesh=mesh,
        trust_domain=domain,
        key_algorithm=req.key_algorithm,
        root_name=record.root,
        root_cert=root,
        ca_cert=cert,
        ca_key=key,
        chain=[cert, root],
    )


def generation_root(
    store: PKIStore, req: TrustRequest, record: RotationRecord, gen: Gen
) -> x509.Certificate:
    if record.kind == "root":
        return store.generation_root(record, gen)
    return _current_root_and_key(store, req, record)[0]


# --- steps that change files -------------------------------------------------------------------


def set_trusted(store: PKIStore, record: RotationRecord, trusted: list[Gen]) -> None:
    """Whose roots the bundles carry (the derived files follow at the next ``ensure``)."""
    with store.locked():
        record.trusted = list(trusted)
        write_record(store.dir, record)


def install(
    store: PKIStore,
    req: TrustRequest,
    record: RotationRecord,
    gen: Gen,
    midway: Callable[[], None] | None = None,
) -> None:
    """Make generation ``gen`` the signing one: copy its files into the usual places.

    The caller records ``running = "switch"`` first; until ``signing`` is recorded, loads of
    the store refuse (the files are between generations), and this is simply done again.
    """
    folder = gen_dir(store.dir, record, gen)
    with store.locked():
        state = _state(store)
        if record.kind == "root":
            rdir = _root_dir(store, req, record)
            cert = read_bytes(folder / "root" / ROOT_CERT)
            write_atomic(rdir / ROOT_CERT, cert, CERT_MODE)
            if (folder / "root" / ROOT_KEY).is_file():
                write_atomic(rdir / ROOT_KEY, read_bytes(folder / "root" / ROOT_KEY), KEY_MODE)
            state["roots"][record.root] = {"fingerprint": record.fingerprints[gen]["root"]}
        if midway is not None:
            midway()  # tests: the files are between generations here
        for m in record.meshes:
            mdir = store.mesh_dir(m)
            write_atomic(mdir / CA_KEY, read_bytes(folder / m / CA_KEY), KEY_MODE)
            write_atomic(mdir / CA_CERT, read_bytes(folder / m / CA_CERT), CERT_MODE)
            state["meshes"][m]["ca_fingerprint"] = record.fingerprints[gen][m]
        data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
        write_atomic(store.dir / STATE_FILE, data, CERT_MODE)
        record.signing = gen
        record.running = None
        write_record(store.dir, record)


def destroy_keys(store: PKIStore, record: RotationRecord, gen: Gen) -> list[Path]:
    """Remove generation ``gen``'s private keys (retired or discarded); the paths removed."""
    folder = gen_dir(store.dir, record, gen)
    removed = []
    with store.locked():
        for path in sorted(folder.rglob("*-key.pem")) if folder.is_dir() else []:
            path.unlink()
            removed.append(path)
    return removed


def finish(store: PKIStore, record: RotationRecord, outcome: str, now: datetime) -> Path:
    """Archive the record and remove the rotation's material (keys are destroyed first)."""
    with store.locked():
        record.finished = now_text(now)
        record.outcome = outcome
        record.running = None
        shutil.rmtree(store.dir / ROTATION_DIR / record.id, ignore_errors=True)
        with_dir = store.dir / ROTATION_DIR
        if with_dir.is_dir() and not any(with_dir.iterdir()):
            with_dir.rmdir()
        return archive_record(store.dir, record)


def waiting_requests(store: PKIStore, record: RotationRecord) -> list[Path]:
    """Split custody: CSRs of the rotation whose certificate has not been imported yet."""
    folder = gen_dir(store.dir, record, "new")
    return [
        folder / m / REQUEST_CSR
        for m in record.meshes
        if (folder / m / REQUEST_CSR).is_file() and not (folder / m / CA_CERT).is_file()
    ]


def cast_gen(value: str) -> Gen:
    return cast(Gen, value)
