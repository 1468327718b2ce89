"""The egress gateway's active probe of an exporter's ingress: a TLS ClientHello, answered by a
ServerHello.

The egress passes TLS through, so a plain TCP health check only learns that the ingress's kernel
accepted a connection: an ingress at its connection cap accepts and closes at once, and a stalled
one accepts and never answers, both "healthy" to a TCP connect. Envoy's TCP health check can send
bytes and expect bytes back, so the probe sends a fixed TLS 1.3 ClientHello for the plan's probe
SNI (`meshfed.plan.limits.FailoverPolicy.probe_sni`), which every local ingress answers with its
ServerHello and nothing else (`render/envoy/ingress.py`), and wants the ServerHello's record
header (``16 03 03``) back within the probe timeout.

The ClientHello is built here, byte for byte (RFC 8446 section 4.1.2), so that it is the same on
every render: fixed random and session id, TLS 1.3 and 1.2 suites, X25519 and P-256, ECDSA, PSS
and PKCS#1 signatures (an ingress certificate may be ECDSA or RSA), and an X25519 key share of
the curve's base point (a valid public value; the probe never finishes the handshake). Checked
against Envoy 1.40 (BoringSSL): the ingress answers ServerHello, and an ingress at its cap or
with its listener stalled does not.
"""

from __future__ import annotations

import struct

__all__ = ["SERVER_HELLO", "client_hello"]

SERVER_HELLO = "160303"
"""Hex of what a ServerHello starts with: a handshake record (22), legacy version TLS 1.2."""

_SUITES = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F)
_GROUPS = (0x001D, 0x0017)
_SIGNATURES = (0x0403, 0x0804, 0x0401)
_VERSIONS = (0x0304, 0x0303)
_X25519_BASE_POINT = b"\x09" + bytes(31)


def _vector(data: bytes, length_bytes: int) -> bytes:
    return len(data).to_bytes(length_bytes, "big") + data


def _extension(kind: int, body: bytes) -> bytes:
    return struct.pack(">HH", kind, len(body)) + body


def _u16s(values: tuple[int, ...]) -> bytes:
    return b"".join(struct.pack(">H", v) for v in values)


def client_hello(sni: str) -> bytes:
    """A TLS ClientHello record for ``sni`` (ASCII host name), the same bytes every time."""
    name = sni.encode("ascii")
    extensions = b"".join(
        [
            _extension(0x0000, _vector(b"\x00" + _vector(name, 2), 2)),  # server_name
            _extension(0x000A, _vector(_u16s(_GROUPS), 2)),  # supported_groups
            _extension(0x000D, _vector(_u16s(_SIGNATURES), 2)),  # signature_algorithms
            _extension(0x002B, _vector(_u16s(_VERSIONS), 1)),  # supported_versions
            _extension(  # key_share: X25519
                0x0033, _vector(struct.pack(">HH", 0x001D, 32) + _X25519_BASE_POINT, 2)
            ),
        ]
    )
    body = (
        b"\x03\x03"  # legacy_version TLS 1.2
        + bytes(32)  # random
        + _vector(bytes(32), 1)  # legacy_session_id
        + _vector(_u16s(_SUITES), 2)
        + _vector(b"\x00", 1)  # compression: null
        + _vector(extensions, 2)
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body  # client_hello
    return b"\x16\x03\x01" + _vector(handshake, 2)
