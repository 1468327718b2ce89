"""Where the PKI state lives: the files and directories under ``STATE/pki/``.

    pki/state.json                       federation, mode, key algorithm, domains, fingerprints
    pki/root/root-{cert,key}.pem         SharedRoot: the one root
    pki/<mesh>/root/root-{cert,key}.pem  Federated: the mesh's own root
    pki/<mesh>/ca-cert.pem ca-key.pem root-cert.pem cert-chain.pem   Istio plug-in CA files
    pki/<mesh>/peers/<peer>.pem          Federated: the peer mesh's root (both during a rotation)
    pki/<mesh>/federation-anchor/        Federated: the ingress's anchor CA and cross-certificates
                                         (kept by pki/anchor.py)
    pki/rotation.json, pki/_rotation/    a trust rotation in progress (see pki/record.py)
    pki/_requests/<mesh>/                split custody: an intermediate's key and CSR, until import

Paths only: nothing here reads or writes a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TrustMode = Literal["SharedRoot", "Federated"]
TRUST_MODES: tuple[TrustMode, ...] = ("SharedRoot", "Federated")

SHARED_ROOT_NAME = "root"


def root_label(name: str) -> str:
    """A root by its name, for people: "the shared root" (SharedRoot), "globex's root"
    (Federated: the mesh's own); never "root root"."""
    return "the shared root" if name == SHARED_ROOT_NAME else f"{name}'s root"


ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CHAIN = "cert-chain.pem"
PEERS_DIR = "peers"
STATE_FILE = "state.json"
REQUEST_CSR = "request.csr"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class PKILayout:
    """The paths of one state directory's PKI."""

    state_dir: Path
    dir: Path = field(init=False)
    """``state_dir/pki``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "dir", self.state_dir / "pki")

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    def root_dir(self, mode: TrustMode, root_name: str) -> Path:
        if mode == "SharedRoot":
            return self.dir / SHARED_ROOT_NAME
        return self.dir / root_name / "root"

    def mesh_dir(self, mesh: str) -> Path:
        return self.dir / mesh

    def peer_file(self, mesh: str, peer: str) -> Path:
        """Federated: where ``mesh`` keeps ``peer``'s root bundle."""
        return self.mesh_dir(mesh) / PEERS_DIR / f"{peer}.pem"

    def fix_for(self, path: Path) -> str:
        """How to recover from a broken CA file: restore it, or re-create what depends on it."""
        if path.parent.name == "root" or path.parent.parent != self.dir:
            return f"restore the file, or remove {self.dir} to start over"
        mesh = path.parent.name
        return f"restore the file, or remove {path.parent} to issue a new CA for mesh {mesh}"

    def restore_fix(self) -> str:
        return f"restore the file, or remove {self.dir} to start over"


def is_new(path: Path) -> bool:
    """A directory that does not exist or is empty: material there gets created."""
    if not path.exists():
        return True
    return path.is_dir() and not any(path.iterdir())
