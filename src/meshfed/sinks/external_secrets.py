"""Secrets for GitOps: the rendered Secrets as External Secrets Operator ``ExternalSecret``s.

A repository a GitOps tool syncs must not hold private keys. With ``meshfed render --secrets
external-secrets`` each Secret meshfed renders (``cacerts``, the ingress credential) becomes an
``ExternalSecret`` (``external-secrets.io/v1``, ESO 0.17 and later) naming the same Secret, its
type and labels, and one ``remoteRef`` per key into a store the platform already runs (Vault,
AWS/GCP/Azure secret managers, ...): ``key: <prefix>/<mesh>/<secret>``, ``property: <key>``. The
values go to the state directory, one JSON object per Secret (keys as properties, PEM text as
values, mode 0600), the form ``vault kv put <path> @file.json`` and ``aws secretsmanager
put-secret-value --secret-string file://file.json`` take; whoever holds the state uploads them.
No value is ever written into the output directory.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meshfed.render.istio import RenderedMesh
from meshfed.sinks.files import write_private

__all__ = ["ExternalSecretsOptions", "external_secret", "to_external_secrets", "write_values"]

Obj = dict[str, Any]
API_VERSION = "external-secrets.io/v1"
VALUES_DIR = "secret-store"
"""Under the state directory: ``<mesh>/<secret>.json``, the values to upload."""


@dataclass(frozen=True)
class ExternalSecretsOptions:
    store: str
    """The (Cluster)SecretStore the ExternalSecrets read from."""
    store_kind: Literal["ClusterSecretStore", "SecretStore"] = "ClusterSecretStore"
    prefix: str = "meshfed"
    """Remote keys are ``<prefix>/<mesh>/<secret name>``."""
    refresh: str = "1h"

    def remote_key(self, mesh: str, secret: str) -> str:
        return f"{self.prefix.rstrip('/')}/{mesh}/{secret}"


def _values(secret: Obj) -> dict[str, str]:
    data = secret.get("data") or {}
    return {key: base64.b64decode(value).decode() for key, value in sorted(data.items())}


def external_secret(mesh: str, secret: Obj, options: ExternalSecretsOptions) -> Obj:
    """The ExternalSecret that makes ESO create ``secret`` from the store."""
    meta = secret["metadata"]
    remote = options.remote_key(mesh, meta["name"])
    return {
        "apiVersion": API_VERSION,
        "kind": "ExternalSecret",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": dict(meta["labels"]),
        },
        "spec": {
            "refreshInterval": options.refresh,
            "secretStoreRef": {"name": options.store, "kind": options.store_kind},
            "target": {
                "name": meta["name"],
                "creationPolicy": "Owner",
                # No template data: ESO writes the fetched keys as they are.
                "template": {
                    "type": secret.get("type", "Opaque"),
                    "metadata": {"labels": dict(meta["labels"])},
                },
            },
            "data": [
                {"secretKey": key, "remoteRef": {"key": remote, "property": key}}
                for key in sorted(secret.get("data") or {})
            ],
        },
    }


def to_external_secrets(
    rendered: RenderedMesh, options: ExternalSecretsOptions
) -> tuple[RenderedMesh, dict[str, dict[str, str]]]:
    """``rendered`` with every Secret replaced by its ExternalSecret, and the values by remote
    key."""
    files: dict[str, list[Obj]] = {}
    values: dict[str, dict[str, str]] = {}
    for name, docs in rendered.secret_files.items():
        out = []
        for doc in docs:
            if doc.get("kind") == "Secret":
                values[options.remote_key(rendered.mesh, doc["metadata"]["name"])] = _values(doc)
                doc = external_secret(rendered.mesh, doc, options)
            out.append(doc)
        files[name] = out
    return (
        RenderedMesh(rendered.mesh, rendered.files, files, rendered.install_files),
        values,
    )


def write_values(state_dir: Path, values: dict[str, dict[str, str]]) -> Path:
    """Write each Secret's values as ``STATE/secret-store/<remote key>.json`` (0600, in
    directories 0700); returns ``STATE/secret-store``."""
    root = state_dir / VALUES_DIR
    for key, data in sorted(values.items()):
        path = root / f"{key}.json"
        for parent in reversed(path.relative_to(state_dir).parents[:-1]):
            directory = state_dir / parent
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return root
