"""SPIFFE IDs and trust domains: the one place that parses and formats them.

Forms meshfed writes or reads:

- a SPIFFE ID ``spiffe://<trust domain>/<path>``; a workload's (Istio's form) is
  ``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``, and so is a gateway's;
- a match on identities (`PrincipalMatch`, what the plan's principals are): one ID exactly, or
  every ID starting with a prefix such as ``spiffe://<trust domain>/ns/<namespace>/`` or the
  whole domain ``spiffe://<trust domain>/``;
- Istio's principal form (AuthorizationPolicy ``principals``): the ID without ``spiffe://``, a
  prefix written with a trailing ``*`` (``<trust domain>/ns/shop/*``).

The spec's own shorthand (``ns/<ns>/sa/<sa>`` relative to the consumer mesh, ``*``) is resolved
by `meshfed.spec.principals` into `PrincipalMatch` values with these functions.

Not built on the SPIFFE project's Python library (``spiffe`` on PyPI, py-spiffe 0.3.2), measured
for issue #17: its ``SpiffeId`` and ``TrustDomain`` would fit, but importing even only
``spiffe.spiffe_id.spiffe_id`` runs the package's ``__init__``, which loads the Workload API
client (grpcio, protobuf, PyJWT): ``python -X importtime`` gives 150-220 ms cumulative on this
2-core machine (meshfed's whole ``cli.local`` imports in 650-700 ms), about 40 MB more RSS, and
a ``CryptographyDeprecationWarning`` printed on standard error at every import. Every command
resolves identities while planning, so a lazy import would not avoid it. py-spiffe also accepts
upper-case trust domains (it lower-cases them), where meshfed refuses them with a message. The
rules below are the SPIFFE ID standard's (trust domain ``[a-z0-9._-]``; path segments
``[a-zA-Z0-9._-]``, none empty, ``.`` or ``..``); ``tests/test_spiffe.py`` checks them on generated
input, and against py-spiffe's where that library is installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"

_TRUST_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_SEGMENT = re.compile(r"^[a-zA-Z0-9._-]+$")


# --- trust domains -------------------------------------------------------------------------------


def validate_trust_domain(trust_domain: str) -> None:
    """SPIFFE trust domain: lowercase letters, digits, '.', '-', '_'; no scheme, port or path."""
    if (
        not trust_domain
        or not set(trust_domain) <= _TRUST_DOMAIN_CHARS
        or trust_domain.startswith(".")
    ):
        raise ValueError(
            f"invalid trust domain {trust_domain!r}: use lowercase letters, digits, '.', '-', '_'"
        )


def domain_prefix(trust_domain: str) -> str:
    """``spiffe://<trust domain>/``: what every ID of the domain starts with."""
    return f"{SCHEME}{trust_domain}/"


def trust_domain_id(trust_domain: str) -> str:
    """``spiffe://<trust domain>``: the trust domain's own ID (an intermediate CSR's URI SAN)."""
    return f"{SCHEME}{trust_domain}"


def parse_trust_domain_id(uri: str) -> str | None:
    """The trust domain of ``spiffe://<trust domain>`` (no path); None for any other URI."""
    if not uri.startswith(SCHEME) or "/" in uri[len(SCHEME) :]:
        return None
    return uri[len(SCHEME) :]


def is_spiffe_uri(uri: str) -> bool:
    """Whether ``uri`` is of the ``spiffe`` scheme (valid or not: see `validate_spiffe_id`)."""
    return uri.startswith(SCHEME)


def split(identity: str) -> tuple[str, str]:
    """``spiffe://<domain>/<rest>`` -> (domain, rest); rest is empty without a path. Only
    splits (ValueError without the scheme); see `validate_spiffe_id`."""
    if not identity.startswith(SCHEME):
        raise ValueError(f"{identity!r} does not start with {SCHEME}")
    domain, _, rest = identity[len(SCHEME) :].partition("/")
    return domain, rest


def trust_domain_of(identity: str) -> str:
    """The trust domain of a SPIFFE ID or of a prefix of one (``spiffe://<domain>/...``).

    Only splits: ValueError if there is no ``spiffe://<domain>/``; see `validate_spiffe_id`.
    """
    if not identity.startswith(SCHEME) or "/" not in identity[len(SCHEME) :]:
        raise ValueError(f"{identity!r} is not a SPIFFE ID (or prefix of one)")
    return identity[len(SCHEME) :].partition("/")[0]


# --- IDs -----------------------------------------------------------------------------------------


