"""Render the plan as Envoy configuration for the local federation. Decides nothing."""

from meshfed.render.envoy.layout import LocalLayout, MeshLayout, SidecarLayout
from meshfed.render.envoy.process import ProcessConfig

__all__ = ["LocalLayout", "MeshLayout", "ProcessConfig", "SidecarLayout"]
