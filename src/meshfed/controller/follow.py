"""Following partners' SPIFFE bundles in controller mode, continuously, per Federation.

For every peer a local mesh ``follows``, one attempt at a time (``bundles.follow.Fetcher``:
authenticated per profile, parsed and checked by ``bundles.document``, kept by
``bundles.state.PeerBundles`` with its history; nothing here parses a bundle), on the
Federation's PKI state checked out of its Secret (``pkistate.SecretState``) and written back.
An accepted change kicks the Federation's worker: the next reconcile plans with the new roots
(``followed_pems``), so the ingress ``ca.crt`` cross-certificates and
``meshConfig.caCertificates`` follow on every cluster. A refused bundle (endpoint down, garbage,
another trust domain, a sequence going backwards, a TLS certificate that does not match)
changes nothing but the peer's condition: the last good bundle stays in force, the status
condition ``PeerBundles`` names the peer and the reason, and an Event says so once.

When: each peer at its kept bundle's ``spiffe_refresh_hint`` (clamped as ``bundles.follow``
does); after a failure sooner, backing off from ``RETRY_FIRST`` seconds, doubling, never later
than the refresh interval (``next_delay``, pure).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from meshfed.bundles.config import followed
from meshfed.bundles.follow import Fetcher, Outcome
from meshfed.bundles.model import FollowedPeer
from meshfed.bundles.state import bundles_dir
from meshfed.controller.pkistate import SecretState
from meshfed.controller.reconcile import parse_federation, spec_document
from meshfed.controller.specmemo import SpecMemo
from meshfed.controller.status import condition, merge_conditions
from meshfed.kube.client import KubeClient, Obj
from meshfed.kube.errors import KubeError
from meshfed.pki import PKIStore
from meshfed.pki.errors import PKIError
from meshfed.plan.build import root_name
from meshfed.plan.trust import trust_request
from meshfed.spec.errors import SpecError
from meshfed.spec.model import Federation

CONDITION = "PeerBundles"
RETRY_FIRST = 2.0
"""Seconds before the first retry of a failed fetch (then doubling, up to the refresh hint)."""
CONFLICT_RETRIES = 3
"""Attempts to write the state Secret when another writer (a reconcile) got there first."""


# --- pure decisions ------------------------------------------------------------------------


def next_delay(refresh: float, ok: bool, failures: int) -> float:
    """Seconds until the next attempt on a peer: its refresh interval after a success; after
    ``failures`` failures in a row ``RETRY_FIRST * 2**(failures-1)``, never more than the
    refresh interval (SPIFFE Federation: at the latest at the next interval)."""
    if ok or failures <= 0:
        return refresh
    return min(refresh, RETRY_FIRST * float(2 ** min(failures - 1, 30)))


@dataclass(frozen=True)
class PeerCondition:
    peer: str
    ok: bool
    message: str
    sequence: int | None


def peer_condition(states: Sequence[PeerCondition], generation: int) -> Obj | None:
    """The Federation's ``PeerBundles`` condition (None: no peer followed)."""
    if not states:
        return None
    failing = [s for s in states if not s.ok]
    if not failing:
        held = ", ".join(f"{s.peer} (sequence {s.sequence})" for s in states)
        return condition(CONDITION, True, "Followed", f"bundles in force: {held}", generation)
    message = "; ".join(f"peer {s.peer}: {s.message}" for s in failing)
    return condition(CONDITION, False, "BundleRefused", message[:2000], generation)


def peer_status(states: Sequence[PeerCondition]) -> list[Obj]:
    return [
        {"peer": s.peer, "ok": s.ok, "sequence": s.sequence, "message": s.message[:1000]}
        for s in states
    ]


def amend_status(status: Obj, states: Sequence[PeerCondition], now: datetime) -> Obj:
    """``status`` (as the worker writes it) with the peers' condition and list added."""
    cond = peer_condition(states, int(status.get("observedGeneration") or 0))
    out = dict(status)
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != CONDITION]
    if cond is not None:
        before = [c for c in status.get("conditions") or [] if c.get("type") == CONDITION]
        conditions += merge_conditions(before, [cond], now)
    out["conditions"] = conditions
    out["peerBundles"] = peer_status(states)
    return out


