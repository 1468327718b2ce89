"""Split custody on the state store: ``pki request``, ``pki sign`` and ``pki import``.

Where things live:

- the mesh admin's state directory (custody ``split``): ``pki/_requests/<mesh>/`` holds a new
  intermediate's key (0600), its CSR and what it was made for, until the signed certificate is
  imported; then the key moves (within this directory) to ``pki/<mesh>/ca-key.pem``. During a
  rotation the request lives in the rotation's ``new/<mesh>/`` instead.
- the root holder's directory (custody ``root``, or ``local``): the root key; ``sign_request``
  checks a CSR against the trust domains recorded there and signs it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshfed.pki.certs import (
    cert_to_pem,
    fingerprint,
    intermediate_name,
    keys_match,
    permitted_uri_domains,
    sign_intermediate_ca,
)
from meshfed.pki.custody import (
    REQUEST_CSR,
    REQUEST_KEY,
    RequestMeta,
    check_csr,
    load_csr,
    parse_bundle,
    read_meta,
    write_request,
)
from meshfed.pki.errors import PKIError
from meshfed.pki.files import CERT_MODE, KEY_MODE, read_bytes, write_atomic
from meshfed.pki.layout import CA_CERT, CA_KEY, ROOT_CERT, ROOT_KEY, SHARED_ROOT_NAME, STATE_FILE
from meshfed.pki.material import TrustRequest
from meshfed.pki.record import REQUESTS_DIR, gen_dir, now_text, read_record
from meshfed.pki.state import STATE_VERSION
from meshfed.pki.store import PKIStore


def _state(store: PKIStore) -> dict[str, Any] | None:
    path = store.dir / STATE_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(read_bytes(path))
    except (OSError, ValueError, UnicodeDecodeError):
        raise PKIError(path, "is not readable JSON", "restore it") from None
    if not isinstance(doc, dict):
        raise PKIError(path, "is not a meshfed PKI state file", "restore it")
    return doc


def request_intermediate(store: PKIStore, req: TrustRequest, mesh: str, now: datetime) -> Path:
    """A key and CSR for ``mesh``'s intermediate, in this state directory; the CSR's path."""
    wanted = next((m for m in req.meshes if m.mesh == mesh), None)
    if wanted is None:
        raise PKIError("--mesh", f"mesh {mesh} is not in the spec")
    meta = RequestMeta(
        mesh, wanted.trust_domain, req.federation, req.mode, req.key_algorithm, now_text(now)
    )
    store.dir.mkdir(parents=True, exist_ok=True)
    with store.locked():
        record = read_record(store.dir)
        if record is not None and mesh in record.meshes and "prepare" not in record.done:
            if record.custody != "split":
                raise PKIError(
                    store.dir / "rotation.json",
                    f"rotation {record.id} creates its own intermediates (local custody)",
                    "just run meshfed rotate again",
                )
            folder = gen_dir(store.dir, record, "new") / mesh
            return write_request(folder, RequestMeta(**{**meta.__dict__, "rotation": record.id}))
        state = _state(store)
        if state is not None and state.get("custody", "local") != "split":
            raise PKIError(
                store.dir / STATE_FILE,
                f"keeps its root key here (custody {state.get('custody', 'local')})",
                "meshfed pki init creates intermediates here; split custody starts in a fresh "
                "state directory",
            )
        if (store.mesh_dir(mesh) / CA_CERT).is_file():
            raise PKIError(
                store.mesh_dir(mesh) / CA_CERT,
                f"mesh {mesh} already has an intermediate",
                f"replace it with meshfed rotate intermediate --mesh {mesh}",
            )
        return write_request(store.dir / REQUESTS_DIR / mesh, meta)


def sign_request(
    store: PKIStore,
    csr_data: bytes,
    source: str,
    ttl: timedelta,
    now: datetime,
    mesh: str | None = None,
) -> tuple[x509.Certificate, x509.Certificate]:
    """Check a CSR and sign it with the root kept here; (intermediate, root)."""
    state = _state(store)
    if state is None:
        raise PKIError(
            store.dir / STATE_FILE,
            "is missing: no root here",
            "create the root first: meshfed pki init-root SPEC --state DIR",
        )
    if state.get("custody", "local") == "split":
        raise PKIError(
            store.dir / STATE_FILE,
            "this directory does not hold the root key (split custody, mesh side)",
            "sign where the root is kept (--state of the root holder)",
        )
    meshes = state.get("meshes", {})
    trust_domains = {name: rec["trust_domain"] for name, rec in meshes.items()}
    csr = load_csr(csr_data, source)
    checked = check_csr(csr, source, trust_domains, state["key_algorithm"], mesh)
    root_name = meshes[checked.mesh].get("root") or (
        SHARED_ROOT_NAME if state["mode"] == "SharedRoot" else checked.mesh
    )
    rdir = store.root_dir(state["mode"], root_name)
    with store.locked(shared=True):
        record = read_record(store.dir)
        if record is not None and record.running in ("switch", "switch-back"):
            raise PKIError(store.dir / "rotation.json", "a root switch is under way", "retry")
        root = store.read_cert(rdir / ROOT_CERT)
        key = store.read_key(rdir / ROOT_KEY)
    if not keys_match(key, root):
        raise PKIError(rdir / ROOT_KEY, f"does not match {rdir / ROOT_CERT}")
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    cert = sign_intermediate_ca(
        checked.mesh,
        checked.trust_domain,
        checked.public_key,
        root,
        key,
        ttl,
        now,
        intermediate_name(checked.mesh, stamp),
    )
    return cert, root


def bundle_pem(cert: x509.Certificate, root: x509.Certificate) -> bytes:
    """What ``pki sign`` hands back: the intermediate, then the root."""
    return cert_to_pem(cert) + cert_to_pem(root)


@dataclass(frozen=True)
class Imported:
    mesh: str
    rotation: str | None
    """The rotation whose new intermediate this is; None: the mesh's first intermediate."""
    cert_path: Path
    root_fingerprint: str


