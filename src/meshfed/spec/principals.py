"""Workload identities as the spec writes them, resolved against a trust domain.

A principal is ``ns/<ns>/sa/<sa>`` (relative to the consumer mesh's trust domain), a full
``spiffe://<trust domain>/ns/<ns>/sa/<sa>``, either with a trailing ``*`` for a prefix, or ``*``
for any workload of the consumer mesh.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEGMENT = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_EXACT = re.compile(rf"^ns/({_SEGMENT})/sa/({_SEGMENT})$")
_PREFIX = re.compile(rf"^ns/({_SEGMENT})/(sa/({_SEGMENT})?)?\*$|^ns/\*$")


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """Istio's SPIFFE ID for a service account."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class PrincipalMatch:
    """Matches SPIFFE IDs exactly, or by prefix when ``prefix`` is set."""

    value: str
    prefix: bool = False

    def matches(self, identity: str) -> bool:
        return identity.startswith(self.value) if self.prefix else identity == self.value

    def __str__(self) -> str:
        return f"{self.value}*" if self.prefix else self.value


def parse_principal(text: str, trust_domain: str) -> PrincipalMatch:
    """Resolve a spec principal for a consumer mesh; ValueError says what form is expected."""
    if text == "*":
        return PrincipalMatch(f"spiffe://{trust_domain}/", prefix=True)
    relative = text
    if text.startswith("spiffe://"):
        rest = text.removeprefix("spiffe://")
        domain, _, relative = rest.partition("/")
        if domain != trust_domain:
            raise ValueError(
                f"{text!r} belongs to trust domain {domain!r}, not the consumer mesh's "
                f"{trust_domain!r}"
            )
    if _EXACT.match(relative):
        return PrincipalMatch(f"spiffe://{trust_domain}/{relative}")
    if _PREFIX.match(relative):
        return PrincipalMatch(f"spiffe://{trust_domain}/{relative[:-1]}", prefix=True)
    raise ValueError(
        f"{text!r} is not a workload identity: use ns/<namespace>/sa/<service account>, "
        f"spiffe://{trust_domain}/ns/<namespace>/sa/<service account>, a trailing '*', or '*'"
    )
