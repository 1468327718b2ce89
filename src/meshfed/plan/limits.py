"""How long and how much a client may hold a meshfed proxy, and when an exporter counts as down.

A client that opens a connection and then goes quiet (a ClientHello and silence, an idle
connection after the handshake, headers or a body half sent) holds a descriptor, memory and a
connection slot for as long as the proxy lets it. Without bounds ~10,000 such connections
exhausted a local ingress (issue 13). The plan bounds every phase of every listener and caps
the connections per listener and per proxy; both renderers translate these values, the local
one to Envoy directly, the Istio one with what Istio lets a user set (`render/istio/limits`).

A consumer must also see a saturated or stalling exporter as failed, so that its egress moves
calls to the next exporter of the import (`FailoverPolicy`).

Values here are the defaults for every mesh; the spec does not change them (yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

__all__ = ["FailoverPolicy", "ListenerLimits", "MeshLimits", "RetryPolicy"]


@dataclass(frozen=True)
class ListenerLimits:
    """The bounds of one listener: every phase of a connection, its size, and how many."""

    handshake_timeout: timedelta = timedelta(seconds=5)
    """From accept to a completed TLS handshake: a client must send its ClientHello (the SNI
    read) and finish the handshake within it (a stalled ClientHello is closed)."""
    request_headers_timeout: timedelta = timedelta(seconds=5)
    """HTTP: from a request's first byte to its last header."""
    stream_idle_timeout: timedelta = timedelta(seconds=15)
    """HTTP: a request or response that makes no progress (a body half sent) for this long is
    ended (408 / reset)."""
    request_timeout: timedelta = timedelta(seconds=30)
    """HTTP: the whole request, body included, must arrive within it."""
    idle_timeout: timedelta = timedelta(seconds=30)
    """HTTP: a connection with no request for this long is closed."""
    max_connection_duration: timedelta = timedelta(seconds=300)
    """HTTP: a connection is drained after this long, however busy (pooled connections move to
    new certificates and back to a recovered exporter)."""
    tcp_idle_timeout: timedelta = timedelta(seconds=300)
    """TCP: a session in which no byte moves either way for this long is closed."""
    max_request_headers_kb: int = 32
    """HTTP: the request headers' total size (Envoy answers 431 above it)."""
    max_headers_count: int = 64
    """HTTP: how many request headers (Envoy answers 431 above it)."""
    underscore_headers: Literal["REJECT", "DROP", "ALLOW"] = "REJECT"
    """HTTP: a request header whose name holds ``_``: the request is refused (400), the header
    dropped, or let through. CGI-style backends map ``-`` and ``_`` to the same variable, so
    ``x_meshfed_caller`` could stand in for the header the ingress sets."""
    buffer_limit_bytes: int = 32 * 1024
    """Bytes buffered per connection before the proxy stops reading from that side (flow
    control, instead of Envoy's 1 MiB)."""
    max_connections: int = 8000
    """Connections this listener holds at once; the next ones are closed at accept. Below the
    proxy's cap, so an attack on one listener leaves room for the proxy's others."""


@dataclass(frozen=True)
class MeshLimits:
    """The bounds of a mesh's proxies: its federation ingress (what other meshes reach) and its
    in-mesh listeners (egress gateway, sidecars)."""

    ingress: ListenerLimits = field(default_factory=ListenerLimits)
    internal: ListenerLimits = field(
        default_factory=lambda: ListenerLimits(
            underscore_headers="DROP",
            idle_timeout=timedelta(minutes=5),
            request_timeout=timedelta(minutes=5),
            stream_idle_timeout=timedelta(minutes=5),
        )
    )
    """In-mesh callers (a workload's own sidecar, the mesh's egress): the same handshake and
    size bounds, longer idle times for the mesh's own long-lived connections, and headers with
    ``_`` dropped rather than refused (a workload's own requests keep working)."""
    max_connections_per_proxy: int = 8192
    """Downstream connections one proxy process holds at once, all listeners together (its
    admin endpoint aside). A TCP export costs two descriptors per connection, so a proxy needs
    a descriptor limit above twice this (the local runtime raises it where it may)."""

    @property
    def descriptors_needed(self) -> int:
        """Open files a local proxy needs to reach its caps (two per proxied connection, plus
        its own files)."""
        return 2 * self.max_connections_per_proxy + 1024


@dataclass(frozen=True)
class FailoverPolicy:
    """When a consumer's egress counts an exporter's ingress as down and moves calls to the
    next source of the import, and when it moves them back."""

    connect_timeout: timedelta = timedelta(seconds=1)
    """A connection to an exporter's ingress not established within this is a failure."""
    consecutive_failures: int = 1
    """Failed connects (refused, timed out) in a row that eject an exporter at once."""
    ejection_time: timedelta = timedelta(seconds=1)
    """How long an ejected exporter gets no new connections (doubling on repeated ejections,
    up to ``max_ejection_time``)."""
    max_ejection_time: timedelta = timedelta(seconds=2)
    analysis_interval: timedelta = timedelta(seconds=0.5)
    """How often ejections are reviewed (and lifted)."""
    probe_interval: timedelta = timedelta(seconds=0.25)
    """An active probe of each exporter's ingress: a TLS ClientHello (SNI ``probe_sni``) that
    must be answered by a ServerHello within ``probe_timeout``. An ingress that accepts and
    closes (at its connection cap) or answers late (stalled, overloaded) fails it, which a
    plain TCP connect never shows through a pass-through egress."""
    probe_timeout: timedelta = timedelta(seconds=1)
    unhealthy_after: int = 1
    """Failed probes in a row that take an exporter out of rotation."""
    healthy_after: int = 2
    """Passed probes in a row that bring it back (more than one, so an exporter under a
    sustained attack that frees a slot now and then does not flap)."""
    probe_sni: str = "probe.meshfed.invalid"
    """The SNI of the probe; every local ingress answers it with a ServerHello and nothing else
    (RFC 2606 ``.invalid``: no real name collides)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a consumer's sidecar retries a call to an HTTP import that reached no workload.

    The sidecar sends every call to its mesh's egress gateway, which passes TLS through to an
    exporter's ingress: when that ingress is down, the egress's connect fails and it resets the
    sidecar's connection, and the sidecar retries on a new one, which the egress sends to the
    next exporter once it has ejected the dead one. Envoy (1.40, seen on istiod 1.25.5) takes a
    host it ejects for the second time or later out of its load balancer only about one second
    later, while connections keep going to it and fail (Envoy issues 28304 and 40697): a plain
    two retries turned 20-30 calls of an 8-second outage into 503s, every few seconds as the
    ejection expired. Retries that span that second carry the calls over it.

    ``attempts`` retries with Envoy's default back-off (25 ms base, 250 ms at most, jittered:
    Istio 1.25's ``HTTPRetry`` cannot set it, so both renderers keep it) span about 1.8 s on
    average; a call that finds every exporter down fails after them. Only failures before any
    workload answered are retried (``retry_on``).
    """

    attempts: int = 16
    retry_on: tuple[str, ...] = ("connect-failure", "refused-stream", "reset")
    base_interval: timedelta = timedelta(milliseconds=25)
    max_interval: timedelta = timedelta(milliseconds=250)
    """Envoy's default back-off, which Istio uses (not settable there)."""
