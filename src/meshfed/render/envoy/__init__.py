"""Render the plan as Envoy configuration for the local federation. Decides nothing.

`render_local` (plan + port layout -> one `ProcessConfig` per Envoy) is the entry; by concern:
`ingress`, `egress`, `sidecar` (one module per kind of process), `rbac` (the ingress's
matcher), `tls` (TLS contexts and validation secrets), `builders`/`access_log` (shared shapes),
`files` (where each Envoy's files live and their envelopes).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshfed.render.envoy.layout import LocalLayout, MeshLayout, SidecarLayout
    from meshfed.render.envoy.process import ProcessConfig
    from meshfed.render.envoy.translate import render_local

__all__ = ["LocalLayout", "MeshLayout", "ProcessConfig", "SidecarLayout", "render_local"]

_HOME = {
    "LocalLayout": "layout",
    "MeshLayout": "layout",
    "SidecarLayout": "layout",
    "ProcessConfig": "process",
    "render_local": "translate",
}
"""Where each public name lives. They load on first use: the Istio renderer shares
``limits`` (Envoy's field names for the plan's limits), and importing it must not load the
whole local renderer into the federation controller, which never runs an Envoy."""


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
