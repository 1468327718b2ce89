"""Access logs of the local gateways: one JSON line per request or connection.

The local runtime (``meshfed logs``, the dashboard) reads these fields back by name. ``probe``
(the ``x-meshfed-probe`` header) and ``peer_cert`` (the client certificate's SHA-256, also for a
refused handshake) let it tell meshfed's own probes from callers' traffic; so do a connection's
addresses (``peer``, ``local``; ``upstream``, ``upstream_local`` where it was proxied), which tie
a TCP import probe's connection hop by hop to the probe (``local/prober.py``): each proxy's
upstream connection is the next one's downstream connection, the same four addresses.
"""

from __future__ import annotations

from pathlib import Path

from meshfed.plan.names import PROBE_HEADER, TUNNEL_LOCAL_ADDRESS, TUNNEL_PEER_ADDRESS
from meshfed.render.boundary_log import CONNECTION_FIELDS, REQUEST_FIELDS
from meshfed.render.envoy.process import Resource

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

# Local-only fields beside the shared boundary-log ones: how ``meshfed logs`` and the dashboard
# tell meshfed's own probes (its ledger vouches for the token or the certificate) from callers.
_PROBE_FIELDS: dict[str, str] = {
    "probe": f"%REQ({PROBE_HEADER})%",
    "peer_cert": "%DOWNSTREAM_PEER_FINGERPRINT_256%",
}
_ADDRESS_FIELDS: dict[str, str] = {
    "local": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "upstream_local": "%UPSTREAM_LOCAL_ADDRESS%",
}
"""A connection's own address at this proxy and its upstream connection's local address: with
``peer`` and ``upstream``, the two connections' four addresses (``prober.Marks``)."""


def file_log(path: Path, fields: dict[str, str]) -> Resource:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_LOG,
            "path": str(path),
            "log_format": {"json_format": fields},
        },
    }


def request_log(path: Path, mesh: str, gateway: str) -> Resource:
    fields = {"kind": "request", "mesh": mesh, "gateway": gateway, **REQUEST_FIELDS}
    return file_log(path, {**fields, **_PROBE_FIELDS})


def connection_log(path: Path, mesh: str, gateway: str) -> Resource:
    fields = {"kind": "connection", "mesh": mesh, "gateway": gateway, **CONNECTION_FIELDS}
    # The local log's name for what Istio's log calls ``termination`` (``meshfed logs`` reads it).
    fields["details"] = fields.pop("termination")
    return file_log(path, {**fields, "peer_cert": _PROBE_FIELDS["peer_cert"], **_ADDRESS_FIELDS})


def hop_log(path: Path, mesh: str, workload: str, sni: str) -> Resource:
    """One line per connection through a sidecar's TCP import listener: not a crossing (the
    egress logs that), only where it came from and which connection carried it on, the first
    hop of a TCP import probe's evidence (``local/prober.py``)."""
    return file_log(
        path,
        {
            "time": "%START_TIME%",
            "kind": "connection",
            "mesh": mesh,
            "sidecar": workload,
            "sni": sni,
            "peer": "%DOWNSTREAM_REMOTE_ADDRESS%",
            "upstream": "%UPSTREAM_HOST%",
            "flags": "%RESPONSE_FLAGS%",
            "duration_ms": "%DURATION%",
            **_ADDRESS_FIELDS,
        },
    )


def probe_request_log(path: Path, mesh: str, workload: str, header: str) -> Resource:
    """One line per request carrying the probe mark ``header`` through a sidecar's outbound
    listener (the plan sends each on an upstream connection of its own, ``ProbeMarking``):
    its mark and that connection's addresses, the first hop of an HTTP import probe's evidence
    at the egress, which reads no header (``local/hops.py``). Other requests are not logged."""
    log = file_log(
        path,
        {
            "time": "%START_TIME%",
            "kind": "request",
            "mesh": mesh,
            "sidecar": workload,
            "probe": f"%REQ({header})%",
            "code": "%RESPONSE_CODE%",
            "flags": "%RESPONSE_FLAGS%",
            "upstream": "%UPSTREAM_HOST%",
            "upstream_local": "%UPSTREAM_LOCAL_ADDRESS%",
            "duration_ms": "%DURATION%",
        },
    )
    log["filter"] = {"header_filter": {"header": {"name": header, "present_match": True}}}
    return log


TUNNEL_PEER_CERT = "x-meshfed-peer-cert"
"""Set by a TCP export's chain on its tunnel's CONNECT (never reaches the workload): the
caller's certificate fingerprint, for the tunnel's log line."""


def tunnel_log(path: Path, mesh: str, sni: str, caller_header: str) -> Resource:
    """One line per TCP session through a TCP export's tunnel (`render/envoy/tunnel.py`), with
    the connection log's fields: the caller (and its certificate) as the export's chain read them
    from the verified certificate, the decision the tunnel's RBAC made before the workload was
    connected, in ``details`` as for a request."""
    return file_log(
        path,
        {
            "time": "%START_TIME%",
            "kind": "connection",
            "mesh": mesh,
            "gateway": "ingress",
            "sni": sni,  # a tunnel per export: its SNI (the CONNECT's authority has a port)
            "caller": f"%REQ({caller_header.upper()})%",
            "upstream": "%UPSTREAM_HOST%",
            "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
            "details": "%RESPONSE_CODE_DETAILS%",
            "decision": "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_engine_result)%",
            "policy": "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)%",
            "bytes_received": "%BYTES_RECEIVED%",
            "bytes_sent": "%BYTES_SENT%",
            "duration_ms": "%DURATION%",
            "peer_cert": f"%REQ({TUNNEL_PEER_CERT.upper()})%",
            # The outer (caller) connection's addresses, as its chain set them on the CONNECT.
            "peer": f"%REQ({TUNNEL_PEER_ADDRESS.upper()})%",
            "local": f"%REQ({TUNNEL_LOCAL_ADDRESS.upper()})%",
        },
    )
