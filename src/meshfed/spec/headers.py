"""Request headers a caller must not pass across the boundary, and which an export may keep.

The one catalogue of them: the plan strips every one at the federation ingress (both renderers,
`meshfed.plan.boundary`), and the spec check says which of them an export may keep
(``keepRequestHeaders``) and why the others can never be kept.

A backend that honours such a header lets the caller escape what the ingress authorised:
method tunnelling (a POST that the application runs as DELETE), a path other than the one the
policy saw (IIS URL Rewrite, old Symfony/Zend ``X-Original-URL``), a host, scheme or prefix the
application trusts for redirects and absolute URLs (Spring's ``ForwardedHeaderFilter``,
Werkzeug's ``ProxyFix``, ASP.NET Core's forwarded headers), an address for IP allow-lists, or a
framework's internal switch (Next.js ``x-middleware-subrequest``, CVE-2025-29927). Sources:
OWASP WSTG 4.2.6 (HTTP method overriding), the Burp Scanner issue "Request URL override",
Symfony's CVE-2018-14773 fix, silverstripe CVE-2019-19326, RFC 7239. Query parameters such as
``_method`` are not headers and cannot be stripped here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ADDRESS_HEADERS",
    "CALLER_HEADER",
    "STRIPPED_HEADERS",
    "HeaderKind",
    "keep_problem",
    "kind_of",
]

HeaderKind = Literal["method", "path", "host", "address", "internal"]

METHOD_OVERRIDE = ("x-http-method-override", "x-http-method", "x-method-override")
"""Method tunnelling: the request crosses as one method and the application runs another."""
PATH_OVERRIDE = (
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-request-uri",
)
"""The path the application routes on instead of the one authorised."""
HOST_OVERRIDE = (
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-url-scheme",
    "front-end-https",
    "x-original-host",
    "x-host",
    "x-http-host-override",
)
"""Host, scheme, port or prefix the application trusts (redirects, absolute URLs, cookies)."""
ADDRESS_HEADERS = (
    "x-forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-originating-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-envoy-external-address",
    "client-ip",
    "x-forwarded",
    "x-cluster-client-ip",
    "forwarded-for",
    "x-appengine-user-ip",
    "x-original-forwarded-for",
    "x-nf-client-connection-ip",
    "do-connecting-ip",
)
"""Network addresses: a caller forges them against IP allow-lists, and they tell about a
mesh's network when they leave it. Every header python-ipware (django-ipware) reads by default
(``Client-IP`` is also Rails' ``request.remote_ip``), ingress-nginx's
``X-Original-Forwarded-For``, and the CDN and platform headers apps behind them read."""
INTERNAL = (
    "x-middleware-subrequest",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-envoy-internal",
    "x-envoy-decorator-operation",
)
"""Switches of a framework or of the proxy itself: never a caller's to set."""

CALLER_HEADER = "x-meshfed-caller"
"""The header the ingress sets to the caller's verified URI SAN(s) for the exported workload's
sidecar (`meshfed.plan.guard`); whatever a caller sends under this name is removed first."""

STRIPPED_HEADERS: tuple[str, ...] = (
    *METHOD_OVERRIDE,
    *PATH_OVERRIDE,
    *HOST_OVERRIDE,
    *ADDRESS_HEADERS,
    *INTERNAL,
)
"""Every request header the ingress strips unless an export keeps it (lower case)."""

_KIND: dict[str, HeaderKind] = {
    **dict.fromkeys(METHOD_OVERRIDE, "method"),
    **dict.fromkeys(PATH_OVERRIDE, "path"),
    **dict.fromkeys(HOST_OVERRIDE, "host"),
    **dict.fromkeys(ADDRESS_HEADERS, "address"),
    **dict.fromkeys(INTERNAL, "internal"),
}
_NEVER = {
    "x-forwarded-client-cert": "the ingress sets it from the caller's verified certificate",
    CALLER_HEADER: "the ingress sets it from the caller's verified certificate, for the "
    "workload's own check",
}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


def kind_of(name: str) -> HeaderKind | None:
    """What a stripped header overrides; None for a header the ingress does not strip."""
    return _KIND.get(name.lower())


@dataclass(frozen=True)
class KeepProblem:
    message: str
    fix: str


def keep_problem(
    name: str, limits_methods: bool, limits_paths: bool, protocol: str | None
) -> KeepProblem | None:
    """Why an export may not keep request header ``name``, or None if it may.

    ``limits_methods`` / ``limits_paths``: some consumer of the export is limited to methods /
    paths, which a method or path override would walk around.
    """
    lower = name.lower()
    if not _TOKEN.match(lower):
        return KeepProblem(
            f"{name!r} is not an HTTP header name",
            "write the header's name, e.g. x-forwarded-host",
        )
    if protocol == "TCP":
        return KeepProblem(
            "the export is TCP: the ingress sees no headers",
            "remove keepRequestHeaders, or make the workload's protocol HTTP",
        )
    if lower in _NEVER:
        return KeepProblem(
            f"{lower} can never be kept: {_NEVER[lower]}", "remove it from keepRequestHeaders"
        )
    kind = _KIND.get(lower)
    if kind is None:
        return KeepProblem(
            f"{lower} is not a header the ingress strips; it reaches the workload already",
            "remove it, or name one of: " + ", ".join(_keepable()),
        )
    if kind == "internal":
        return KeepProblem(
            f"{lower} switches a framework or the proxy itself (a caller could skip the "
            "workload's own checks); it is never a caller's to set",
            "remove it from keepRequestHeaders",
        )
    if kind == "address":
        return KeepProblem(
            f"{lower} carries network addresses, which never cross the boundary (a caller "
            "forges them against IP allow-lists; the caller is its verified identity)",
            "remove it from keepRequestHeaders; the workload learns the caller from "
            "x-forwarded-client-cert",
        )
    if kind == "method" and limits_methods:
        return KeepProblem(
            f"{lower} would let a caller run another method than the ones this export's "
            "consumers are limited to",
            "remove it, or drop the consumers' methods",
        )
    if kind == "path" and limits_paths:
        return KeepProblem(
            f"{lower} would let a caller reach another path than the ones this export's "
            "consumers are limited to",
            "remove it, or drop the consumers' paths",
        )
    return None


def _keepable() -> list[str]:
    return [h for h in STRIPPED_HEADERS if _KIND[h] in ("method", "path", "host")]
