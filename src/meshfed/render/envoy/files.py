"""Where each Envoy's files live, and the file-level envelopes Envoy reads.

Every Envoy reads LDS, CDS and SDS from watched directories (``lds/``, ``cds/``, ``sds/``) under
its process directory; one SDS secret per file. Filter configurations that listeners load through
ECDS (extension config discovery) live in ``ecds/``, one per file, so that a listener stays small
and a change of one filter configuration leaves the listener (and Envoy's parse of it) alone.

Envoy reacts only to a rename into a watched directory, so writers must write a temporary file
there and rename it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from meshfed.render.envoy.limits import bootstrap_limits
from meshfed.render.envoy.process import ProcessConfig, Resource

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
SPIFFE_VALIDATOR = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
)


def process_slug(name: str) -> str:
    return name.replace("/", "_")


def process_dir(runtime_dir: Path, name: str) -> Path:
    return runtime_dir / "envoy" / process_slug(name)


def log_path(runtime_dir: Path, name: str, kind: Literal["access", "conn"]) -> Path:
    return runtime_dir / "logs" / f"{process_slug(name)}.{kind}.log"


def _watched(path: Path) -> dict[str, Any]:
    return {
        "resource_api_version": "V3",
        "path_config_source": {
            "path": str(path),
            "watched_directory": {"path": str(path.parent)},
        },
    }


def sds_ref(runtime_dir: Path, process: str, secret: str) -> Resource:
    """A reference to SDS secret ``secret`` of ``process``, read from its own watched file."""
    return {
        "name": secret,
        "sds_config": _watched(process_dir(runtime_dir, process) / "sds" / f"{secret}.json"),
    }


def ecds_ref(runtime_dir: Path, process: str, name: str, type_url: str) -> Resource:
    """An ``ExtensionConfigSource`` for filter configuration ``name`` of ``process``, read from
    its own watched file and limited to ``type_url``.

    No ``default_config`` and no ``apply_default_config_without_warming``: a listener that names
    it warms until Envoy has read the file. Checked on Envoy 1.40: a missing file gets the whole
    listener update rejected; a file Envoy rejects leaves the filter without configuration, and
    then Envoy fails closed (HTTP 500, network: the connection is closed); a later bad or missing
    file keeps the last good configuration.
    """
    return {
        "config_source": _watched(process_dir(runtime_dir, process) / "ecds" / f"{name}.json"),
        "type_urls": [type_url],
    }


ADMIN_SOCKET_MODE = 0o600


def admin(socket_path: str) -> Resource:
    """The admin endpoint on a unix socket only its user may connect to (never TCP: any local
    process could stop or reconfigure the Envoy there). It stays reachable at the connection cap.
    """
    return {
        "address": {"pipe": {"path": socket_path, "mode": ADMIN_SOCKET_MODE}},
        "ignore_global_conn_limit": True,
    }


def bootstrap(process: ProcessConfig, runtime_dir: Path) -> Resource:
    base = process_dir(runtime_dir, process.name)
    return {
        "node": {"id": process.name, "cluster": process.mesh},
        "admin": admin(process.admin_socket),
        "dynamic_resources": {
            "lds_config": _watched(base / "lds" / "lds.json"),
            "cds_config": _watched(base / "cds" / "cds.json"),
        },
        **bootstrap_limits(
            process.max_connections, process.listener_caps, process.internal_listeners
        ),
    }


def discovery_response(resources: list[Resource], version: str) -> Resource:
    return {"version_info": version, "resources": resources}


def tls_secret(chain_pem: str, key_pem: str, version: str = "1") -> Resource:
    """SDS file content of secret ``default``: the process's certificate chain and key."""
    return discovery_response(
        [
            {
                "@type": SECRET_TYPE,
                "name": "default",
                "tls_certificate": {
                    "certificate_chain": {"inline_string": chain_pem},
                    "private_key": {"inline_string": key_pem},
                },
            }
        ],
        version,
    )


def validation_secret(name: str, validator: Resource, version: str = "1") -> Resource:
    """SDS file content of a validation secret (see ``ProcessConfig.trust``)."""
    return discovery_response(
        [{"@type": SECRET_TYPE, "name": name, "validation_context": validator}], version
    )


def extension_config(name: str, typed_config: Resource, version: str = "1") -> Resource:
    """ECDS file content of filter configuration ``name`` (see ``ProcessConfig.extensions``)."""
    return discovery_response(
        [{"@type": EXTENSION_CONFIG, "name": name, "typed_config": typed_config}], version
    )
