"""No EnvoyFilter rewrites the TLS, authorization or client-identity settings Istio generates.

An EnvoyFilter patches the Envoy configuration istiod generates, below every Istio API: it can
remove the RBAC filter an AuthorizationPolicy became, swap the TLS context PeerAuthentication
or a Gateway asked for, or stop sanitizing ``x-forwarded-client-cert``. It applies to the
workloads its ``workloadSelector`` picks in its namespace, to every workload of its namespace
without one, to every workload of the mesh from the root namespace, or to what its
``targetRefs`` name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from meshfed.audit.attach import Attachment, attachment
from meshfed.audit.context import AuditContext
from meshfed.audit.install import root_namespace
from meshfed.audit.istio import istio
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, dig

AUTHZ_FILTERS = (
    "envoy.filters.http.rbac",
    "envoy.filters.network.rbac",
    "envoy.filters.http.ext_authz",
    "envoy.filters.network.ext_authz",
    "envoy.filters.http.jwt_authn",
    "istio_authn",
    "istio.authn",
)
_TLS_KEYS = {
    "transportsocket": "the transport socket (TLS) of",
    "commontlscontext": "the TLS context of",
    "tlscontext": "the TLS context of",
    "requireclientcertificate": "client-certificate enforcement of",
    "validationcontext": "certificate validation of",
    "trustedca": "the trusted CAs of",
    "matchsubjectaltnames": "the SAN check of",
    "matchtypedsubjectaltnames": "the SAN check of",
    "trustchainverification": "certificate-chain verification of",
    "tlsparams": "the TLS versions and ciphers of",
    "tlsminimumprotocolversion": "the minimum TLS version of",
}
_IDENTITY_KEYS = {
    "forwardclientcertdetails": "how the caller's certificate is forwarded (XFCC) by",
    "setcurrentclientcertdetails": "what XFCC carries at",
}
_WIDE = {3: Severity.CRITICAL, 2: Severity.CRITICAL, 1: Severity.HIGH}


def _keys(value: Any) -> set[str]:
    """Every mapping key in a patch value, lower-case without underscores (Envoy's JSON takes
    both snake_case and camelCase)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(str(k).replace("_", "").lower())
            out |= _keys(v)
    elif isinstance(value, list):
        for item in value:
            out |= _keys(item)
    return out


def _names(value: Any) -> set[str]:
    """Every ``name`` in a patch value (filters it adds or replaces)."""
    out: set[str] = set()
    if isinstance(value, dict):
        name = value.get("name")
        if isinstance(name, str):
            out.add(name)
        for v in value.values():
            out |= _names(v)
    elif isinstance(value, list):
        for item in value:
            out |= _names(item)
    return out


def _matched_filter(patch: Obj) -> str | None:
    chain = as_dict(dig(patch, "match", "listener", "filterChain"))
    filt = as_dict(chain.get("filter"))
    return as_str(as_dict(filt.get("subFilter")).get("name")) or as_str(filt.get("name"))


def _patch(ef: Doc, i: int, patch: Obj, scope: Attachment) -> Iterator[Hit]:
    op = as_str(dig(patch, "patch", "operation")) or "?"
    value = dig(patch, "patch", "value")
    context = as_str(dig(patch, "match", "context")) or "ANY"
    where = f"{ef.name} (patch {i}, {op} in context {context}, {scope.describe()})"
    at = ef.at("spec", "configPatches", i)
    target = _matched_filter(patch)
    touched = {n for n in ({target} | _names(value)) if n in AUTHZ_FILTERS}
    if touched and op in ("REMOVE", "REPLACE", "MERGE"):
        severity = _WIDE[max(scope.rank, 1)] if op == "REMOVE" else Severity.HIGH
        yield Hit(
            severity,
            f"{where} {'removes' if op == 'REMOVE' else 'rewrites'} the authorization filter "
            f"{', '.join(sorted(touched))} that istiod generates from AuthorizationPolicy and "
            "RequestAuthentication",
            at,
        )
    keys = _keys(value)
    for key, what in {**_TLS_KEYS, **_IDENTITY_KEYS}.items():
        if key in keys:
            yield Hit(
                Severity.HIGH,
                f"{where} overrides {what} the proxies it reaches ({key}), below "
                "PeerAuthentication, DestinationRule and Gateway settings",
                ef.at("spec", "configPatches", i, "patch", "value"),
            )
            break


@check(
    "envoy-filter-security",
    title="No EnvoyFilter rewrites TLS, authorization or caller identity",
    severity=Severity.CRITICAL,
    why="EnvoyFilters patch the Envoy configuration below Istio's APIs: one that removes the "
    "RBAC filter or rewrites a TLS context or XFCC handling silently undoes "
    "AuthorizationPolicy, PeerAuthentication and Gateway TLS for every proxy it reaches, and "
    "no Istio object shows it.",
    fix="Express the change with Istio's APIs (AuthorizationPolicy, PeerAuthentication, "
    "DestinationRule, Gateway, the proxy.istio.io/config annotation); if an EnvoyFilter is "
    "unavoidable, select the one workload that needs it and leave TLS and RBAC alone.",
    controls=("CM-6", "AC-3", "SC-8", "IA-9", "PCI 1.2.1"),
)
def envoy_filter_security(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    for docs in ctx.scopes().values():
        root = root_namespace(docs)
        for ef in istio(docs, "EnvoyFilter"):
            scope = attachment(ef, root)
            for i, patch in enumerate(as_list(ef.spec.get("configPatches"))):
                yield from _patch(ef, i, as_dict(patch), scope)
