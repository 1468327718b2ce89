"""One Envoy's configuration files, and the order in which a running Envoy gets new ones.

Files (paths from ``render/envoy/files.py``): ``bootstrap.json``, ``cds/cds.json``,
``lds/lds.json``, ``sds/<secret>.json``. Each xDS file is a DiscoveryResponse whose
``version_info`` counts up whenever its resources change; unchanged resources are never rewritten,
so an unchanged Envoy sees nothing at all.

A running Envoy is updated make-before-break: secrets, then clusters (old and new together), wait
until Envoy applied them and no cluster is warming, then listeners, wait, then the final clusters.
A listener naming a cluster Envoy does not know yet would be rejected whole.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshfed.local import admin
from meshfed.local.errors import LocalError
from meshfed.local.files import read_json, write_atomic, write_json
from meshfed.local.paths import mkdir_private
from meshfed.render.envoy.files import (
    bootstrap,
    discovery_response,
    process_dir,
    tls_secret,
    validation_secret,
)
from meshfed.render.envoy.process import ProcessConfig, Resource

SECRET_MODE = 0o600
APPLY_TIMEOUT = 10.0

_CDS_STATS = r"^cluster_manager\.(cds\.version_text|cds\.update_rejected|warming_clusters)$"
_LDS_STATS = r"^listener_manager\.(lds\.version_text|lds\.update_rejected|total_listeners_warming)$"


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _version_after(old: Any) -> str:
    try:
        return str(int(str(old["version_info"])) + 1)
    except (KeyError, TypeError, ValueError):
        return "1"


def _same_resources(old: Any, resources: list[Resource]) -> bool:
    return isinstance(old, Mapping) and _canonical(old.get("resources")) == _canonical(resources)


@dataclass
class Pending:
    """What differs between one Envoy's files and its wanted configuration."""

    bootstrap: Resource | None = None
    secrets: dict[str, Resource] = field(default_factory=dict)
    """Secret name -> the whole SDS file content (DiscoveryResponse)."""
    stale_secrets: list[str] = field(default_factory=list)
    clusters: list[Resource] | None = None
    listeners: list[Resource] | None = None

    @property
    def empty(self) -> bool:
        return (
            self.bootstrap is None
            and not self.secrets
            and not self.stale_secrets
            and self.clusters is None
            and self.listeners is None
        )

    def describe(self) -> str:
        parts = []
        if self.bootstrap is not None:
            parts.append("bootstrap")
        if self.secrets:
            parts.append("secrets " + ", ".join(sorted(self.secrets)))
        if self.clusters is not None:
            parts.append("clusters")
        if self.listeners is not None:
            parts.append("listeners")
        return ", ".join(parts) or "nothing"


