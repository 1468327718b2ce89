"""``runtime.json``: what the last ``up`` applied, so ``status``, ``call`` and ``logs`` describe
the running federation, not a spec that may have been edited since.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meshfed.local.errors import LocalError
from meshfed.local.files import read_json, write_json
from meshfed.local.paths import RuntimePaths
from meshfed.plan.model import FederationPlan
from meshfed.render.envoy.process import ProcessConfig, Resource

SUMMARY_VERSION = 2


@dataclass(frozen=True)
class SourceInfo:
    mesh: str
    export: str
    address: str
    port: int
    priority: int


@dataclass(frozen=True)
class ImportInfo:
    mesh: str
    local_host: str
    port: int
    protocol: str
    wire_host: str
    sources: tuple[SourceInfo, ...]
    egress_cluster: str | None
    """Name of the egress gateway's cluster for the wire host (where failover happens)."""

    @property
    def key(self) -> str:
        return f"{self.local_host}:{self.port}"


@dataclass(frozen=True)
class WorkloadInfo:
    mesh: str
    ref: str
    service_account: str
    protocol: str
    spiffe_id: str

    @property
    def namespace(self) -> str:
        return self.ref.partition("/")[0]


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    mesh: str
    role: str
    admin_socket: str
    """Path of the unix socket of its admin endpoint."""
    workload: str | None
    listeners: dict[str, str]
    """Listener name -> ``<address>:<port>``."""


@dataclass(frozen=True)
class MeshInfo:
    name: str
    trust_domain: str
    ingress_address: str
    ingress_port: int
    ingress_id: str
    exports: dict[str, str]
    """SNI names its ingress serves -> protocol (HTTP or TCP)."""


@dataclass(frozen=True)
class RuntimeSummary:
    federation: str
    spec: str
    trust_mode: str
    meshes: tuple[MeshInfo, ...]
    workloads: tuple[WorkloadInfo, ...]
    imports: tuple[ImportInfo, ...]
    processes: tuple[ProcessInfo, ...]

    def mesh(self, name: str) -> MeshInfo:
        for m in self.meshes:
            if m.name == name:
                return m
        raise LocalError(
            f"no mesh {name!r} in the running federation {self.federation}",
            "use one of: " + ", ".join(m.name for m in self.meshes),
        )

    def process(self, name: str) -> ProcessInfo | None:
        return next((p for p in self.processes if p.name == name), None)

    def ingress_at(self, address: str) -> str | None:
        """The mesh whose ingress listens on ``<address>:<port>``."""
        return next(
            (m.name for m in self.meshes if f"{m.ingress_address}:{m.ingress_port}" == address),
            None,
        )


def _listen_addresses(listeners: list[Resource]) -> dict[str, str]:
    out: dict[str, str] = {}
    for listener in listeners:
        sock = listener.get("address", {}).get("socket_address", {})
        if "port_value" in sock:
            name = str(listener.get("name", len(out)))
            out[name] = f"{sock.get('address', '127.0.0.1')}:{sock['port_value']}"
    return out


def egress_cluster_for(egress: ProcessConfig | None, wire_host: str) -> str | None:
    """The cluster the egress gateway's filter chain for ``wire_host`` proxies to."""
    if egress is None:
        return None
    for listener in egress.listeners:
        for chain in listener.get("filter_chains", []):
            if wire_host not in chain.get("filter_chain_match", {}).get("server_names", []):
                continue
            for f in chain.get("filters", []):
                cluster = f.get("typed_config", {}).get("cluster")
                if isinstance(cluster, str):
                    return cluster
    return None


def summarize(plan: FederationPlan, spec: Path, processes: list[ProcessConfig]) -> RuntimeSummary:
    by_name = {p.name: p for p in processes}
    egress = {p.mesh: p for p in processes if p.role == "egress"}
    return RuntimeSummary(
        federation=plan.name,
        spec=str(spec),
        trust_mode=plan.trust_mode,
        meshes=tuple(
            MeshInfo(
                name=m.name,
                trust_domain=m.trust_domain,
                ingress_address=m.ingress.address,
                ingress_port=m.ingress.port,
                ingress_id=m.ingress.spiffe_id,
                exports={s.sni: s.protocol for s in m.ingress.servers},
            )
            for m in plan.meshes
        ),
        workloads=tuple(
            WorkloadInfo(
                mesh=w.mesh,
                ref=w.ref,
                service_account=w.service_account,
                protocol=w.protocol,
                spiffe_id=w.spiffe_id,
            )
            for m in plan.meshes
            for w in m.workloads
        ),
        imports=tuple(
            ImportInfo(
                mesh=m.name,
                local_host=r.local_host,
                port=r.port,
                protocol=r.protocol,
                wire_host=r.wire_host,
                sources=tuple(
                    SourceInfo(s.mesh, s.export, s.address, s.port, s.priority) for s in r.sources
                ),
                egress_cluster=egress_cluster_for(egress.get(m.name), r.wire_host),
            )
            for m in plan.meshes
            for r in m.imports
        ),
        processes=tuple(
            ProcessInfo(
                name=p.name,
                mesh=p.mesh,
                role=p.role,
                admin_socket=p.admin_socket,
                workload=p.workload,
                listeners=_listen_addresses(p.listeners),
            )
            for p in by_name.values()
        ),
    )


def save_summary(paths: RuntimePaths, summary: RuntimeSummary) -> None:
    write_json(paths.runtime, {"version": SUMMARY_VERSION, **asdict(summary)})


def load_summary(paths: RuntimePaths) -> RuntimeSummary | None:
    doc = read_json(paths.runtime)
    if not isinstance(doc, Mapping) or doc.get("version") != SUMMARY_VERSION:
        return None
    try:
        return _from_json(doc)
    except (KeyError, TypeError, ValueError):
        return None


def _from_json(doc: Mapping[str, Any]) -> RuntimeSummary:
    return RuntimeSummary(
        federation=doc["federation"],
        spec=doc["spec"],
        trust_mode=doc["trust_mode"],
        meshes=tuple(
            MeshInfo(
                name=m["name"],
                trust_domain=m["trust_domain"],
                ingress_address=m["ingress_address"],
                ingress_port=int(m["ingress_port"]),
                ingress_id=m["ingress_id"],
                exports=dict(m["exports"]),
            )
            for m in doc["meshes"]
        ),
        workloads=tuple(WorkloadInfo(**w) for w in doc["workloads"]),
        imports=tuple(
            ImportInfo(
                mesh=i["mesh"],
                local_host=i["local_host"],
                port=int(i["port"]),
                protocol=i["protocol"],
                wire_host=i["wire_host"],
                sources=tuple(SourceInfo(**s) for s in i["sources"]),
                egress_cluster=i.get("egress_cluster"),
            )
            for i in doc["imports"]
        ),
        processes=tuple(
            ProcessInfo(
                name=p["name"],
                mesh=p["mesh"],
                role=p["role"],
                admin_socket=str(p["admin_socket"]),
                workload=p.get("workload"),
                listeners=dict(p["listeners"]),
            )
            for p in doc["processes"]
        ),
    )
