"""The one error type of the bundles package."""

from __future__ import annotations

from meshfed.pki.errors import PKIError

__all__ = ["BundleError", "without_peer"]


class BundleError(PKIError):
    """A bundle or bundle endpoint problem the user has to act on.

    ``source`` names the peer (or file, or endpoint) the problem is about, so a message in a log
    or a condition says whose bundle was refused; ``fix`` says what to do. Peers' bundles are
    trust material like the PKI's roots, so every command that reports PKI problems reports
    these the same way (one line, exit 1, nothing changed).
    """

    def about(self, peer: str) -> str:
        """The message under a heading that already names ``peer`` (a peer's line in
        ``trust fetch`` or ``trust status``): without the leading ``<peer>: `` when the problem
        is about the peer itself (a file's or an endpoint's source stays)."""
        return without_peer(peer, str(self))


def without_peer(peer: str, message: str) -> str:
    """``message`` without a leading ``<peer>: ``: said where the peer is named already."""
    return message.removeprefix(f"{peer}: ")
