"""Port allocation for the local federation, persisted in ``layout.json``.

Mesh ingress address and port come from the spec. Every other port is allocated here: a port
recorded by an earlier ``up`` is kept while it is free or held by one of this runtime's own
processes; only new components (or a port somebody else took meanwhile) get a new port. Each
Envoy's admin endpoint gets a unix socket in the runtime's private admin directory
(``adminsock.py``), recorded here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meshfed.local.adminsock import socket_name
from meshfed.local.errors import LocalError
from meshfed.local.ports import LOOPBACK, PortAllocator, describe_holder, is_loopback, port_free
from meshfed.plan.model import FederationPlan
from meshfed.render.envoy.layout import LocalLayout, MeshLayout, SidecarLayout

LAYOUT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
"""Version 1 had admin ports: its other ports are kept (``up`` then moves every admin endpoint
to its socket, a bootstrap change: the Envoys restart)."""


def check_ingresses(plan: FederationPlan, own_ports: set[int]) -> None:
    """Each mesh ingress must be a loopback address and a port nobody else listens on.

    ``own_ports``: ports held by this runtime's running processes (a running ingress keeps its own).
    """
    seen: dict[tuple[str, int], str] = {}
    for mesh in plan.meshes:
        ing = mesh.ingress
        if not is_loopback(ing.address):
            raise LocalError(
                f"mesh {mesh.name}: ingress address {ing.address} is not a loopback address; "
                "the local federation listens on 127.0.0.0/8 only",
                f"set meshes[{mesh.name}].ingress.address to 127.0.0.1 in the spec",
            )
        key = (ing.address, ing.port)
        if key in seen:
            raise LocalError(
                f"meshes {seen[key]} and {mesh.name} both use ingress {ing.address}:{ing.port}",
                "give every mesh its own ingress port",
            )
        seen[key] = mesh.name
        if ing.port not in own_ports and not port_free(ing.port, ing.address):
            raise LocalError(
                f"mesh {mesh.name}: ingress port {ing.address}:{ing.port} is already in use"
                + describe_holder(ing.port),
                f"stop what listens there, or change meshes[{mesh.name}].ingress.port in the spec",
            )


def allocate_layout(
    plan: FederationPlan,
    previous: LocalLayout | None,
    own_ports: set[int],
    admin_dir: Path,
    allocator: PortAllocator | None = None,
) -> tuple[LocalLayout, list[str]]:
    """The layout for ``plan``, reusing ``previous`` ports where possible; and notes on moves.

    ``own_ports``: ports held by this runtime's running processes (kept without a bind test);
    ``admin_dir``: the private directory of the admin sockets (``adminsock.choose_dir``).
    """
    ingress_ports = {m.ingress.port for m in plan.meshes}
    alloc = allocator or PortAllocator()
    notes: list[str] = []
    # Keep every earlier port that is still usable, and reserve it before allocating anything.
    kept: dict[str, int] = {}
    for key, old in sorted(_flatten(previous).items()):
        if old in ingress_ports:
            notes.append(f"{key}: port {old} is now a mesh ingress port; moved")
        elif old in own_ports or port_free(old, LOOPBACK):
            kept[key] = old
            alloc.reserve(old)
        else:
            notes.append(f"{key}: port {old} was taken by another process; moved")
    for ingress_port in ingress_ports:
        alloc.reserve(ingress_port)

    def port(key: str) -> int:
        if key not in kept:
            kept[key] = alloc.allocate()
        return kept[key]

    meshes: dict[str, MeshLayout] = {}
    for mesh in plan.meshes:
        m = mesh.name
        tcp_keys = [f"{r.local_host}:{r.port}" for r in mesh.imports if r.protocol == "TCP"]
        sidecars = {}
        for w in mesh.workloads:
            base = f"{m}/sidecar/{w.ref}"
            sidecars[w.ref] = SidecarLayout(
                workload=w.ref,
                inbound_port=port(f"{base}/inbound"),
                outbound_port=port(f"{base}/outbound"),
                app_port=port(f"{base}/app"),
                admin_socket=socket_name(admin_dir, base),
                tcp_outbound={k: port(f"{base}/tcp/{k}") for k in tcp_keys},
            )
        meshes[m] = MeshLayout(
            mesh=m,
            ingress_admin=socket_name(admin_dir, f"{m}/ingress"),
            egress_port=port(f"{m}/egress/listen"),
            egress_admin=socket_name(admin_dir, f"{m}/egress"),
            sidecars=sidecars,
        )
    return LocalLayout(meshes=meshes, address=LOOPBACK, admin_dir=str(admin_dir)), notes


def _flatten(layout: LocalLayout | None) -> dict[str, int]:
    """Every port of a layout under a stable key (the key names the component and its role)."""
    if layout is None:
        return {}
    out: dict[str, int] = {}
    for m, ml in layout.meshes.items():
        out[f"{m}/egress/listen"] = ml.egress_port
        for ref, s in ml.sidecars.items():
            base = f"{m}/sidecar/{ref}"
            out[f"{base}/inbound"] = s.inbound_port
            out[f"{base}/outbound"] = s.outbound_port
            out[f"{base}/app"] = s.app_port
            for k, p in s.tcp_outbound.items():
                out[f"{base}/tcp/{k}"] = p
    return out


def all_ports(layout: LocalLayout) -> set[int]:
    return set(_flatten(layout).values())


def admin_sockets(layout: LocalLayout | None) -> set[str]:
    """Every admin socket of a layout."""
    if layout is None:
        return set()
    out: set[str] = set()
    for ml in layout.meshes.values():
        out |= {ml.ingress_admin, ml.egress_admin}
        out |= {s.admin_socket for s in ml.sidecars.values()}
    return out - {""}


def layout_to_json(layout: LocalLayout) -> dict[str, Any]:
    return {"version": LAYOUT_VERSION, **asdict(layout)}


def layout_from_json(doc: Any) -> LocalLayout | None:
    """The layout in ``doc``, or None if it is not a layout this version wrote."""
    if not isinstance(doc, Mapping) or doc.get("version") not in _READABLE_VERSIONS:
        return None
    try:
        meshes = {
            name: MeshLayout(
                mesh=m["mesh"],
                ingress_admin=str(m.get("ingress_admin", "")),
                egress_port=int(m["egress_port"]),
                egress_admin=str(m.get("egress_admin", "")),
                sidecars={
                    ref: SidecarLayout(
                        workload=s["workload"],
                        inbound_port=int(s["inbound_port"]),
                        outbound_port=int(s["outbound_port"]),
                        app_port=int(s["app_port"]),
                        admin_socket=str(s.get("admin_socket", "")),
                        tcp_outbound={k: int(v) for k, v in s.get("tcp_outbound", {}).items()},
                    )
                    for ref, s in m["sidecars"].items()
                },
            )
            for name, m in doc["meshes"].items()
        }
        return LocalLayout(
            meshes=meshes,
            address=str(doc.get("address", LOOPBACK)),
            admin_dir=str(doc.get("admin_dir", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
