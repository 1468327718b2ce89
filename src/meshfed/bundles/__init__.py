"""SPIFFE bundle exchange: the bundle format, publishing, fetching and following peers' bundles.

- ``model``: the values (a bundle, an endpoint, a followed peer, a published mesh).
- ``document``: the SPIFFE bundle format (JWK Set), encoded as SPIRE prints it, parsed strictly.
- ``state``: what this state directory published (sequence numbers) and accepted (history).
- ``fetch``: one authenticated GET per profile; ``follow``: fetch/check/keep, continuously.
- ``server``: the bundle endpoint, both profiles.
- ``config``: which bundles a spec publishes and follows.

py-spiffe is imported only when a bundle document is parsed (``spiffelib``), never on import.
"""

from meshfed.bundles.errors import BundleError
from meshfed.bundles.model import (
    Bootstrap,
    Endpoint,
    FollowedPeer,
    Profile,
    PublishedMesh,
    SpiffeBundle,
)
from meshfed.bundles.state import Change, Condition, PeerBundles, StoredBundle

__all__ = [
    "Bootstrap",
    "BundleError",
    "Change",
    "Condition",
    "Endpoint",
    "FollowedPeer",
    "PeerBundles",
    "Profile",
    "PublishedMesh",
    "SpiffeBundle",
    "StoredBundle",
]
