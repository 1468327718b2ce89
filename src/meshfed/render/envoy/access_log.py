"""Access logs of the local gateways: one JSON line per request or connection.

The local runtime (``meshfed logs``, the dashboard) reads these fields back by name.
"""

from __future__ import annotations

from pathlib import Path

from meshfed.render.boundary_log import CONNECTION_FIELDS, REQUEST_FIELDS
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
    return file_log(path, {"kind": "request", "mesh": mesh, "gateway": gateway, **REQUEST_FIELDS})


def connection_log(path: Path, mesh: str, gateway: str) -> Resource:
    fields = {"kind": "connection", "mesh": mesh, "gateway": gateway, **CONNECTION_FIELDS}
    # The local log's name for what Istio's log calls ``termination`` (``meshfed logs`` reads it).
    fields["details"] = fields.pop("termination")
    return file_log(path, fields)
