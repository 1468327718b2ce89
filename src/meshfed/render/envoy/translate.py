"""Translate the plan into one Envoy configuration per local process.

Per mesh: a federation ingress (`ingress`), a federation egress (`egress`), and a sidecar per
workload (`sidecar`); the shapes they share are in `builders`, `access_log` and `tls`.
Everything security-relevant comes from the plan.
"""

from __future__ import annotations

from pathlib import Path

from meshfed.plan.model import FederationPlan
from meshfed.render.envoy.egress import egress_process
from meshfed.render.envoy.ingress import ingress_process
from meshfed.render.envoy.layout import LocalLayout
from meshfed.render.envoy.process import ProcessConfig
from meshfed.render.envoy.sidecar import sidecar_process


def render_local(
    plan: FederationPlan, layout: LocalLayout, runtime_dir: Path
) -> list[ProcessConfig]:
    """Every Envoy of the local federation, in a stable order."""
    processes: list[ProcessConfig] = []
    for mesh in plan.meshes:
        ports = layout.meshes[mesh.name]
        processes.append(ingress_process(plan, mesh, ports, runtime_dir))
        processes.append(egress_process(mesh, ports, runtime_dir))
        processes.extend(sidecar_process(mesh, w, ports, runtime_dir) for w in mesh.workloads)
    return processes
