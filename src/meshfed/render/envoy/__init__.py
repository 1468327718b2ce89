"""Render the plan as Envoy configuration for the local federation. Decides nothing.

`render_local` (plan + port layout -> one `ProcessConfig` per Envoy) is the entry; by concern:
`ingress`, `egress`, `sidecar` (one module per kind of process), `rbac` (the ingress's
matcher), `tls` (TLS contexts and validation secrets), `builders`/`access_log` (shared shapes),
`files` (where each Envoy's files live and their envelopes).
"""

from meshfed.render.envoy.layout import LocalLayout, MeshLayout, SidecarLayout
from meshfed.render.envoy.process import ProcessConfig
from meshfed.render.envoy.translate import render_local

__all__ = ["LocalLayout", "MeshLayout", "ProcessConfig", "SidecarLayout", "render_local"]