def _check_signed(
    cert: x509.Certificate,
    root: x509.Certificate,
    domain: str,
    source: str,
    now: datetime,
) -> None:
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(source, "the intermediate is not signed by the root in the file") from None
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not bc.ca or bc.path_length != 0:
        raise PKIError(source, "is not a CA limited to pathlen 0", "sign with meshfed pki sign")
    if permitted_uri_domains(cert) != [domain]:
        raise PKIError(
            source,
            f"is not constrained to exactly the trust domain {domain}",
            "sign with meshfed pki sign",
        )
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise PKIError(source, "is not valid now", "check the clock, or sign again")


def import_certificate(store: PKIStore, data: bytes, source: str, now: datetime) -> Imported:
    """Install a signed intermediate beside the key its request left here."""
    cert, root = parse_bundle(data, source)
    if not store.dir.is_dir():
        raise PKIError(store.dir, "no PKI state here", "run meshfed pki request here first")
    with store.locked():
        record = read_record(store.dir)
        if record is not None and record.custody == "split":
            folder = gen_dir(store.dir, record, "new")
            for mesh in record.meshes:
                key_path = folder / mesh / REQUEST_KEY
                if not key_path.is_file():
                    continue
                key = store.read_key(key_path)
                if not keys_match(key, cert):
                    continue
                meta = read_meta(folder / mesh)
                _check_signed(cert, root, meta.trust_domain, source, now)
                old_root = record.fingerprints["old"]["root"]
                if record.kind == "intermediate" and fingerprint(root) != old_root:
                    raise PKIError(
                        source,
                        "is signed by another root than this mesh's; an intermediate rotation "
                        "keeps the root",
                        "sign with the current root",
                    )
                if record.kind == "root":
                    if fingerprint(root) == old_root:
                        raise PKIError(
                            source,
                            "is signed by the old root; a root rotation needs the new one",
                            "have the root holder rotate the root first "
                            "(meshfed rotate root --state ROOTDIR), then sign again",
                        )
                    root_path = folder / "root" / ROOT_CERT
                    if root_path.is_file() and read_bytes(root_path) != cert_to_pem(root):
                        raise PKIError(
                            source,
                            "is signed by another new root than the meshes imported before",
                            "sign every mesh's CSR with the same (new) root",
                        )
                    if not root_path.is_file():
                        root_path.parent.mkdir(mode=0o700, exist_ok=True)
                        write_atomic(root_path, cert_to_pem(root), CERT_MODE)
                target = folder / mesh / CA_CERT
                write_atomic(target, cert_to_pem(cert), CERT_MODE)
                return Imported(mesh, record.id, target, fingerprint(root))
        requests = store.dir / REQUESTS_DIR
        for folder in sorted(requests.iterdir()) if requests.is_dir() else []:
            key_path = folder / REQUEST_KEY
            if not key_path.is_file():
                continue
            key = store.read_key(key_path)
            if keys_match(key, cert):
                return _install_first(store, folder, cert, root, source, now)
    raise PKIError(
        source,
        "no pending request in this state directory holds the key of this certificate",
        "import it where meshfed pki request made the CSR (--state), or make a new request",
    )


