"""The record of a trust rotation in progress: ``STATE/pki/rotation.json``.

A rotation moves a set of meshes from one *generation* of CA material ("old") to another
("new"). Both generations are kept under ``STATE/pki/_rotation/<id>/{old,new}/`` while it runs:

    _rotation/<id>/<gen>/root/root-cert.pem, root-key.pem   root rotations
    _rotation/<id>/<gen>/<mesh>/ca-cert.pem, ca-key.pem      each mesh whose intermediate changes
    _rotation/<id>/new/<mesh>/request.csr                    split custody: waiting for a signature

The usual places (``pki/root/``, ``pki/<mesh>/``) always hold the generation that signs
(``signing``); ``trusted`` says whose roots the trust bundles carry. The record is rewritten
(atomically) when a step starts and when it ends, so an interrupted step is known and redone.
Finished and aborted rotations are kept as ``STATE/pki/_rotations/<id>.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from meshfed.pki.errors import PKIError
from meshfed.pki.files import CERT_MODE, mkdir_private, read_bytes, write_atomic

Kind = Literal["intermediate", "root"]
Gen = Literal["old", "new"]
Custody = Literal["local", "split", "root"]
"""local: root and intermediates here. split: intermediates here, the root key elsewhere.
root: only the root (with its key) here: the root holder's directory in split custody."""

RECORD_FILE = "rotation.json"
ROTATION_DIR = "_rotation"
HISTORY_DIR = "_rotations"
REQUESTS_DIR = "_requests"
RECORD_VERSION = 1

FORWARD_STEPS: tuple[str, ...] = (
    "prepare",
    "trust",
    "propagate",
    "verify-overlap",
    "switch",
    "reissue",
    "verify",
    "retire",
)
"""prepare: new CA material (or, in split custody, a CSR and then the imported certificate).
trust: the new root beside the old one in every bundle (PKI files; plan and render follow).
propagate: the running local federation gets the bundles (SDS validation secrets).
verify-overlap: old and new certificates are accepted everywhere (real handshakes or chains).
switch: the new intermediate (and root) sign. reissue: workload and gateway certificates.
verify: every served certificate is new and accepted. retire: the old root leaves the bundles,
is propagated and checked, and the old keys are destroyed."""

STEP_HELP = {
    "prepare": "create the new CA material (split custody: CSR, then the imported certificate)",
    "trust": "add the new anchor beside the old one in every trust bundle",
    "propagate": "write the bundles to the running local federation (SDS)",
    "verify-overlap": "check old and new certificates are accepted everywhere",
    "switch": "make the new intermediate (and root) the signing CA",
    "reissue": "reissue workload and gateway certificates from the new CA",
    "verify": "check every served certificate is new and accepted",
    "retire": "remove the old anchor, propagate, check, destroy the old keys",
    "switch-back": "make the old CA sign again",
    "reissue-back": "reissue workload and gateway certificates from the old CA",
    "untrust-new": "remove the new anchor from every bundle and propagate",
    "verify-back": "check the old certificates are accepted everywhere",
    "discard": "destroy the new CA material",
}


def now_text(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass
class RotationRecord:
    id: str
    kind: Kind
    root: str
    """Name of the root: changed by a root rotation; above the intermediates otherwise."""
    meshes: list[str]
    """Meshes whose intermediate changes."""
    mesh: str | None
    """As asked (--mesh); None for a SharedRoot root rotation."""
    custody: Custody
    spec: str | None
    started: str
    updated: str
    steps: list[str] = field(default_factory=lambda: list(FORWARD_STEPS))
    done: list[str] = field(default_factory=list)
    running: str | None = None
    aborting: bool = False
    signing: Gen = "old"
    trusted: list[Gen] = field(default_factory=lambda: cast(list[Gen], ["old"]))
    fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)
    """gen -> {"root": fp, "<mesh>": intermediate fp} (new: filled when prepared)."""
    events: list[dict[str, Any]] = field(default_factory=list)
    material: dict[str, str] = field(default_factory=dict)
    """gen -> its directory (relative to STATE/pki): where the old and the new CA files are."""
    finished: str | None = None
    outcome: str | None = None

    @property
    def next_step(self) -> str | None:
        return next((s for s in self.steps if s not in self.done), None)

    @property
    def other(self) -> Gen:
        return "new" if self.signing == "old" else "old"

    def event(self, step: str, what: str, detail: str = "", now: datetime | None = None) -> None:
        at = now_text(now)
        entry: dict[str, Any] = {"step": step, "event": what, "at": at}
        if detail:
            entry["detail"] = detail
        self.events.append(entry)
        self.updated = at

    def started_at(self, step: str) -> str | None:
        found = [e["at"] for e in self.events if e["step"] == step and e["event"] == "started"]
        return found[-1] if found else None

    def finished_at(self, step: str) -> str | None:
        found = [e["at"] for e in self.events if e["step"] == step and e["event"] == "done"]
        return found[-1] if found else None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["version"] = RECORD_VERSION
        return doc

    @classmethod
    def from_json(cls, doc: Any, source: Path) -> RotationRecord:
        fix = "restore it, or remove it and STATE/pki/_rotation/ to forget the rotation"
        if not isinstance(doc, dict) or doc.get("version") != RECORD_VERSION:
            raise PKIError(
                source, f"is not a meshfed rotation record (version {RECORD_VERSION})", fix
            )
        body = {k: v for k, v in doc.items() if k != "version"}
        try:
            record = cls(**body)
        except TypeError as exc:
            raise PKIError(source, f"is not a meshfed rotation record ({exc})", fix) from None
        if record.kind not in ("intermediate", "root") or record.signing not in ("old", "new"):
            raise PKIError(source, "has an unknown kind or signing generation", fix)
        return record


def record_path(pki_dir: Path) -> Path:
    return pki_dir / RECORD_FILE


def read_record(pki_dir: Path) -> RotationRecord | None:
    path = record_path(pki_dir)
    if not path.exists():
        return None
    try:
        doc = json.loads(read_bytes(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PKIError(path, f"is not valid JSON ({exc})", "restore it") from None
    return RotationRecord.from_json(doc, path)


def write_record(pki_dir: Path, record: RotationRecord) -> None:
    data = (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode()
    write_atomic(record_path(pki_dir), data, CERT_MODE)


def archive_record(pki_dir: Path, record: RotationRecord) -> Path:
    """Keep the finished record in ``_rotations/`` and remove ``rotation.json``."""
    folder = pki_dir / HISTORY_DIR
    mkdir_private(folder)
    path = folder / f"{record.id}.json"
    data = (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode()
    write_atomic(path, data, CERT_MODE)
    record_path(pki_dir).unlink(missing_ok=True)
    return path


def history(pki_dir: Path) -> list[RotationRecord]:
    folder = pki_dir / HISTORY_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(RotationRecord.from_json(json.loads(read_bytes(path)), path))
        except (PKIError, ValueError, UnicodeDecodeError):
            continue
    return out


def gen_dir(pki_dir: Path, record: RotationRecord, gen: Gen) -> Path:
    return pki_dir / ROTATION_DIR / record.id / gen
