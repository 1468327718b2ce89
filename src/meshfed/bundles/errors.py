"""The one error type of the bundles package."""

from __future__ import annotations

from meshfed.pki.errors import PKIError


class BundleError(PKIError):
    """A bundle or bundle endpoint problem the user has to act on.

    ``source`` names the peer (or file, or endpoint) the problem is about, so a message in a log
    or a condition says whose bundle was refused; ``fix`` says what to do. Peers' bundles are
    trust material like the PKI's roots, so every command that reports PKI problems reports
    these the same way (one line, exit 1, nothing changed).
    """
