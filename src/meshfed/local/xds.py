"""One Envoy's configuration files, and the order in which a running Envoy gets new ones.

Files (paths from ``render/envoy/files.py``): ``bootstrap.json``, ``cds/cds.json``,
``lds/lds.json``, ``sds/<secret>.json``, ``ecds/<filter configuration>.json``. Each xDS file is a
DiscoveryResponse whose ``version_info`` counts up whenever its resources change; unchanged
resources are never rewritten, so an unchanged Envoy sees nothing at all.

Files are compared by a digest of their canonical JSON, remembered by file identity
(``xds_state.py``): a later comparison in the same process (``meshfed up --watch``, one edit
after another) reads and parses only files that somebody else changed meanwhile.

A running Envoy is updated make-before-break: secrets and ECDS filter configurations (wait until
Envoy applied those its listeners already use), then clusters (old and new together), wait until
Envoy applied them and no cluster is warming, then listeners, wait (and check that Envoy loaded
the filter configurations new listeners use), then the final clusters; files nothing names any
more go last. A listener naming a cluster Envoy does not know yet, or an ECDS file that does not
exist, would be rejected whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from meshfed.local import admin
from meshfed.local.admin import ecds_stats, ecds_stats_pattern, wait_for_stats
from meshfed.local.errors import LocalError
from meshfed.local.files import read_json, write_atomic, write_json
from meshfed.local.paths import mkdir_private
from meshfed.local.xds_state import (
    FileState,
    digest,
    file_id,
    file_state,
    has,
    remember,
    version_after,
)
from meshfed.render.envoy.files import (
    bootstrap,
    discovery_response,
    extension_config,
    process_dir,
    tls_secret,
    validation_secret,
)
from meshfed.render.envoy.process import ProcessConfig, Resource

SECRET_MODE = 0o600
APPLY_TIMEOUT = 10.0

_CDS_STATS = r"^cluster_manager\.(cds\.version_text|cds\.update_rejected|warming_clusters)$"
_LDS_STATS = r"^listener_manager\.(lds\.version_text|lds\.update_rejected|total_listeners_warming)$"


@dataclass
class Pending:
    """What differs between one Envoy's files and its wanted configuration."""

    bootstrap: Resource | None = None
    secrets: dict[str, Resource] = field(default_factory=dict)
    """Secret name -> the whole SDS file content (DiscoveryResponse)."""
    stale_secrets: list[str] = field(default_factory=list)
    extensions: dict[str, Resource] = field(default_factory=dict)
    """ECDS filter configuration name -> the whole file content (DiscoveryResponse)."""
    stale_extensions: list[str] = field(default_factory=list)
    clusters: list[Resource] | None = None
    listeners: list[Resource] | None = None

    @property
    def empty(self) -> bool:
        return (
            self.bootstrap is None
            and not self.secrets
            and not self.stale_secrets
            and not self.extensions
            and not self.stale_extensions
            and self.clusters is None
            and self.listeners is None
        )

    def describe(self) -> str:
        parts = []
        if self.bootstrap is not None:
            parts.append("bootstrap")
        if self.secrets:
            parts.append("secrets " + ", ".join(sorted(self.secrets)))
        if self.extensions:
            parts.append("filters " + ", ".join(sorted(self.extensions)))
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

    @cached_property
    def clusters_digest(self) -> str:
        return digest(self.process.clusters)

    @cached_property
    def listeners_digest(self) -> str:
        return digest(self.process.listeners)

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

    def ecds_path(self, name: str) -> Path:
        return self.dir / "ecds" / f"{name}.json"

    def kept_default_secret(self) -> Any:
        return read_json(self.sds_path("default"))

    def diff(self, secrets: Mapping[str, Resource]) -> Pending:
        """Compare with the files on disk; ``secrets``: name -> SDS file content."""
        pending = Pending()
        boot = bootstrap(self.process, self.runtime_dir)
        if not has(self.bootstrap_path, digest(boot), whole=True):
            pending.bootstrap = boot
        for name, content in secrets.items():
            if not has(self.sds_path(name), digest(content["resources"])):
                pending.secrets[name] = content
        sds_dir = self.dir / "sds"
        if sds_dir.is_dir():
            for path in sorted(sds_dir.glob("*.json")):
                if path.stem not in secrets:
                    pending.stale_secrets.append(path.stem)
        for name, config in self.process.extensions.items():
            content = extension_config(name, config)
            if not has(self.ecds_path(name), digest(content["resources"])):
                pending.extensions[name] = content
        ecds_dir = self.dir / "ecds"
        if ecds_dir.is_dir():
            for path in sorted(ecds_dir.glob("*.json")):
                if path.stem not in self.process.extensions:
                    pending.stale_extensions.append(path.stem)
        if not has(self.cds_path, self.clusters_digest):
            pending.clusters = self.process.clusters
        if not has(self.lds_path, self.listeners_digest):
            pending.listeners = self.process.listeners
        return pending

    # --- writing

    def _write_xds(self, path: Path, resources: list[Resource], want: str | None = None) -> str:
        old = file_state(path)
        version = version_after(old.version if old else None)
        write_json(path, discovery_response(resources, version))
        remember(path, file_id(path), FileState(version, want or digest(resources)))
        return version

    def _write_secret(self, name: str, content: Resource) -> str:
        path = self.sds_path(name)
        old = file_state(path)
        doc = dict(content)
        doc["version_info"] = version_after(old.version if old else None)
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        write_atomic(path, data, SECRET_MODE)
        remember(path, file_id(path), FileState(doc["version_info"], digest(doc["resources"])))
        return str(doc["version_info"])

    def _write_extension(self, name: str, content: Resource) -> str:
        path = self.ecds_path(name)
        old = file_state(path)
        doc = dict(content)
        doc["version_info"] = version = version_after(old.version if old else None)
        write_json(path, doc)
        remember(path, file_id(path), FileState(version, digest(doc["resources"])))
        return version

    def _prepare_dirs(self) -> None:
        for sub in ("", "cds", "lds", "sds", "ecds"):
            mkdir_private(self.dir / sub)

    def write_cold(self, pending: Pending) -> None:
        """Write everything for an Envoy that is not running (it reads the files when it starts)."""
        self._prepare_dirs()
        if pending.bootstrap is not None:
            write_json(self.bootstrap_path, pending.bootstrap)
            state = FileState(None, digest(pending.bootstrap))
            remember(self.bootstrap_path, file_id(self.bootstrap_path), state, whole=True)
        for name, content in pending.secrets.items():
            self._write_secret(name, content)
        for name in pending.stale_secrets:
            self.sds_path(name).unlink(missing_ok=True)
        # Before the listeners: a listener naming a missing ECDS file is rejected whole.
        for name, content in pending.extensions.items():
            self._write_extension(name, content)
        for name in pending.stale_extensions:
            self.ecds_path(name).unlink(missing_ok=True)
        if pending.clusters is not None:
            known = self.clusters_digest if pending.clusters is self.process.clusters else None
            self._write_xds(self.cds_path, pending.clusters, known)
        if pending.listeners is not None:
            known = self.listeners_digest if pending.listeners is self.process.listeners else None
            self._write_xds(self.lds_path, pending.listeners, known)

    def apply_live(self, pending: Pending, timeout: float = APPLY_TIMEOUT) -> None:
        """Update a running Envoy without a restart (the bootstrap must be unchanged)."""
        sock = self.process.admin_socket
        self._prepare_dirs()
        self._apply_secrets(sock, pending.secrets, timeout)
        # Filter configurations before the listeners that name them (a listener naming a
        # missing file is rejected whole); those the running listeners use, applied and checked.
        unconfirmed = self._apply_extensions(sock, pending.extensions, timeout)
        if pending.clusters is not None or pending.listeners is not None:
            old = read_json(self.cds_path)
            old_clusters: list[Resource] = list(old.get("resources", [])) if old else []
            wanted = self.process.clusters
            if pending.listeners is not None:
                # Make before break: the old listeners may still name clusters that go away.
                names = {c.get("name") for c in wanted}
                union = wanted + [c for c in old_clusters if c.get("name") not in names]
                self._apply(sock, self.cds_path, union, "cds", timeout)
                lds = self.process.listeners
                self._apply(sock, self.lds_path, lds, "lds", timeout, self.listeners_digest)
                # New listeners read their filter configurations while warming: check that
                # Envoy took them (one it rejected leaves the filter failing closed).
                self._confirm_extensions(sock, unconfirmed, timeout)
            if not has(self.cds_path, self.clusters_digest):
                self._apply(sock, self.cds_path, wanted, "cds", timeout, self.clusters_digest)
        for name in pending.stale_secrets:
            self.sds_path(name).unlink(missing_ok=True)
        # After the listeners: no listener names them any more.
        for name in pending.stale_extensions:
            self.ecds_path(name).unlink(missing_ok=True)

    def _apply_secrets(self, sock: str, secrets: Mapping[str, Resource], timeout: float) -> None:
        """Write ``secrets``; wait until Envoy applied those it uses (a TCP export's SAN list
        lives in one: a removed identity is refused at the handshake when ``up`` returns)."""
        if not secrets:
            return
        names = "|".join(re.escape(n) for n in sorted(secrets))
        pattern = rf"^sds\.({names})\.(version_text|update_rejected)$"
        before = admin.stats(sock, pattern)
        versions = {}
        for name, content in secrets.items():
            version = self._write_secret(name, content)
            if f"sds.{name}.version_text" in before:  # else nothing of this Envoy uses it yet
                versions[name] = version

        def applied(s: dict[str, str]) -> bool:
            return all(s.get(f"sds.{n}.version_text") == v for n, v in versions.items())

        def rejected(s: dict[str, str]) -> bool:
            key = "sds.{}.update_rejected"
            return any(
                s.get(key.format(n), "0") != before.get(key.format(n), "0") for n in versions
            )

        if versions:
            try:
                wait_for_stats(sock, pattern, applied, rejected, timeout)
            except LocalError as exc:
                raise LocalError(
                    f"{self.process.name}: {exc.problem} (SDS {', '.join(sorted(versions))})",
                    f"see the Envoy log under {self.runtime_dir / 'logs'}",
                ) from None

    def _running_extensions(self) -> set[str]:
        """The ECDS names the listeners Envoy runs (the LDS file on disk) load."""
        doc = read_json(self.lds_path)
        return _ecds_names(doc.get("resources") if isinstance(doc, Mapping) else None)

    def _apply_extensions(
        self, sock: str, extensions: Mapping[str, Resource], timeout: float
    ) -> dict[str, tuple[str, str]]:
        """Write ``extensions``; wait until Envoy applied those its running listeners load.
        Returns the others (name -> (version written, rejections before)): the listeners that
        load them are yet to come."""
        if not extensions:
            return {}
        pattern = ecds_stats_pattern(extensions)
        before = ecds_stats(admin.stats(sock, pattern), "update_rejected")
        running = self._running_extensions()
        previous = {
            name: self.ecds_path(name).read_bytes()
            for name in extensions
            if name in running and self.ecds_path(name).exists()
        }
        written = {name: self._write_extension(name, c) for name, c in extensions.items()}
        live = {name: v for name, v in written.items() if name in running}
        try:
            self._wait_extensions(sock, pattern, live, before, timeout)
        except LocalError:
            # Envoy keeps the last good configuration: put its file back, so that the next
            # ``up`` sees the difference again and retries.
            for name, data in previous.items():
                write_atomic(self.ecds_path(name), data)
                remember(self.ecds_path(name), None, None)
            raise
        return {
            name: (v, before.get(name, "0")) for name, v in written.items() if name not in running
        }

    def _confirm_extensions(
        self, sock: str, unconfirmed: Mapping[str, tuple[str, str]], timeout: float
    ) -> None:
        if unconfirmed:
            versions = {name: v for name, (v, _) in unconfirmed.items()}
            before = {name: b for name, (_, b) in unconfirmed.items()}
            pattern = ecds_stats_pattern(unconfirmed)
            self._wait_extensions(sock, pattern, versions, before, timeout)

    def _wait_extensions(
        self,
        sock: str,
        pattern: str,
        versions: Mapping[str, str],
        before: Mapping[str, str],
        timeout: float,
    ) -> None:
        """Wait until Envoy applied each ECDS file version in ``versions``."""
        if not versions:
            return

        def applied(s: dict[str, str]) -> bool:
            got = ecds_stats(s, "version_text")
            return all(got.get(name) == v for name, v in versions.items())

        def rejected(s: dict[str, str]) -> bool:
            got = ecds_stats(s, "update_rejected")
            return any(got.get(n, "0") != before.get(n, "0") for n in versions)

        try:
            wait_for_stats(sock, pattern, applied, rejected, timeout)
        except LocalError as exc:
            names = ", ".join(f"{n} version {v}" for n, v in sorted(versions.items()))
            raise LocalError(
                f"{self.process.name}: {exc.problem} (ECDS {names})",
                f"see the Envoy log under {self.runtime_dir / 'logs'}",
            ) from None

    def _apply(
        self,
        sock: str,
        path: Path,
        resources: list[Resource],
        kind: str,
        timeout: float,
        want: str | None = None,
    ) -> None:
        want = want or digest(resources)
        if has(path, want):
            return
        pattern = _CDS_STATS if kind == "cds" else _LDS_STATS
        rejected_stat = (
            "cluster_manager.cds.update_rejected"
            if kind == "cds"
            else "listener_manager.lds.update_rejected"
        )
        before = admin.stats(sock, pattern)
        previous = path.read_bytes() if path.exists() else None
        version = self._write_xds(path, resources, want)

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
            wait_for_stats(sock, pattern, applied, rejected, timeout)
        except LocalError as exc:
            # Envoy keeps running its old configuration: put the old file back, so the next
            # ``up`` sees the difference again and retries.
            if previous is not None:
                write_atomic(path, previous)
                remember(path, None, None)
            raise LocalError(
                f"{self.process.name}: {exc.problem} ({kind.upper()} version {version})",
                f"see the Envoy log under {self.runtime_dir / 'logs'}",
            ) from None


def _ecds_names(doc: Any) -> set[str]:
    """Every ECDS name (``config_discovery``) the listeners in ``doc`` load."""
    found: set[str] = set()
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if "config_discovery" in item and isinstance(item.get("name"), str):
                found.add(item["name"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


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