def same_condition(before: bytes | None, after: bytes | None) -> bool:
    """Whether two ``status.json`` records of a peer say the same (all but the time)."""

    def essence(raw: bytes | None) -> Any:
        try:
            doc = json.loads(raw or b"")
        except ValueError:
            return None
        return {k: v for k, v in doc.items() if k != "at"} if isinstance(doc, dict) else None

    return before is not None and essence(before) is not None and essence(before) == essence(after)


# --- the loop ------------------------------------------------------------------------------


def spec_source(
    body: Callable[[], Obj], memo: SpecMemo | None = None
) -> Callable[[], Federation | None]:
    """The Federation's parsed spec, parsed again only when it changes. With ``memo`` (the
    Federation's reconciler's), the spec its reconciles parsed: one copy, not two (a spec of
    a thousand exports is about 3 MB parsed).

    The follower asks every second. The object's ``metadata.generation`` (the API server
    raises it on every change of the spec, and only then: the status is a subresource) says
    whether anything changed; only then is the memo asked, whose digest of the spec's JSON
    costs 25 ms of CPU at a thousand exports (each second, 2.5 % of a core while idle)."""
    cache: dict[str, Any] = {}

    def spec() -> Federation | None:
        obj = body()
        generation = (obj.get("metadata") or {}).get("generation")
        if generation is not None and cache.get("generation") == generation and "fed" in cache:
            known: Federation | None = cache["fed"]
            return known
        fed: Federation | None = None
        try:
            if memo is not None:
                name = str((obj.get("metadata") or {}).get("name"))
                fed = memo.parse(name, spec_document(obj), lambda: parse_federation(obj))
            else:
                fed = parse_federation(obj)
        except SpecError:
            fed = None
        cache["generation"], cache["fed"] = generation, fed
        return fed

    return spec


def held_roots(fed: Federation, state_dir: Path) -> dict[str, list[x509.Certificate]]:
    """Trust domain -> roots the state holds for its own meshes (none before the first
    reconcile made them)."""
    try:
        material = PKIStore(state_dir).load(trust_request(fed))
    except PKIError:
        return {}
    return {
        m.trust_domain: list(material.anchors(root_name(fed, m.name)))
        for m in fed.spec.meshes
        if not m.partner
    }


