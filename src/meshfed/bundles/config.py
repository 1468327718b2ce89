"""Which bundles a spec publishes and which it follows: pure functions of the spec."""

from __future__ import annotations

from pathlib import Path

from meshfed.bundles.errors import BundleError
from meshfed.bundles.model import Bootstrap, Endpoint, FollowedPeer, PublishedMesh
from meshfed.bundles.state import PeerBundles
from meshfed.spec.model import BundleEndpoint, Federation


def endpoint(ep: BundleEndpoint) -> Endpoint:
    return Endpoint(ep.url, ep.profile, ep.spiffe_id)


def published(fed: Federation) -> tuple[PublishedMesh, ...]:
    """The meshes of this state directory that publish their bundle, by name."""
    return tuple(
        PublishedMesh(
            m.name,
            m.trust_domain,
            endpoint(m.bundle_endpoint),
            int(m.bundle_endpoint.refresh_seconds),
        )
        for m in sorted(fed.spec.meshes, key=lambda m: m.name)
        if m.bundle_endpoint is not None and not m.partner
    )


def followed(fed: Federation, spec_dir: Path) -> tuple[FollowedPeer, ...]:
    """Every peer some local mesh follows, with the local meshes that follow it, by name.

    ``spec_dir``: where a relative ``bootstrapBundle`` is found.
    """
    followers: dict[str, list[str]] = {}
    for mesh in fed.spec.meshes:
        if mesh.partner:
            continue
        for peer in mesh.follows or ():
            followers.setdefault(peer, []).append(mesh.name)
    out = []
    for name, who in sorted(followers.items()):
        target = fed.mesh(name)
        ep = target.bundle_endpoint
        if ep is None:
            continue  # the spec checks refuse this
        bootstrap = None
        if ep.bootstrap_bundle is not None or ep.bootstrap_fingerprint is not None:
            file = None
            if ep.bootstrap_bundle is not None:
                file = Path(ep.bootstrap_bundle)
                file = file if file.is_absolute() else spec_dir / file
            bootstrap = Bootstrap(file=file, fingerprint=ep.bootstrap_fingerprint)
        out.append(
            FollowedPeer(name, target.trust_domain, endpoint(ep), tuple(sorted(who)), bootstrap)
        )
    return tuple(out)


def unfetched(fed: Federation, state_dir: Path) -> tuple[FollowedPeer, ...]:
    """The peers a local mesh follows whose bundle no fetch has accepted yet (BundleError if a
    kept one is damaged)."""
    store = PeerBundles(state_dir)
    return tuple(p for p in followed(fed, Path(".")) if store.current(p.name) is None)


def fetch_hint(peer: FollowedPeer, command: str) -> str:
    """What to do about ``peer``'s missing bundle: ``command`` (the exact ``meshfed trust fetch``
    to run) once its endpoint is reachable."""
    return f"run {command} once the peer's bundle endpoint {peer.endpoint.url} is reachable"


FETCH_COMMAND = "meshfed trust fetch SPEC (same --state)"


def followed_pems(
    fed: Federation, state_dir: Path, fetch_command: str = FETCH_COMMAND
) -> dict[str, str]:
    """Peer -> PEM of the X.509 authorities of its last accepted bundle, for every peer a local
    mesh follows (what ``build_plan`` takes as ``followed``). Reads only the kept PEM files.

    BundleError when a followed peer has no accepted bundle yet: the plan cannot say what to
    trust for it, and guessing (trusting nothing, or its held roots) would be a silent change.
    Its fix names ``fetch_command`` (the caller knows the spec and state directory it ran on).
    """
    missing = unfetched(fed, state_dir)
    if missing:
        peer = missing[0]
        raise BundleError(
            peer.name,
            f"{', '.join(peer.followers)} follow(s) the bundle of {peer.name} "
            f"({peer.trust_domain}), and none has been accepted yet",
            fetch_hint(peer, fetch_command),
        )
    store = PeerBundles(state_dir)
    out: dict[str, str] = {}
    for peer in followed(fed, Path(".")):
        kept = store.current(peer.name)
        assert kept is not None
        out[peer.name] = kept.pem
    return out
