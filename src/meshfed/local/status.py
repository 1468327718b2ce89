"""``meshfed status``: every process and its health, each import's current source, the import
probes that failed at the last ``up``, and what of all that is not healthy (``--check``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from meshfed.local import admin
from meshfed.local.certs import kept_identity
from meshfed.local.files import read_json
from meshfed.local.health import SourceStatus, source_health
from meshfed.local.runtime import Runtime
from meshfed.local.state import WORKLOAD_HOST
from meshfed.local.summary import ProcessInfo, RuntimeSummary
from meshfed.render.envoy.files import process_dir


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    mesh: str | None
    role: str
    pid: int | None
    alive: bool
    ready: bool
    """Envoy: admin ``/ready`` says LIVE. Workload host: alive."""
    listens: dict[str, str]
    """Listener name -> address (the workload host: workload -> app address)."""
    admin: str | None
    """Path of the unix socket of its admin endpoint (0600, in a 0700 directory)."""
    cert_expires: str | None = None
    """When the certificate it serves expires (ISO 8601, UTC); ``up`` renews it."""


@dataclass(frozen=True)
class ImportStatus:
    mesh: str
    local: str
    protocol: str
    wire_host: str
    current: str | None
    """The exporting mesh serving now: the healthy source with the lowest priority."""
    sources: tuple[SourceStatus, ...]


@dataclass(frozen=True)
class FailedProbe:
    """An import probe that failed at the last ``up`` (``probes.json``)."""

    mesh: str
    key: str
    """``<local host>:<port>`` of the import."""
    detail: str


@dataclass
class Status:
    federation: str
    state_dir: str
    spec: str
    admin_dir: str = ""
    """The private directory (0700) of the Envoys' admin sockets."""
    processes: list[ProcessStatus] = field(default_factory=list)
    imports: list[ImportStatus] = field(default_factory=list)
    failed_probes: list[FailedProbe] = field(default_factory=list)
    """Import probes that failed at the last ``up`` (run again by the next one)."""

    @property
    def running(self) -> int:
        return sum(p.alive for p in self.processes)

    @property
    def problems(self) -> list[str]:
        """Everything that is not healthy, one line each: a process stopped or not ready, an
        import no source serves or one of its sources down, a probe that failed at the last
        ``up``. Empty: healthy (what ``status --check`` exits 0 on)."""
        found = []
        for p in self.processes:
            if not p.alive:
                found.append(f"{p.name}: stopped (meshfed up starts it)")
            elif not p.ready:
                found.append(f"{p.name}: running, not ready")
        for imp in self.imports:
            where = f"import {imp.local} of {imp.mesh}"
            if imp.current is None:
                found.append(f"{where}: no source serves it")
            for s in imp.sources:
                if s.healthy is False:
                    found.append(f"{where}: source {s.mesh} ({s.address}) down")
        for f in self.failed_probes:
            found.append(f"import {f.key} of {f.mesh}: probe failed at the last up: {f.detail}")
        return found


def _egress_admin(summary: RuntimeSummary, mesh: str) -> ProcessInfo | None:
    return next((p for p in summary.processes if p.mesh == mesh and p.role == "egress"), None)


def _cert_expiry(runtime: Runtime, name: str) -> str | None:
    kept = kept_identity(read_json(process_dir(runtime.root, name) / "sds" / "default.json"))
    if kept is None:
        return None
    try:
        leaf = x509.load_pem_x509_certificates(kept[0].encode())[0]
    except ValueError:
        return None
    return leaf.not_valid_after_utc.isoformat()


def collect_status(runtime: Runtime) -> Status:
    summary = runtime.summary()
    records = runtime.processes()
    layout = runtime.layout()
    status = Status(
        summary.federation,
        str(runtime.paths.state_dir),
        summary.spec,
        layout.admin_dir if layout else "",
    )
    host = records.get(WORKLOAD_HOST)
    app_ports = {
        f"{m.mesh}/{ref}": f"127.0.0.1:{s.app_port}"
        for m in (layout.meshes.values() if layout else ())
        for ref, s in m.sidecars.items()
    }
    status.processes.append(
        ProcessStatus(
            name=WORKLOAD_HOST,
            mesh=None,
            role="workloads",
            pid=host.pid if host else None,
            alive=bool(host and host.alive),
            ready=bool(host and host.alive),
            listens=app_ports,
            admin=None,
        )
    )
    for p in summary.processes:
        record = records.get(p.name)
        alive = bool(record and record.alive)
        status.processes.append(
            ProcessStatus(
                name=p.name,
                mesh=p.mesh,
                role=p.role,
                pid=record.pid if record else None,
                alive=alive,
                ready=alive and admin.ready(p.admin_socket),
                listens=p.listeners,
                admin=p.admin_socket,
                cert_expires=_cert_expiry(runtime, p.name),
            )
        )
    alive_names = {p.name for p in status.processes if p.alive}
    for imp in summary.imports:
        egress = _egress_admin(summary, imp.mesh)
        sock = egress.admin_socket if egress and egress.name in alive_names else None
        current, sources = source_health(imp, sock)
        status.imports.append(
            ImportStatus(imp.mesh, imp.key, imp.protocol, imp.wire_host, current, sources)
        )
    status.failed_probes = failed_probes(read_json(runtime.paths.probes))
    return status


def failed_probes(doc: object) -> list[FailedProbe]:
    """The failed probes ``probes.json`` records (none from a file written before it kept
    them, or a damaged one: the next ``up`` writes it again)."""
    entries = doc.get("failed") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return []
    return [
        FailedProbe(str(e.get("mesh")), str(e.get("import")), str(e.get("detail")))
        for e in entries
        if isinstance(e, dict)
    ]