@dataclass
class PeerFollowing:
    """The peers followed for one Federation: a thread beside its worker."""

    name: str
    management: KubeClient
    namespace: str
    work_dir: Path
    spec: Callable[[], Federation | None]
    """The Federation's current spec (None while it is invalid)."""
    kick: Callable[[str], None]
    emit: Callable[[str, str, str], None]
    log: Callable[[str], None] = lambda _l: None
    timeout: float = 10.0
    web_ca: Path | None = None
    bootstrap_dir: Path = field(default_factory=Path.cwd)
    """Where a relative ``bootstrapBundle`` is read from."""
    due: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    states: dict[str, PeerCondition] = field(default_factory=dict)
    wake: threading.Event = field(default_factory=threading.Event)
    _status: Obj | None = None
    _patch: Callable[[Obj], None] | None = None

    # -- status: the worker's writes carry the peers' condition --------------------------------

    def patcher(self, patch: Callable[[Obj], None]) -> Callable[[Obj], None]:
        """Wraps the worker's status writer: every status it writes gets the peers' part."""
        self._patch = patch

        def write(status: Obj) -> None:
            self._status = status
            patch(self.amend(status))

        return write

    def amend(self, status: Obj) -> Obj:
        states = [self.states[p] for p in sorted(self.states)]
        return amend_status(status, states, datetime.now(UTC))

    def _publish_status(self) -> None:
        if self._patch is None:
            return
        try:
            self._patch(self.amend(self._status or {}))
        except KubeError as exc:
            self.log(f"{self.name}: peers' status not written: {exc}")

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stopped: Callable[[], bool]) -> None:
        while not stopped():
            fed = None
            with contextlib.suppress(SpecError, ValueError):
                fed = self.spec()
            peers = list(followed(fed, self.bootstrap_dir)) if fed is not None else []
            names = {p.name for p in peers}
            for gone in [p for p in self.states if p not in names]:
                self.states.pop(gone)
                self.due.pop(gone, None)
                self._publish_status()
            now = time.monotonic()
            ready = [p for p in peers if self.due.get(p.name, 0.0) <= now]
            if ready and fed is not None:
                self.attempt(fed, ready, peers)
            soonest = min([self.due.get(p.name, now + 1.0) for p in peers] or [now + 1.0])
            self.wake.wait(max(0.05, min(soonest - time.monotonic(), 1.0)))
            self.wake.clear()

    def attempt(
        self, fed: Federation, ready: Sequence[FollowedPeer], every: Sequence[FollowedPeer]
    ) -> list[Outcome]:
        """One attempt on each of ``ready``, kept in the state Secret; what changed kicks."""
        outcomes: list[Outcome] = []
        for attempt in range(CONFLICT_RETRIES):
            state = SecretState(self.management, self.namespace, self.name, self.work_dir)
            try:
                with state.session() as state_dir:
                    before = _conditions(state_dir, ready)
                    fetcher = Fetcher(
                        state_dir,
                        held_roots=held_roots(fed, state_dir),
                        peer_domains={p.trust_domain: p.name for p in every},
                        web_ca=self.web_ca,
                        timeout=self.timeout,
                    )
                    outcomes = [fetcher.fetch(peer) for peer in ready]
                    _keep_quiet(state_dir, before)
                break
            except KubeError as exc:
                if exc.status == 409 and attempt + 1 < CONFLICT_RETRIES:
                    continue  # a reconcile wrote the Secret meanwhile: fetch again on the new one
                self.log(f"{self.name}: peers' bundles not kept: {exc}")
                for peer in ready:
                    self.due[peer.name] = time.monotonic() + RETRY_FIRST
                return []
        self._account(outcomes)
        return outcomes

    def _account(self, outcomes: Sequence[Outcome]) -> None:
        changed_status = False
        kicks = []
        for outcome in outcomes:
            peer = outcome.peer
            failures = 0 if outcome.ok else self.failures.get(peer, 0) + 1
            self.failures[peer] = failures
            self.due[peer] = time.monotonic() + next_delay(outcome.refresh, outcome.ok, failures)
            if outcome.ok:
                assert outcome.change is not None
                state = PeerCondition(peer, True, "ok", outcome.change.sequence)
                if outcome.change.changed:
                    kicks.append(outcome.change.describe())
                    self.emit("Normal", "BundleAccepted", outcome.change.describe()[:1000])
            else:
                previous = self.states.get(peer)
                state = PeerCondition(
                    peer,
                    False,
                    outcome.describe().split(": ", 1)[-1],
                    previous.sequence if previous else None,
                )
            if self.states.get(peer) != state:
                if not state.ok:
                    self.emit("Warning", "BundleRefused", f"peer {peer}: {state.message}"[:1000])
                    self.log(f"{self.name}: {outcome.describe()}")
                self.states[peer] = state
                changed_status = True
        if kicks:
            self.log(f"{self.name}: " + "; ".join(kicks))
            self.kick("peer bundle: " + "; ".join(kicks))
        if changed_status:
            self._publish_status()


def _status_file(state_dir: Path, peer: str) -> Path:
    return bundles_dir(state_dir) / "peers" / peer / "status.json"


def _conditions(state_dir: Path, peers: Sequence[FollowedPeer]) -> Mapping[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for peer in peers:
        try:
            out[peer.name] = _status_file(state_dir, peer.name).read_bytes()
        except OSError:
            out[peer.name] = None
    return out


def _keep_quiet(state_dir: Path, before: Mapping[str, bytes | None]) -> None:
    """An attempt that found what the last one found leaves the peer's condition file as it
    was, so an unchanged bundle writes nothing to the Secret (only a change is a write)."""
    for peer, raw in before.items():
        path = _status_file(state_dir, peer)
        try:
            now = path.read_bytes()
        except OSError:
            continue
        if raw is not None and same_condition(raw, now):
            path.write_bytes(raw)


__all__ = [
    "CONDITION",
    "PeerCondition",
    "PeerFollowing",
    "amend_status",
    "next_delay",
    "peer_condition",
    "same_condition",
    "spec_source",
]