def _install_first(
    store: PKIStore,
    folder: Path,
    cert: x509.Certificate,
    root: x509.Certificate,
    source: str,
    now: datetime,
) -> Imported:
    meta = read_meta(folder)
    _check_signed(cert, root, meta.trust_domain, source, now)
    state = _state(store) or {
        "version": STATE_VERSION,
        "federation": meta.federation,
        "mode": meta.mode,
        "key_algorithm": meta.key_algorithm,
        "custody": "split",
        "roots": {},
        "meshes": {},
    }
    for key, want in (
        ("federation", meta.federation),
        ("mode", meta.mode),
        ("key_algorithm", meta.key_algorithm),
    ):
        if state.get(key) != want:
            raise PKIError(
                store.dir / STATE_FILE,
                f"{key} is {state.get(key)!r}, the request was made for {want!r}",
                "make the request again with the federation's spec",
            )
    root_name = SHARED_ROOT_NAME if meta.mode == "SharedRoot" else meta.mesh
    recorded = state["roots"].get(root_name)
    if recorded is not None and recorded.get("fingerprint") != fingerprint(root):
        raise PKIError(
            source,
            f"is signed by a root other than the one this directory trusts for {meta.mesh}",
            "sign with the federation's root (a new root comes through meshfed rotate root)",
        )
    mdir = store.mesh_dir(meta.mesh)
    if (mdir / CA_CERT).exists():
        raise PKIError(mdir / CA_CERT, f"mesh {meta.mesh} already has an intermediate")
    files = {
        CA_CERT: (cert_to_pem(cert), CERT_MODE),
        CA_KEY: (read_bytes(folder / REQUEST_KEY), KEY_MODE),
    }
    if meta.mode == "Federated":
        files[f"root/{ROOT_CERT}"] = (cert_to_pem(root), CERT_MODE)
    else:
        rdir = store.root_dir("SharedRoot", SHARED_ROOT_NAME)
        if not (rdir / ROOT_CERT).exists():
            store.install_dir(rdir, {ROOT_CERT: (cert_to_pem(root), CERT_MODE)})
    if mdir.exists() and not any(mdir.iterdir()):
        mdir.rmdir()
    store.install_dir(mdir, files)
    state["roots"][root_name] = {"fingerprint": fingerprint(root)}
    state["meshes"][meta.mesh] = {
        "trust_domain": meta.trust_domain,
        "root": root_name,
        "ca_fingerprint": fingerprint(cert),
    }
    data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
    write_atomic(store.dir / STATE_FILE, data, CERT_MODE)
    shutil.rmtree(folder)
    requests = store.dir / REQUESTS_DIR
    if requests.is_dir() and not any(requests.iterdir()):
        requests.rmdir()
    return Imported(meta.mesh, None, mdir / CA_CERT, fingerprint(root))


def pending_request(store: PKIStore, mesh: str) -> Path | None:
    path = store.dir / REQUESTS_DIR / mesh / REQUEST_CSR
    return path if path.is_file() else None
