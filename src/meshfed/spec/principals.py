"""Workload identities as the spec writes them, resolved against a trust domain.

A principal is ``ns/<ns>/sa/<sa>`` (relative to the consumer mesh's trust domain), a full
``spiffe://<trust domain>/ns/<ns>/sa/<sa>``, either with a trailing ``*`` for a prefix, or ``*``
for any workload of the consumer mesh.
"""

from __future__ import annotations

import re

from meshfed.spiffe import PrincipalMatch, domain_prefix, is_spiffe_uri, split, whole_domain

__all__ = ["PrincipalMatch", "parse_principal"]

_SEGMENT = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_EXACT = re.compile(rf"^ns/({_SEGMENT})/sa/({_SEGMENT})$")
_PREFIX = re.compile(rf"^ns/({_SEGMENT})/(sa/({_SEGMENT})?)?\*$|^ns/\*$")


def parse_principal(text: str, trust_domain: str) -> PrincipalMatch:
    """Resolve a spec principal for a consumer mesh; ValueError says what form is expected."""
    if text == "*":
        return whole_domain(trust_domain)
    relative = text
    if is_spiffe_uri(text):
        domain, relative = split(text)
        if domain != trust_domain:
            raise ValueError(
                f"{text!r} belongs to trust domain {domain!r}, not the consumer mesh's "
                f"{trust_domain!r}"
            )
    if _EXACT.match(relative):
        return PrincipalMatch(domain_prefix(trust_domain) + relative)
    if _PREFIX.match(relative):
        return PrincipalMatch(domain_prefix(trust_domain) + relative[:-1], prefix=True)
    raise ValueError(
        f"{text!r} is not a workload identity: use ns/<namespace>/sa/<service account>, "
        f"spiffe://{trust_domain}/ns/<namespace>/sa/<service account>, a trailing '*', or '*'"
    )
