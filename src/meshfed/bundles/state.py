"""Bundle state on disk: what this state directory published, and what it accepted from peers.

Layout under ``STATE/bundles/`` (directories 0700, files 0644: bundles are public):

- ``published/<mesh>.json``: the sequence number of the mesh's published bundle and the content
  it numbers (root fingerprints, refresh hint). The sequence goes up by one whenever the
  content changes (SPIFFE: "MUST be changed whenever the contents of the bundle are updated").
- ``peers/<peer>/current.json``: the last bundle accepted from the peer, the document exactly
  as received; ``current.pem``: its X.509 authorities (what the plan reads, without parsing
  JSON again); ``meta.json``: trust domain, sequence, refresh hint, fingerprints, when and from
  where it was accepted.
- ``peers/<peer>/history/<n>.json``: every accepted bundle, numbered in acceptance order, with
  ``history.jsonl`` one line per accepted change.
- ``peers/<peer>/status.json``: the last attempt's outcome: the peer's condition (``ok``, or
  the error naming the peer), kept across runs.

Reading the current bundles needs no py-spiffe (the start-up path of every command reads them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from meshfed.bundles.errors import BundleError, without_peer
from meshfed.bundles.model import SpiffeBundle
from meshfed.pki.certs import certs_to_pem, fingerprint
from meshfed.pki.files import mkdir_private, write_atomic

BUNDLES_DIR = "bundles"
FILE_MODE = 0o644


def bundles_dir(state_dir: Path) -> Path:
    return Path(state_dir) / BUNDLES_DIR


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """The bundle state's lock (one writer at a time: a follower, a fetch, a server)."""
    base = bundles_dir(state_dir)
    mkdir_private(base)
    fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None


def _write_json(path: Path, doc: Any) -> None:
    mkdir_private(path.parent)
    write_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), FILE_MODE)


