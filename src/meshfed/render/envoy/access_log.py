"""Access logs of the local gateways: one JSON line per request or connection.

The local runtime (``meshfed logs``, the dashboard) reads these fields back by name.
"""

from __future__ import annotations

from pathlib import Path

from meshfed.render.envoy.process import Resource

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


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
    return file_log(
        path,
        {
            "time": "%START_TIME%",
            "kind": "request",
            "mesh": mesh,
            "gateway": gateway,
            "sni": "%REQUESTED_SERVER_NAME%",
            "caller": "%DOWNSTREAM_PEER_URI_SAN%",
            "method": "%REQ(:METHOD)%",
            "authority": "%REQ(:AUTHORITY)%",
            "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
            "code": "%RESPONSE_CODE%",
            "flags": "%RESPONSE_FLAGS%",
            "details": "%RESPONSE_CODE_DETAILS%",
            "decision": "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_engine_result)%",
            "policy": "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)%",
            "duration_ms": "%DURATION%",
        },
    )


def connection_log(path: Path, mesh: str, gateway: str) -> Resource:
    return file_log(
        path,
        {
            "time": "%START_TIME%",
            "kind": "connection",
            "mesh": mesh,
            "gateway": gateway,
            "sni": "%REQUESTED_SERVER_NAME%",
            "caller": "%DOWNSTREAM_PEER_URI_SAN%",
            "tls_failure": "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%",
            "upstream": "%UPSTREAM_HOST%",
            "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
            "flags": "%RESPONSE_FLAGS%",
            "details": "%CONNECTION_TERMINATION_DETAILS%",
            "bytes_received": "%BYTES_RECEIVED%",
            "bytes_sent": "%BYTES_SENT%",
            "duration_ms": "%DURATION%",
        },
    )
