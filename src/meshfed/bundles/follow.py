"""Following peers' bundles: fetch, authenticate, check, keep, and say what changed.

``Fetcher.fetch(peer)`` is one attempt: it authenticates the peer's endpoint per profile, parses
and checks the bundle (``document.parse``), and keeps it (``state.PeerBundles.accept``: never a
sequence going backwards). A failure of any kind is recorded as the peer's condition and the kept
bundle stays in force. ``Follower`` repeats that per peer at the interval its bundle's
``spiffe_refresh_hint`` asks for (clamped to ``[MIN_REFRESH, MAX_REFRESH]``; five minutes when a
bundle sets none; after a failure, again at the next interval, SPIFFE Federation 6.2) and hands
every accepted change to ``on_change``: the one seam through which a change reaches what trusts
the peer (the local federation's SDS, a controller's apply).

For ``https_spiffe``, the trust bundle of the endpoint's own trust domain authenticates it:

- self-serving (the endpoint's SPIFFE ID is in the peer's trust domain): the peer's kept bundle;
  before the first one, the operator's bootstrap: a bundle file, or the SHA-256 fingerprint of
  one of the peer's roots (fetched once unauthenticated, the pinned root picked out of it, then
  fetched again authenticated by that root alone, and the result must still hold it);
  the roots this state directory holds when the peer is one of its own meshes;
- otherwise: the roots held for that trust domain, or the kept bundle of the peer that has it.

Never trust on first use: with none of these, the fetch fails and says what to give.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509

from meshfed.bundles import document
from meshfed.bundles.errors import BundleError
from meshfed.bundles.fetch import DEFAULT_TIMEOUT, fetch_document
from meshfed.bundles.model import DEFAULT_REFRESH_HINT, FollowedPeer, SpiffeBundle
from meshfed.bundles.state import Change, PeerBundles
from meshfed.pki.certs import fingerprint
from meshfed.spiffe import spiffe_trust_domain

MIN_REFRESH = 1.0
MAX_REFRESH = 24 * 3600.0


class Stop(Protocol):
    """When following ends: a ``threading.Event``, or `meshfed.interrupts.StopRequest`."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class Outcome:
    """One attempt on one peer."""

    peer: str
    change: Change | None = None
    error: BundleError | None = None
    refresh: float = float(DEFAULT_REFRESH_HINT)
    """Seconds until the next attempt should be made."""
    kept: bool = True
    """After a failure: a last good bundle is kept (and stays in force)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        if self.error is not None:
            keeps = "the last good bundle stays in force" if self.kept else "no bundle accepted yet"
            return f"{self.peer}: refused ({keeps}): {self.error.about(self.peer)}"
        assert self.change is not None
        return self.change.describe()


def refresh_interval(hint: int | None) -> float:
    return min(MAX_REFRESH, max(MIN_REFRESH, float(hint or DEFAULT_REFRESH_HINT)))


def _normalise_fingerprint(value: str) -> str:
    text = value.strip().lower()
    text = text.removeprefix("sha256:")
    return text.replace(":", "")


@dataclass
class Fetcher:
    """Fetches peers' bundles into ``state_dir``'s peer store."""

    state_dir: Path
    held_roots: Mapping[str, Sequence[x509.Certificate]] = field(default_factory=dict)
    """Trust domain -> roots this state directory holds (its own meshes)."""
    peer_domains: Mapping[str, str] = field(default_factory=dict)
    """Trust domain -> followed peer that has it (for non-self-serving endpoints)."""
    web_ca: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @property
    def store(self) -> PeerBundles:
        return PeerBundles(self.state_dir)

    def fetch(self, peer: FollowedPeer) -> Outcome:
        store = self.store
        try:
            raw, url, bundle = self._fetch(peer, store)
            change = store.accept(peer.name, bundle, raw, url, self.clock())
        except BundleError as exc:
            store.refuse(peer.name, exc, self.clock())
            kept = None
            with contextlib.suppress(BundleError):
                kept = store.current(peer.name)
            return Outcome(
                peer.name,
                error=exc,
                refresh=refresh_interval(kept.refresh_hint if kept else None),
                kept=kept is not None,
            )
        return Outcome(peer.name, change=change, refresh=refresh_interval(bundle.refresh_hint))

    # --- one attempt

    def _fetch(self, peer: FollowedPeer, store: PeerBundles) -> tuple[bytes, str, SpiffeBundle]:
        endpoint = peer.endpoint
        if endpoint.profile == "https_web":
            raw, url = fetch_document(endpoint, peer.name, web_ca=self.web_ca, timeout=self.timeout)
            return raw, url, self._parse(raw, peer)
        assert endpoint.spiffe_id is not None
        domain = spiffe_trust_domain(endpoint.spiffe_id)
        if domain != peer.trust_domain:
            roots = self._foreign_roots(domain, peer, store)
            raw, url = fetch_document(endpoint, peer.name, roots=roots, timeout=self.timeout)
            return raw, url, self._parse(raw, peer)
        kept = store.current(peer.name)
        if kept is not None and kept.x509_authorities:
            roots = kept.x509_authorities
        elif domain in self.held_roots:
            roots = tuple(self.held_roots[domain])
        elif peer.bootstrap is not None and (peer.bootstrap.roots or peer.bootstrap.file):
            roots = self._bootstrap_roots(peer)
        elif peer.bootstrap is not None and peer.bootstrap.fingerprint:
            return self._pinned(peer, _normalise_fingerprint(peer.bootstrap.fingerprint))
        else:
            raise BundleError(
                peer.name,
                f"no bundle of {peer.trust_domain} yet to authenticate its endpoint "
                f"{endpoint.url} (https_spiffe) with",
                "set bundleEndpoint.bootstrapBundle (a bundle file the peer gave you) or "
                "bundleEndpoint.bootstrapFingerprint (sha256 of one of its roots) for the first "
                "fetch; meshfed never trusts a bundle endpoint on first use",
            )
        raw, url = fetch_document(endpoint, peer.name, roots=roots, timeout=self.timeout)
        return raw, url, self._parse(raw, peer)

    def _bootstrap_roots(self, peer: FollowedPeer) -> tuple[x509.Certificate, ...]:
        assert peer.bootstrap is not None
        if peer.bootstrap.roots:
            return peer.bootstrap.roots
        path = peer.bootstrap.file
        assert path is not None
        try:
            with path.open("rb") as handle:  # bounded: a bundle is a few KB, /dev/zero is not
                data = handle.read(document.MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            raise BundleError(
                peer.name,
                f"cannot read its bootstrap bundle {path} ({exc.strerror or exc})",
                "put the bundle file the peer gave you there, or fix bootstrapBundle",
            ) from None
        if len(data) > document.MAX_DOCUMENT_BYTES:
            raise BundleError(
                peer.name,
                f"its bootstrap bundle {path} holds more than {document.MAX_DOCUMENT_BYTES:,} "
                "bytes: not a bundle",
                "put the bundle file the peer gave you there, or fix bootstrapBundle",
            )
        bundle = document.parse_bootstrap(data, peer.trust_domain, self.clock(), f"{peer.name}")
        if not bundle.x509_authorities:
            raise BundleError(peer.name, f"its bootstrap bundle {path} holds no X.509 authority")
        return bundle.x509_authorities

    def _pinned(self, peer: FollowedPeer, pin: str) -> tuple[bytes, str, SpiffeBundle]:
        endpoint = peer.endpoint
        first, _ = fetch_document(endpoint, peer.name, timeout=self.timeout, insecure=True)
        candidates = self._parse(first, peer)
        pinned = [c for c in candidates.x509_authorities if fingerprint(c) == pin]
        if not pinned:
            raise BundleError(
                peer.name,
                f"the bundle served at {endpoint.url} holds no root with the bootstrap "
                f"fingerprint sha256:{pin}",
                "check the fingerprint with the peer (meshfed trust bundle MESH prints each "
                "root's); nothing was trusted",
            )
        raw, url = fetch_document(endpoint, peer.name, roots=pinned, timeout=self.timeout)
        bundle = self._parse(raw, peer)
        if pin not in bundle.fingerprints:
            raise BundleError(
                peer.name,
                f"the authenticated bundle no longer holds the pinned root sha256:{pin}",
                "fetch again once the peer's bundle is stable",
            )
        return raw, url, bundle

    def _foreign_roots(
        self, domain: str, peer: FollowedPeer, store: PeerBundles
    ) -> tuple[x509.Certificate, ...]:
        if domain in self.held_roots:
            return tuple(self.held_roots[domain])
        other = self.peer_domains.get(domain)
        kept = store.current(other) if other else None
        if kept is None or not kept.x509_authorities:
            raise BundleError(
                peer.name,
                f"its endpoint {peer.endpoint.url} is served by trust domain {domain}, whose "
                "bundle this state directory has neither held nor fetched",
                f"follow {domain}'s bundle too (fetch it first), or use an endpoint SPIFFE ID "
                f"in {peer.trust_domain}",
            )
        return kept.x509_authorities

    def _parse(self, raw: bytes, peer: FollowedPeer) -> SpiffeBundle:
        return document.parse(raw, peer.trust_domain, self.clock(), peer.name)


class Follower:
    """Follows peers continuously, each at its own refresh interval."""

    def __init__(
        self,
        fetcher: Fetcher,
        peers: Sequence[FollowedPeer],
        on_change: Callable[[list[Change]], None],
        log: Callable[[str], None] = print,
        quiet_unchanged: bool = True,
    ) -> None:
        self.fetcher = fetcher
        self.peers = list(peers)
        self.on_change = on_change
        self.log = log
        self.quiet_unchanged = quiet_unchanged
        self.due: dict[str, float] = dict.fromkeys((p.name for p in self.peers), 0.0)
        self.pending: list[Change] = []

    def run_once(self, names: Sequence[str] | None = None) -> list[Outcome]:
        """One attempt on each peer (or on ``names``); accepted changes go to ``on_change``.

        A change whose propagation fails stays pending and is handed over again with the next
        ones (the store already keeps it, so a later fetch would find it unchanged)."""
        outcomes = []
        for peer in self.peers:
            if names is not None and peer.name not in names:
                continue
            outcome = self.fetcher.fetch(peer)
            self.due[peer.name] = time.monotonic() + outcome.refresh
            outcomes.append(outcome)
            unchanged = outcome.change is not None and not outcome.change.changed
            if not (unchanged and self.quiet_unchanged):
                self.log(outcome.describe())
        self.pending += [o.change for o in outcomes if o.change is not None and o.change.changed]
        self.flush()
        return outcomes

    def flush(self) -> None:
        """Hand the pending changes to ``on_change``; they stay pending if it raises."""
        if self.pending:
            self.on_change(list(self.pending))
            self.pending.clear()

    def run_forever(self, stop: Stop) -> None:
        retry_at = 0.0
        while not stop.is_set():
            now = time.monotonic()
            ready = [name for name, at in self.due.items() if at <= now]
            try:
                if ready:
                    self.run_once(ready)
                    continue
                if self.pending and now >= retry_at:
                    self.flush()
            except Exception as exc:  # a failed propagation must not end the following
                self.log(f"propagating a bundle change failed: {exc} (retrying)")
                retry_at = time.monotonic() + MIN_REFRESH
            wake = min([*self.due.values(), retry_at if self.pending else now + 1.0])
            stop.wait(max(0.05, wake - time.monotonic()))