class EnvoyFiles:
    """The files of one Envoy process under ``runtime_dir``."""

    def __init__(self, runtime_dir: Path, process: ProcessConfig) -> None:
        self.runtime_dir = runtime_dir
        self.process = process
        self.dir = process_dir(runtime_dir, process.name)

    @property
    def bootstrap_path(self) -> Path:
        return self.dir / "bootstrap.json"

    @property
    def cds_path(self) -> Path:
        return self.dir / "cds" / "cds.json"

    @property
    def lds_path(self) -> Path:
        return self.dir / "lds" / "lds.json"

    def sds_path(self, secret: str) -> Path:
        return self.dir / "sds" / f"{secret}.json"

    def kept_default_secret(self) -> Any:
        return read_json(self.sds_path("default"))

    def diff(self, secrets: Mapping[str, Resource]) -> Pending:
        """Compare with the files on disk; ``secrets``: name -> SDS file content."""
        pending = Pending()
        boot = bootstrap(self.process, self.runtime_dir)
        if read_json(self.bootstrap_path) != json.loads(_canonical(boot)):
            pending.bootstrap = boot
        for name, content in secrets.items():
            old = read_json(self.sds_path(name))
            if not _same_resources(old, content["resources"]):
                pending.secrets[name] = content
        sds_dir = self.dir / "sds"
        if sds_dir.is_dir():
            for path in sorted(sds_dir.glob("*.json")):
                if path.stem not in secrets:
                    pending.stale_secrets.append(path.stem)
        if not _same_resources(read_json(self.cds_path), self.process.clusters):
            pending.clusters = self.process.clusters
        if not _same_resources(read_json(self.lds_path), self.process.listeners):
            pending.listeners = self.process.listeners
        return pending

    # --- writing

    def _write_xds(self, path: Path, resources: list[Resource]) -> str:
        version = _version_after(read_json(path))
        write_json(path, discovery_response(resources, version))
        return version

    def _write_secret(self, name: str, content: Resource) -> None:
        old = read_json(self.sds_path(name))
        doc = dict(content)
        doc["version_info"] = _version_after(old)
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        write_atomic(self.sds_path(name), data, SECRET_MODE)

    def _prepare_dirs(self) -> None:
        for sub in ("", "cds", "lds", "sds"):
            mkdir_private(self.dir / sub)

    def write_cold(self, pending: Pending) -> None:
        """Write everything for an Envoy that is not running (it reads the files when it starts)."""
        self._prepare_dirs()
        if pending.bootstrap is not None:
            write_json(self.bootstrap_path, pending.bootstrap)
        for name, content in pending.secrets.items():
            self._write_secret(name, content)
        for name in pending.stale_secrets:
            self.sds_path(name).unlink(missing_ok=True)
        if pending.clusters is not None:
            self._write_xds(self.cds_path, pending.clusters)
        if pending.listeners is not None:
            self._write_xds(self.lds_path, pending.listeners)

    def apply_live(self, pending: Pending, timeout: float = APPLY_TIMEOUT) -> None:
        """Update a running Envoy without a restart (the bootstrap must be unchanged)."""
        port = self.process.admin_port
        self._prepare_dirs()
        for name, content in pending.secrets.items():
            self._write_secret(name, content)
        if pending.clusters is not None or pending.listeners is not None:
            old = read_json(self.cds_path)
            old_clusters: list[Resource] = list(old.get("resources", [])) if old else []
            wanted = self.process.clusters
            if pending.listeners is not None:
                # Make before break: the old listeners may still name clusters that go away.
                names = {c.get("name") for c in wanted}
                union = wanted + [c for c in old_clusters if c.get("name") not in names]
                self._apply(port, self.cds_path, union, "cds", timeout)
                self._apply(port, self.lds_path, self.process.listeners, "lds", timeout)
            if not _same_resources(read_json(self.cds_path), wanted):
                self._apply(port, self.cds_path, wanted, "cds", timeout)
        for name in pending.stale_secrets:
            self.sds_path(name).unlink(missing_ok=True)

    def _apply(
        self, port: int, path: Path, resources: list[Resource], kind: str, timeout: float
    ) -> None:
        if _same_resources(read_json(path), resources):
            return
        pattern = _CDS_STATS if kind == "cds" else _LDS_STATS
        rejected_stat = (
            "cluster_manager.cds.update_rejected"
            if kind == "cds"
            else "listener_manager.lds.update_rejected"
        )
        before = admin.stats(port, pattern)
        previous = path.read_bytes() if path.exists() else None
        version = self._write_xds(path, resources)

        def applied(s: dict[str, str]) -> bool:
            if kind == "cds":
                return (
                    s.get("cluster_manager.cds.version_text") == version
                    and s.get("cluster_manager.warming_clusters") == "0"
                )
            return (
                s.get("listener_manager.lds.version_text") == version
                and s.get("listener_manager.total_listeners_warming") == "0"
            )

        def rejected(s: dict[str, str]) -> bool:
            return s.get(rejected_stat, "0") != before.get(rejected_stat, "0")

        try:
            wait_for_stats(port, pattern, applied, rejected, timeout)
        except LocalError as exc:
            # Envoy keeps running its old configuration: put the old file back, so the next
            # ``up`` sees the difference again and retries.
            if previous is not None:
                write_atomic(path, previous)
            raise LocalError(
                f"{self.process.name}: {exc.problem} ({kind.upper()} version {version})",
                f"see the Envoy log under {self.runtime_dir / 'logs'}",
            ) from None


def wait_for_stats(
    port: int,
    pattern: str,
    done: Callable[[dict[str, str]], bool],
    failed: Callable[[dict[str, str]], bool],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = admin.stats(port, pattern)
        except admin.AdminError as exc:
            raise LocalError(f"Envoy's admin interface stopped answering ({exc})") from None
        if done(s):
            return
        if failed(s):
            raise LocalError("Envoy rejected the update")
        if time.monotonic() > deadline:
            raise LocalError(f"Envoy did not apply the update within {timeout:.0f} s")
        time.sleep(0.005)


def secrets_for(process: ProcessConfig, identity: tuple[str, str] | None) -> dict[str, Resource]:
    """Every SDS file content of ``process``; ``identity``: (chain PEM, key PEM) if it has one."""
    out: dict[str, Resource] = {}
    if process.spiffe_id is not None:
        if identity is None:
            raise ValueError(f"{process.name} needs a certificate")
        out["default"] = tls_secret(*identity)
    for name, validator in process.trust.items():
        out[name] = validation_secret(name, validator)
    return out
