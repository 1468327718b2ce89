"""kubeconfig contexts, resolved as kubectl resolves them.

``--kubeconfig FILE`` wins; else ``$KUBECONFIG`` (a list of files joined by ``:``, merged: the
first file to define a cluster, user or context wins, and the first ``current-context`` set);
else ``~/.kube/config``. Relative paths in a file are relative to that file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError

from meshfed.kube.errors import KubeError

_PATH_KEYS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}


def kubeconfig_files(explicit: Path | str | None = None) -> list[Path]:
    """The files kubectl would read, in precedence order."""
    if explicit is not None:
        return [Path(explicit).expanduser()]
    env = os.environ.get("KUBECONFIG", "")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


def _absolute(entry: dict[str, Any], section: str, base: Path) -> dict[str, Any]:
    body = dict(entry.get(section) or {})
    for key in _PATH_KEYS[section]:
        value = body.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            body[key] = str(base / value)
    return {**entry, section: body}


def merged_kubeconfig(explicit: Path | str | None = None) -> dict[str, Any]:
    """The merged kubeconfig document (kubectl's rules), relative paths made absolute."""
    files = kubeconfig_files(explicit)
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    seen: dict[str, set[str]] = {"clusters": set(), "contexts": set(), "users": set()}
    found = False
    for path in files:
        if not path.is_file():
            if explicit is not None:
                raise KubeError(f"kubeconfig {path} does not exist")
            continue
        found = True
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise KubeError(f"cannot read kubeconfig {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise KubeError(f"kubeconfig {path} is not a mapping")
        if doc.get("current-context") and "current-context" not in merged:
            merged["current-context"] = doc["current-context"]
        for section, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", None)):
            for entry in doc.get(section) or []:
                name = entry.get("name") if isinstance(entry, dict) else None
                if not isinstance(name, str) or name in seen[section]:
                    continue
                seen[section].add(name)
                if inner is not None:
                    entry = _absolute(entry, inner, path.resolve().parent)
                merged[section].append(entry)
    if not found:
        raise KubeError(
            "no kubeconfig found (looked at "
            + ", ".join(str(p) for p in files)
            + "); pass --kubeconfig or set KUBECONFIG"
        )
    return merged


def resolve_context(context: str | None, explicit: Path | str | None = None) -> SingleConfig:
    """The cluster, user and namespace of ``context`` (None: the current context)."""
    doc = merged_kubeconfig(explicit)
    try:
        config = KubeConfig.from_dict(doc).get(context)
    except (ConfigError, KeyError) as exc:
        known = ", ".join(sorted(c["name"] for c in doc["contexts"])) or "(none)"
        what = f"context {context!r}" if context else "the current context"
        raise KubeError(f"kubeconfig has no usable {what} ({exc}); contexts: {known}") from None
    if config is None:
        raise KubeError("kubeconfig sets no current-context; name a context")
    return config
