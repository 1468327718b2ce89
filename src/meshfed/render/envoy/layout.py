"""Where each local process listens. The local runtime allocates these; the plan does not care.

Only the mesh ingress address and port come from the spec (via the plan); every other port here
is allocated by the runtime and kept stable across ``meshfed up`` runs. Each Envoy's admin
endpoint listens on a unix socket (never TCP), whose path the runtime chooses too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SidecarLayout:
    workload: str
    """``<namespace>/<name>`` of the workload this sidecar serves."""
    inbound_port: int
    """mTLS listener in front of the workload (the ingress gateway and in-mesh callers)."""
    outbound_port: int
    """Plain HTTP listener the workload (or ``meshfed call``) sends HTTP imports to."""
    app_port: int
    """Where the workload's own server listens (plain, loopback)."""
    admin_socket: str
    """Path of the unix socket of this sidecar's admin endpoint."""
    tcp_outbound: dict[str, int] = field(default_factory=dict)
    """``<local host>:<port>`` of each TCP import -> the local listener port for it."""


@dataclass(frozen=True)
class MeshLayout:
    mesh: str
    ingress_admin: str
    """Path of the unix socket of the ingress gateway's admin endpoint."""
    egress_port: int
    egress_admin: str
    """Path of the unix socket of the egress gateway's admin endpoint."""
    sidecars: dict[str, SidecarLayout]
    """Keyed by ``<namespace>/<name>``."""


@dataclass(frozen=True)
class LocalLayout:
    meshes: dict[str, MeshLayout]
    address: str = "127.0.0.1"
    """Loopback address every allocated listener binds (mesh ingresses use the spec's)."""
    admin_dir: str = ""
    """The private directory (0700) of the admin sockets."""
