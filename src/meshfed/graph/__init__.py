"""Pictures of a federation: meshes as boxes, imports and grants as labelled arrows (SVG/HTML)."""

from meshfed.graph.html import render_html
from meshfed.graph.model import Edge, FederationGraph, Grant, MeshNode, build_graph, ordinal
from meshfed.graph.svg import render_svg

__all__ = [
    "Edge",
    "FederationGraph",
    "Grant",
    "MeshNode",
    "build_graph",
    "ordinal",
    "render_html",
    "render_svg",
]