def validate_spiffe_id(spiffe_id: str) -> None:
    """``spiffe://<trust domain>/<path>`` with a non-empty path (meshfed names workloads only),
    by the SPIFFE ID standard's rules."""
    if not spiffe_id.startswith(SCHEME):
        raise ValueError(f"invalid SPIFFE ID {spiffe_id!r}: must start with {SCHEME}")
    trust_domain, slash, path = spiffe_id[len(SCHEME) :].partition("/")
    validate_trust_domain(trust_domain)
    if not slash or not path or "//" in path or path.endswith("/") or "?" in path or "#" in path:
        raise ValueError(f"invalid SPIFFE ID {spiffe_id!r}: needs a path like /ns/NS/sa/SA")
    for segment in path.split("/"):
        if segment in (".", "..") or not _PATH_SEGMENT.match(segment):
            raise ValueError(
                f"invalid SPIFFE ID {spiffe_id!r}: path segment {segment!r} must be letters, "
                "digits, '.', '-' or '_' (and not '.' or '..')"
            )


def spiffe_trust_domain(spiffe_id: str) -> str:
    """The trust domain of a valid SPIFFE ID (ValueError if it is not one)."""
    validate_spiffe_id(spiffe_id)
    return trust_domain_of(spiffe_id)


def workload_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """Istio's SPIFFE ID of a Kubernetes service account (workloads and gateways alike)."""
    return f"{domain_prefix(trust_domain)}ns/{namespace}/sa/{service_account}"


def relative_to(identity: str, trust_domain: str) -> str:
    """``identity`` without ``spiffe://<trust domain>/`` when it is of that domain."""
    return identity.removeprefix(domain_prefix(trust_domain))


# --- matches -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrincipalMatch:
    """Matches SPIFFE IDs exactly, or by prefix when ``prefix`` is set."""

    value: str
    prefix: bool = False

    def matches(self, identity: str) -> bool:
        return identity.startswith(self.value) if self.prefix else identity == self.value

    @property
    def trust_domain(self) -> str:
        """The trust domain every identity this matches belongs to (ValueError when it is not
        `within_one_domain`)."""
        return trust_domain_of(self.value)

    @property
    def within_one_domain(self) -> bool:
        """Whether every identity this matches is of one trust domain: a prefix must hold the
        whole ``spiffe://<trust domain>/`` (``spiffe://web`` also matches ``spiffe://webx/...``)."""
        return not self.prefix or (
            self.value.startswith(SCHEME) and "/" in self.value[len(SCHEME) :]
        )

    @property
    def covers_domain(self) -> bool:
        """Whether this matches every workload of its trust domain (Istio's form
        ``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``)."""
        if not self.prefix or not self.within_one_domain:
            return False
        return (domain_prefix(self.trust_domain) + "ns/").startswith(self.value)

    def may_match_domain(self, trust_domain: str) -> bool:
        """Whether some identity of ``trust_domain`` could match."""
        ids = domain_prefix(trust_domain)
        if self.prefix:
            return ids.startswith(self.value) or self.value.startswith(ids)
        return self.value.startswith(ids)

    def within(self, other: PrincipalMatch) -> bool:
        """Whether every identity this matches is matched by ``other``."""
        if other.prefix:
            return self.value.startswith(other.value)
        return not self.prefix and self.value == other.value

    def completions(self, service_account: str) -> tuple[str, ...]:
        """Valid SPIFFE IDs this matches, for a check that must present one: the value itself
        when it is an ID, then a prefix completed with ``service_account`` (``<prefix>`` +
        service account, ``<prefix>sa/`` + service account)."""
        suffixes = ("", service_account, f"sa/{service_account}") if self.prefix else ("",)
        out = []
        for candidate in (self.value + s for s in suffixes):
            try:
                validate_spiffe_id(candidate)
            except ValueError:
                continue
            out.append(candidate)
        return tuple(out)

    def __str__(self) -> str:
        return f"{self.value}*" if self.prefix else self.value


def whole_domain(trust_domain: str) -> PrincipalMatch:
    """Every identity of ``trust_domain``."""
    return PrincipalMatch(domain_prefix(trust_domain), prefix=True)


def namespace_workloads(trust_domain: str, namespace: str) -> PrincipalMatch:
    """Every workload of a Kubernetes namespace (Istio's form)."""
    return PrincipalMatch(f"{domain_prefix(trust_domain)}ns/{namespace}/", prefix=True)


def istio_principal(match: PrincipalMatch) -> str:
    """Istio's AuthorizationPolicy form: no scheme (Istio adds it), a prefix ends in ``*``."""
    value = match.value.removeprefix(SCHEME)
    return f"{value}*" if match.prefix else value


def parse_istio_principal(principal: str) -> PrincipalMatch | None:
    """An AuthorizationPolicy principal as Istio matches it: ``spiffe://`` and the text, exactly,
    or as a prefix when it ends in ``*``. None for the forms no `PrincipalMatch` holds: ``*``
    (any authenticated identity) and ``*<suffix>`` (a suffix, in any trust domain)."""
    if principal.startswith("*"):
        return None
    if principal.endswith("*"):
        return PrincipalMatch(SCHEME + principal[:-1], prefix=True)
    return PrincipalMatch(SCHEME + principal)
