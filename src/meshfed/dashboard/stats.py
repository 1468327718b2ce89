"""An ingress gateway's Envoy ``/stats`` turned into the dashboard's counters, per filter chain.

Every exported SNI is one filter chain of the ingress listener ``federation-ingress``, whose
filters carry the stat prefix ``ingress_<sni>`` (``render/envoy/ingress.py``). The stats read,
with ``<sni>`` the chain's server name and ``<listener>`` the listener's ``<address>_<port>``:

HTTP export (http_connection_manager with the RBAC HTTP filter):

- allowed: ``http.ingress_<sni>.rbac.allowed`` -- requests the ALLOW policy let through.
- denied: ``http.ingress_<sni>.rbac.denied`` -- requests refused with 403 (deny by default).
- TLS failures: ``http.ingress_<sni>.downstream_cx_destroy`` minus, for each codec ``v`` in
  http1, http2, http3, ``downstream_cx_<v>_total - downstream_cx_<v>_active``. The connection
  manager counts a connection when the chain is picked (by SNI, before the handshake) but makes
  its codec only when the first decrypted bytes arrive, so a closed connection that never got a
  codec is one whose TLS handshake failed (an HTTP client always speaks first after it).

TCP export (network RBAC filter, then tcp_proxy):

- allowed: ``ingress_<sni>.rbac.allowed``; denied: ``ingress_<sni>.rbac.denied`` (connections,
  decided on the caller's first byte).
- TLS failures: the listener's TLS failures (below) less those of its HTTP chains. Exact when the
  ingress has one TCP export; with several the remainder is shared (``tls_exact`` False). A TCP
  export admits only its allowed identities to the handshake, so a caller it does not allow is
  refused here, as a TLS failure (``ssl.fail_verify_san``), not as an RBAC denial.

The listener (all chains together), ``listener.<listener>.``:

- TLS failures: ``ssl.connection_error + ssl.fail_verify_no_cert + ssl.fail_verify_error +
  ssl.fail_verify_san + ssl.fail_verify_cert_hash`` (no client certificate, an untrusted chain or
  trust domain, an identity a TCP export does not admit, other handshake errors).
- handshakes: ``ssl.handshake`` (completed); unknown SNI: ``no_filter_chain_match`` (refused).

Counters start at zero whenever that Envoy starts (``meshfed lab start-gateway``, a restart).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

STATS_FILTER = (
    r"^(http\.ingress_.+\.(rbac\.(allowed|denied)|downstream_cx_(destroy|http[123]_(total|active)))"
    r"|ingress_.+\.rbac\.(allowed|denied)"
    r"|listener\.[0-9.]+_[0-9]+\.(ssl\.(handshake|connection_error|fail_verify_[a-z_]+)"
    r"|no_filter_chain_match))$"
)
"""The ``/stats?filter=`` regex that selects every stat below (and little else)."""

CODECS = ("http1", "http2", "http3")
TLS_FAILURE_STATS = (
    "ssl.connection_error",
    "ssl.fail_verify_no_cert",
    "ssl.fail_verify_error",
    "ssl.fail_verify_san",
    "ssl.fail_verify_cert_hash",
)


def parse_stats(text: str) -> dict[str, int]:
    """Envoy's plain ``/stats`` output: ``name: value`` lines; counters and gauges only
    (histograms and text readouts are left out)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        value = value.strip()
        if sep and value.lstrip("-").isdigit():
            out[name.strip()] = int(value)
    return out


def listener_prefix(address: str) -> str:
    """``127.0.0.1:15443`` -> ``listener.127.0.0.1_15443.`` (Envoy's listener stat scope)."""
    host, _, port = address.rpartition(":")
    return f"listener.{host}_{port}."


def http_prefix(sni: str) -> str:
    return f"http.ingress_{sni}."


def tcp_rbac_prefix(sni: str) -> str:
    return f"ingress_{sni}.rbac."


@dataclass(frozen=True)
class ChainCounters:
    sni: str
    protocol: str
    """``HTTP`` or ``TCP``."""
    allowed: int
    denied: int
    tls_failures: int
    tls_exact: bool = True
    """False: a remainder shared by several TCP chains of the same listener."""


@dataclass(frozen=True)
class IngressCounters:
    chains: dict[str, ChainCounters]
    """Keyed by SNI."""
    tls_failures: int
    """Failed handshakes on the whole listener."""
    handshakes: int
    unknown_sni: int
    """Connections refused because no chain serves their SNI."""


def _http_tls_failures(stats: Mapping[str, int], sni: str) -> int:
    p = http_prefix(sni)
    closed_with_codec = sum(
        stats.get(f"{p}downstream_cx_{v}_total", 0) - stats.get(f"{p}downstream_cx_{v}_active", 0)
        for v in CODECS
    )
    return max(0, stats.get(f"{p}downstream_cx_destroy", 0) - closed_with_codec)


def ingress_counters(
    stats: Mapping[str, int], listener: str, exports: Mapping[str, str]
) -> IngressCounters:
    """The counters of one ingress: ``listener`` its ``<address>:<port>``, ``exports`` the SNI
    names it serves -> protocol (as in ``runtime.json``)."""
    lp = listener_prefix(listener)
    total_tls = sum(stats.get(lp + name, 0) for name in TLS_FAILURE_STATS)
    chains: dict[str, ChainCounters] = {}
    http_tls = 0
    tcp = [sni for sni, protocol in exports.items() if protocol != "HTTP"]
    for sni, protocol in exports.items():
        if protocol == "HTTP":
            p = http_prefix(sni)
            tls = _http_tls_failures(stats, sni)
            http_tls += tls
            chains[sni] = ChainCounters(
                sni,
                protocol,
                stats.get(p + "rbac.allowed", 0),
                stats.get(p + "rbac.denied", 0),
                tls,
            )
    remainder = max(0, total_tls - http_tls)
    for sni in tcp:
        p = tcp_rbac_prefix(sni)
        chains[sni] = ChainCounters(
            sni,
            exports[sni],
            stats.get(p + "allowed", 0),
            stats.get(p + "denied", 0),
            remainder,
            tls_exact=len(tcp) == 1,
        )
    return IngressCounters(
        chains=chains,
        tls_failures=total_tls,
        handshakes=stats.get(lp + "ssl.handshake", 0),
        unknown_sni=stats.get(lp + "no_filter_chain_match", 0),
    )


@dataclass(frozen=True)
class ArrowCounters:
    allowed: int
    denied: int
    tls_failures: int
    tls_exact: bool
    snis: tuple[str, ...]
    """The chains counted (an import's wire host and the export's own host, where served)."""


def arrow_counters(ingress: IngressCounters, snis: Iterable[str]) -> ArrowCounters:
    """The sum over the chains an arrow's calls arrive on (each chain counted once)."""
    chosen = [ingress.chains[s] for s in dict.fromkeys(snis) if s in ingress.chains]
    tcp = [c for c in chosen if c.protocol != "HTTP"]
    # Several TCP chains of one arrow share one remainder: count it once.
    tls = sum(c.tls_failures for c in chosen if c.protocol == "HTTP") + max(
        (c.tls_failures for c in tcp), default=0
    )
    return ArrowCounters(
        allowed=sum(c.allowed for c in chosen),
        denied=sum(c.denied for c in chosen),
        tls_failures=tls,
        tls_exact=all(c.tls_exact for c in chosen),
        snis=tuple(c.sni for c in chosen),
    )