def _now(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- published bundles -------------------------------------------------------------------------


def publish(
    state_dir: Path,
    mesh: str,
    trust_domain: str,
    roots: Sequence[x509.Certificate],
    refresh_hint: int,
    now: datetime | None = None,
) -> SpiffeBundle:
    """The bundle ``mesh`` publishes now, numbered: the recorded sequence if its content is
    unchanged, else the next one (recorded before it is returned, so no two contents ever share
    a number, also across restarts of the server)."""
    path = _published_path(state_dir, mesh)
    content = _published_content(trust_domain, roots, refresh_hint)
    with locked(state_dir):
        record = _read_json(path)
        sequence = _recorded_sequence(record)
        if not isinstance(record, dict) or record.get("content") != content:
            sequence += 1
            _write_json(path, {"sequence": sequence, "content": content, "since": _now(now)})
    return SpiffeBundle(trust_domain, tuple(roots), sequence, refresh_hint)


@dataclass(frozen=True)
class PublishedState:
    """What a mesh's endpoint served last, against what it would serve now (read-only)."""

    sequence: int | None
    """The sequence last served or printed (None: nothing yet)."""
    since: str | None
    current: bool
    """Whether the roots and refresh hint now are what ``sequence`` numbers."""
    next_sequence: int
    """The sequence the next fetch gets."""


def published_state(
    state_dir: Path,
    mesh: str,
    trust_domain: str,
    roots: Sequence[x509.Certificate],
    refresh_hint: int,
) -> PublishedState:
    """``publish`` without writing: the recorded sequence and whether it still numbers the
    bundle made of ``roots`` (``trust status``: what a partner should hold by now)."""
    record = _read_json(_published_path(state_dir, mesh))
    if not isinstance(record, dict):
        return PublishedState(None, None, False, 1)
    sequence = _recorded_sequence(record)
    current = record.get("content") == _published_content(trust_domain, roots, refresh_hint)
    since = record.get("since")
    return PublishedState(
        sequence, since if isinstance(since, str) else None, current, sequence + (not current)
    )


def published_bundle(
    state_dir: Path,
    mesh: str,
    trust_domain: str,
    roots: Sequence[x509.Certificate],
    refresh_hint: int,
) -> SpiffeBundle | None:
    """The bundle ``mesh`` publishes, if ``publish`` has numbered exactly this content; None
    otherwise. Writes nothing: for a reader that may not number (a standby replica)."""
    state = published_state(state_dir, mesh, trust_domain, roots, refresh_hint)
    if not state.current or not state.sequence:
        return None
    return SpiffeBundle(trust_domain, tuple(roots), state.sequence, refresh_hint)


def published_since(state_dir: Path, mesh: str) -> datetime | None:
    """Since when ``mesh``'s published bundle has had its current content (None: never
    published)."""
    record = _read_json(_published_path(state_dir, mesh))
    since = record.get("since") if isinstance(record, dict) else None
    try:
        return datetime.strptime(str(since), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _published_path(state_dir: Path, mesh: str) -> Path:
    return bundles_dir(state_dir) / "published" / f"{mesh}.json"


def _published_content(
    trust_domain: str, roots: Sequence[x509.Certificate], refresh_hint: int
) -> dict[str, Any]:
    return {
        "trust_domain": trust_domain,
        "fingerprints": [fingerprint(c) for c in roots],
        "refresh_hint": refresh_hint,
    }


def _recorded_sequence(record: Any) -> int:
    sequence = record.get("sequence") if isinstance(record, dict) else None
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        return 0
    return sequence


# --- bundles accepted from peers ---------------------------------------------------------------


@dataclass(frozen=True)
class StoredBundle:
    """The last good bundle of a peer, as kept in the state directory."""

    peer: str
    trust_domain: str
    x509_authorities: tuple[x509.Certificate, ...]
    sequence: int | None
    refresh_hint: int | None
    accepted_at: str
    url: str
    number: int
    """Its place in the peer's history (1 = the first bundle accepted)."""

    @property
    def pem(self) -> str:
        return self.bundle().pem

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return self.bundle().fingerprints

    def bundle(self) -> SpiffeBundle:
        return SpiffeBundle(
            self.trust_domain, self.x509_authorities, self.sequence, self.refresh_hint
        )


@dataclass(frozen=True)
class Change:
    """What accepting a fetched bundle did."""

    peer: str
    changed: bool
    """False: the same bundle again (nothing to propagate)."""
    added: tuple[str, ...] = ()
    """Fingerprints of authorities new in this bundle."""
    removed: tuple[str, ...] = ()
    sequence: int | None = None
    previous_sequence: int | None = None

    def describe(self) -> str:
        seq = f"sequence {self.sequence}" if self.sequence is not None else "no sequence"
        if not self.changed:
            return f"{self.peer}: unchanged ({seq})"
        parts = [f"+{f[:16]}" for f in self.added] + [f"-{f[:16]}" for f in self.removed]
        return f"{self.peer}: accepted {seq}: " + (" ".join(parts) or "same authorities")


@dataclass(frozen=True)
class Condition:
    """The last attempt to fetch a peer's bundle: ``ok`` or why not, and when."""

    peer: str
    ok: bool
    message: str
    at: str
    sequence: int | None = None
    """The sequence of the bundle in force after the attempt."""

    @property
    def detail(self) -> str:
        """``message`` as said under a heading that names the peer (``trust status``)."""
        return without_peer(self.peer, self.message)


class PeerBundles:
    """The bundles accepted from peers, their history and conditions, under ``STATE/bundles``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.dir = bundles_dir(self.state_dir) / "peers"

    def _peer_dir(self, peer: str) -> Path:
        return self.dir / peer

    def current(self, peer: str) -> StoredBundle | None:
        """The last good bundle of ``peer``; None before the first. BundleError if the kept
        files are damaged (never silently forgotten: that would drop trust or re-bootstrap)."""
        base = self._peer_dir(peer)
        meta = _read_json(base / "meta.json")
        pem_path = base / "current.pem"
        if meta is None and not pem_path.exists():
            return None
        try:
            pem = pem_path.read_bytes()
            certs = tuple(x509.load_pem_x509_certificates(pem)) if pem.strip() else ()
            stored = StoredBundle(
                peer=peer,
                trust_domain=str(meta["trust_domain"]),
                x509_authorities=certs,
                sequence=meta.get("sequence"),
                refresh_hint=meta.get("refresh_hint"),
                accepted_at=str(meta["accepted_at"]),
                url=str(meta.get("url", "")),
                number=int(meta["number"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            raise BundleError(
                str(base),
                f"the kept bundle of peer {peer} is damaged",
                f"restore it, or remove {base} and run meshfed trust fetch again (with the "
                "bootstrap the first fetch needs)",
            ) from None
        if list(stored.fingerprints) != list(meta.get("fingerprints", [])):
            raise BundleError(
                str(pem_path),
                f"does not hold the authorities meta.json records for peer {peer}",
                f"restore it, or remove {base} and fetch again",
            )
        return stored

    def accept(
        self,
        peer: str,
        bundle: SpiffeBundle,
        raw: bytes,
        url: str,
        now: datetime | None = None,
    ) -> Change:
        """Keep ``bundle`` as ``peer``'s current one, unless it is older than the one kept.

        BundleError (and nothing written but the condition) when its sequence goes backwards,
        or it repeats the kept sequence with other content.
        """
        with locked(self.state_dir):
            old = self.current(peer)
            if old is not None and old.trust_domain != bundle.trust_domain:
                raise BundleError(
                    peer,
                    f"the bundle is for trust domain {bundle.trust_domain}, the kept one for "
                    f"{old.trust_domain}",
                    f"a peer's trust domain does not change: remove {self._peer_dir(peer)} "
                    "if it really did",
                )
            if old is not None and old.sequence is not None and bundle.sequence is not None:
                if bundle.sequence < old.sequence:
                    raise BundleError(
                        peer,
                        f"bundle sequence {bundle.sequence} is older than the kept "
                        f"{old.sequence}: refused (a replayed or rolled-back bundle)",
                        "nothing to do if it passes; the kept bundle stays in force",
                    )
                if bundle.sequence == old.sequence and not bundle.same_authorities(old.bundle()):
                    raise BundleError(
                        peer,
                        f"bundle sequence {bundle.sequence} is the kept one's, with other "
                        "authorities: a changed bundle must have a new sequence",
                        "ask the peer to raise spiffe_sequence with every change",
                    )
            if (
                old is not None
                and old.sequence == bundle.sequence
                and bundle.same_authorities(old.bundle())
                and old.refresh_hint == bundle.refresh_hint
            ):
                self._condition(peer, True, "bundle unchanged", bundle.sequence, now)
                return Change(peer, False, sequence=bundle.sequence, previous_sequence=old.sequence)
            number = (old.number if old is not None else 0) + 1
            base = self._peer_dir(peer)
            mkdir_private(base / "history")
            write_atomic(base / "history" / f"{number}.json", raw, FILE_MODE)
            meta = {
                "trust_domain": bundle.trust_domain,
                "sequence": bundle.sequence,
                "refresh_hint": bundle.refresh_hint,
                "fingerprints": list(bundle.fingerprints),
                "accepted_at": _now(now),
                "url": url,
                "number": number,
            }
            # current.pem before meta.json: a reader that sees the new meta sees the new roots.
            write_atomic(base / "current.json", raw, FILE_MODE)
            write_atomic(base / "current.pem", certs_to_pem(bundle.x509_authorities), FILE_MODE)
            _write_json(base / "meta.json", meta)
            with open(base / "history.jsonl", "a", encoding="utf-8") as log:
                log.write(json.dumps(meta, sort_keys=True) + "\n")
            old_fps = set(old.fingerprints) if old else set()
            new_fps = set(bundle.fingerprints)
            change = Change(
                peer,
                True,
                added=tuple(f for f in bundle.fingerprints if f not in old_fps),
                removed=tuple(f for f in (old.fingerprints if old else ()) if f not in new_fps),
                sequence=bundle.sequence,
                previous_sequence=old.sequence if old else None,
            )
            self._condition(peer, True, change.describe(), bundle.sequence, now)
            return change

    def refuse(self, peer: str, error: BundleError, now: datetime | None = None) -> Condition:
        """Record that an attempt failed; the kept bundle stays in force."""
        with locked(self.state_dir):
            try:
                kept = self.current(peer)
            except BundleError:
                kept = None
            return self._condition(peer, False, str(error), kept.sequence if kept else None, now)

    def _condition(
        self, peer: str, ok: bool, message: str, sequence: int | None, now: datetime | None
    ) -> Condition:
        cond = Condition(peer, ok, message, _now(now), sequence)
        _write_json(
            self._peer_dir(peer) / "status.json",
            {"ok": ok, "message": message, "at": cond.at, "sequence": sequence},
        )
        return cond

    def condition(self, peer: str) -> Condition | None:
        doc = _read_json(self._peer_dir(peer) / "status.json")
        if not isinstance(doc, dict):
            return None
        return Condition(
            peer,
            bool(doc.get("ok")),
            str(doc.get("message", "")),
            str(doc.get("at", "")),
            doc.get("sequence"),
        )

    def history(self, peer: str) -> list[dict[str, Any]]:
        """Every accepted change of ``peer``, oldest first (``meta.json`` records)."""
        path = self._peer_dir(peer) / "history.jsonl"
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out
