"""The PKI state of a federation kept in a Secret of the management cluster.

The PKI store works on a state directory (``--state``). In controller mode that directory is
checked out of the Secret ``<namespace>/meshfed-state-<federation>`` into a private directory
(0700, keys 0600; in the Deployment an in-memory volume) for one reconcile, and every change
the store made is written back, with the Secret's resourceVersion as a precondition: two
writers never overwrite each other. Each file is one key (its path escaped into the characters
a Secret key allows) and its mode is recorded in an annotation, so a checkout restores it.

The store itself does not change: the same files, the same checks, the same split custody. A
root key held offline is simply never in the Secret; ``meshfed pki request/import --kube``
work on the same Secret as the controller.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from meshfed.kube.client import KubeClient, Obj
from meshfed.kube.errors import KubeError
from meshfed.pki.files import mkdir_private, write_atomic

CONTROLLER_MANAGER = "meshfed-controller"


MODES_ANNOTATION = "meshfed.dev/file-modes"
STATE_LABEL = "meshfed.dev/pki-state-of"
MAX_BYTES = 900 * 1024
"""A Secret holds at most 1 MiB; keep room for metadata."""
_SKIP = re.compile(r"(^|/)(\.lock|\.tmp-[^/]*)$")
_PLAIN = re.compile(r"[-.A-Za-z0-9]")


def state_secret_name(federation: str) -> str:
    return f"meshfed-state-{federation}"


def encode_key(path: str) -> str:
    """A relative path as a Secret key: ``[-.A-Za-z0-9]`` kept, anything else ``_xx`` (hex;
    ``/`` becomes ``_2f``)."""
    return "".join(
        c if _PLAIN.fullmatch(c) else "".join(f"_{b:02x}" for b in c.encode()) for c in path
    )


def decode_key(key: str) -> str:
    out = bytearray()
    i = 0
    while i < len(key):
        if key[i] == "_":
            out.append(int(key[i + 1 : i + 3], 16))
            i += 3
        else:
            out += key[i].encode()
            i += 1
    path = out.decode()
    if path.startswith("/") or ".." in Path(path).parts:
        raise KubeError(f"state Secret holds an unsafe path {path!r}")
    return path


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (relative path -> content, mode), lock and temp files left out."""
    out: dict[str, tuple[bytes, int]] = {}
    if not root.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if _SKIP.search(rel) or path.is_symlink():
                continue
            out[rel] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return out


def secret_body(federation: str, namespace: str, files: dict[str, tuple[bytes, int]]) -> Obj:
    data = {
        encode_key(rel): base64.b64encode(content).decode() for rel, (content, _) in files.items()
    }
    modes = {encode_key(rel): f"{mode:04o}" for rel, (_, mode) in files.items()}
    size = sum(len(v) for v in data.values())
    if size > MAX_BYTES:
        raise KubeError(
            f"the PKI state of federation {federation} is {size // 1024} KiB, more than a Secret "
            "holds; archived rotations under pki/_rotations can be removed"
        )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": state_secret_name(federation),
            "namespace": namespace,
            # Not meshfed's object labels: the management cluster may also be a mesh's
            # cluster, and pruning there must never see the federation's CA as its own.
            "labels": {
                "app.kubernetes.io/managed-by": CONTROLLER_MANAGER,
                STATE_LABEL: federation,
            },
            "annotations": {MODES_ANNOTATION: json.dumps(modes, sort_keys=True)},
        },
        "data": data,
    }


def files_of(secret: Obj) -> dict[str, tuple[bytes, int]]:
    meta = secret.get("metadata") or {}
    try:
        modes = json.loads((meta.get("annotations") or {}).get(MODES_ANNOTATION, "{}"))
    except ValueError:
        raise KubeError(f"state Secret {meta.get('name')}: unreadable {MODES_ANNOTATION}") from None
    out: dict[str, tuple[bytes, int]] = {}
    for key, value in (secret.get("data") or {}).items():
        mode = int(str(modes.get(key, "0600")), 8) & 0o777
        out[decode_key(key)] = (base64.b64decode(value), mode)
    return out


class SecretState:
    """One federation's PKI state: its Secret, checked out into ``work_dir/<federation>``."""

    def __init__(self, client: KubeClient, namespace: str, federation: str, work_dir: Path) -> None:
        self.client = client
        self.namespace = namespace
        self.federation = federation
        self.dir = work_dir / federation
        self._version: str | None = None
        self._checked_out: dict[str, tuple[bytes, int]] = {}

    def checkout(self) -> Path:
        """A fresh private directory holding exactly the Secret's files."""
        secret = self.client.get("v1", "Secret", state_secret_name(self.federation), self.namespace)
        self._version = None if secret is None else secret["metadata"].get("resourceVersion")
        files = {} if secret is None else files_of(secret)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        mkdir_private(self.dir)
        for rel, (content, mode) in sorted(files.items()):
            path = self.dir / rel
            mkdir_private(path.parent)
            # Not synced: the Secret is what lasts, this copy is removed after the reconcile
            # (two syncs per file took 0.05-2.4 s of a reconcile at ten meshes under load).
            write_atomic(path, content, mode, durable=False)
        self._checked_out = files
        return self.dir

    def commit(self) -> bool:
        """Write the directory back if it changed (False: nothing to write). KubeError 409 when
        someone else wrote the Secret since the checkout."""
        files = snapshot(self.dir)
        if files == self._checked_out:
            return False
        body = secret_body(self.federation, self.namespace, files)
        if self._version is None:
            created = self.client.create(body)
            self._version = created["metadata"].get("resourceVersion")
        else:
            body["metadata"]["resourceVersion"] = self._version
            replaced = self.client.replace(body, manager=CONTROLLER_MANAGER)
            self._version = replaced["metadata"].get("resourceVersion")
        self._checked_out = files
        return True

    def discard(self) -> None:
        """Remove the checked-out directory (the keys leave the disk) and the copy of its
        files kept to compare at commit (the keys leave the process's memory too: at ten
        meshes that copy was 1.8 MB an idle controller held for nothing)."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self._checked_out = {}

    @contextlib.contextmanager
    def session(self) -> Iterator[Path]:
        """Check out, yield the directory, write back what changed (also when the body raised:
        the store writes each file atomically, and what it created must not be lost), clean up."""
        path = self.checkout()
        try:
            yield path
        finally:
            try:
                self.commit()
            finally:
                self.discard()
