"""TLS contexts: who a process proves it is, and which roots vouch for which trust domains."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from meshfed.plan.boundary import ClientCertPolicy
from meshfed.plan.model import TrustBundle
from meshfed.render.envoy.builders import http_options, static_cluster
from meshfed.render.envoy.files import SPIFFE_VALIDATOR, sds_ref
from meshfed.render.envoy.process import Resource

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
DOWNSTREAM_TLS = _TLS + "DownstreamTlsContext"
UPSTREAM_TLS = _TLS + "UpstreamTlsContext"
CALLER_CA = "CALLER_CA"
"""Ingress: roots of the meshes allowed to call, each for its own trust domain."""
LOCAL_CA = "LOCAL_CA"
"""The mesh's own root, for its own trust domain: in-mesh peers."""
PEER_CA = "PEER_CA"
"""Sidecar: roots of the exporting meshes it imports from, each for its own domain."""

TLS_PARAMS = {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}


def spiffe_validator(bundles: Iterable[TrustBundle]) -> Resource:
    """Each trust domain bound to the one root that may vouch for it (Envoy's SPIFFE validator).

    A root is trusted only for the domains the plan lists, so a partner's root cannot mint
    identities of another trust domain, even though roots carry no name constraints.
    """
    domains: dict[str, str] = {}
    for bundle in bundles:
        for domain in bundle.trust_domains:
            domains[domain] = bundle.pem
    return {
        "custom_validator_config": {
            "name": "envoy.tls.cert_validator.spiffe",
            "typed_config": {
                "@type": SPIFFE_VALIDATOR,
                "trust_domains": [
                    {"name": domain, "trust_bundle": {"inline_string": pem}}
                    for domain, pem in sorted(domains.items())
                ],
            },
        }
    }


def peer_validator(
    bundles: Iterable[TrustBundle], san_exact: Sequence[str] = (), san_prefix: Sequence[str] = ()
) -> Resource:
    """``spiffe_validator(bundles)`` that also admits only the listed URI SANs (exact or
    prefix), for an SDS validation secret: a long list then lives in the secret, not in the
    listener. Envoy merges a secret over the chain's (empty) ``default_validation_context``, so
    this checks exactly what the same matchers inline in the listener did (checked on Envoy
    1.40, the SPIFFE validator honours ``match_typed_subject_alt_names``)."""
    validator = spiffe_validator(bundles)
    if san_exact or san_prefix:
        validator["match_typed_subject_alt_names"] = _san(san_exact, san_prefix)
    return validator


def _san(exact: Sequence[str] = (), prefix: Sequence[str] = ()) -> list[Resource]:
    return [{"san_type": "URI", "matcher": {"exact": v}} for v in exact] + [
        {"san_type": "URI", "matcher": {"prefix": v}} for v in prefix
    ]


def _common(
    runtime_dir: Path,
    process: str,
    trust: str,
    alpn: Sequence[str],
    san_exact: Sequence[str] = (),
    san_prefix: Sequence[str] = (),
) -> Resource:
    return {
        "tls_params": TLS_PARAMS,
        "alpn_protocols": list(alpn),
        "tls_certificate_sds_secret_configs": [sds_ref(runtime_dir, process, "default")],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": _san(san_exact, san_prefix)
            },
            "validation_context_sds_secret_config": sds_ref(runtime_dir, process, trust),
        },
    }


def downstream(
    runtime_dir: Path,
    process: str,
    trust: str,
    alpn: Sequence[str],
    san_exact: Sequence[str] = (),
    san_prefix: Sequence[str] = (),
) -> Resource:
    """Server side of mTLS: a client certificate is required and checked against ``trust``;
    with SAN matchers, only those identities complete the handshake."""
    context: dict[str, Any] = {
        "@type": DOWNSTREAM_TLS,
        "require_client_certificate": True,
        "common_tls_context": _common(
            runtime_dir, process, trust, alpn, san_exact=san_exact, san_prefix=san_prefix
        ),
    }
    if not san_exact and not san_prefix:
        validation = context["common_tls_context"]["combined_validation_context"]
        validation["default_validation_context"] = {}
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def upstream(
    runtime_dir: Path,
    process: str,
    trust: str,
    sni: str,
    server_ids: Sequence[str],
    alpn: Sequence[str],
) -> Resource:
    """Client side of mTLS: present ``default``, accept only the listed server identities."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS,
            "sni": sni,
            "common_tls_context": _common(runtime_dir, process, trust, alpn, san_exact=server_ids),
        },
    }


def mtls_cluster(
    name: str,
    port: int,
    runtime_dir: Path,
    process: str,
    trust: str,
    *,
    sni: str,
    server_ids: Sequence[str],
    http: bool,
    idle: str,
    max_duration: str | None = None,
    max_requests: int | None = None,
) -> Resource:
    """A cluster to a loopback ``port`` over mTLS with the process's own certificate: ``sni``,
    only ``server_ids`` accepted (roots from the ``trust`` secret); HTTP over h2, its pooled
    connections closed after ``idle``, (if given) ``max_duration`` and ``max_requests``."""
    cluster = static_cluster(name, [("127.0.0.1", port, 0)])
    alpn = ["h2"] if http else []
    cluster["transport_socket"] = upstream(runtime_dir, process, trust, sni, server_ids, alpn)
    if http:
        cluster["typed_extension_protocol_options"] = http_options(
            True, idle, max_duration, max_requests
        )
    return cluster


def cert_details(policy: ClientCertPolicy) -> dict[str, bool]:
    """HCM ``set_current_client_cert_details``: the client certificate fields XFCC carries."""
    return {field.lower(): True for field in policy.fields}
