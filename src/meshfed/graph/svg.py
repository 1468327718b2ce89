"""The federation graph as a standalone SVG, written by hand (no graphviz needed)."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from meshfed.graph.layout import LINE_H, Layout, PlacedEdge, Rect, box_lines, layout
from meshfed.graph.model import FederationGraph, MeshNode

LEGEND_H = 70.0
LIVE_LINES = ("00000 allowed · 0000 denied · 000 TLS failed", "● standby: healthy, not in use")
"""Room kept in each label of a live picture (``layout(graph, LIVE_LINES)``, then
``svg_from_layout(..., live=len(LIVE_LINES))``): one empty ``<text class="live" data-line="N">``
per line, for the dashboard to fill."""
_STYLE = """
.mesh rect{fill:#f3f7fb;stroke:#2b4c7e;stroke-width:1.5}
.mesh .name{font-weight:700;font-size:14px;fill:#14263f}
.mesh .detail{font-size:11px;fill:#4a5a70}
.edge path{fill:none;stroke-width:1.6}
.edge.import.primary path{stroke:#1f5fa8}
.edge.import.failover path{stroke:#c26a00;stroke-dasharray:7 4}
.edge.grant path{stroke:#9aa5b1;stroke-dasharray:2 4}
.label rect{fill:#ffffff;fill-opacity:.92;stroke:#d0d7e0;stroke-width:.6}
.label text{font-size:11px;fill:#1d2733}
.label .head{font-weight:600}
.legend text{font-size:11px;fill:#1d2733}
"""


def _marker(marker_id: str, color: str) -> str:
    return (
        f'<marker id="{marker_id}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        f'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        f'fill="{color}"/></marker>'
    )


def _classes(placed: PlacedEdge) -> str:
    edge = placed.edge
    if edge.kind == "grant":
        return "edge grant"
    return "edge import " + ("primary" if edge.order == 0 else "failover")


def _marker_for(placed: PlacedEdge) -> str:
    edge = placed.edge
    if edge.kind == "grant":
        return "arrow-grant"
    return "arrow" if edge.order == 0 else "arrow-failover"


def _f(value: float) -> str:
    return f"{value:.1f}"


def _edge(i: int, placed: PlacedEdge) -> str:
    edge, c = placed.edge, placed.curve
    attrs = {
        "class": _classes(placed),
        "id": f"edge-{i}",
        "data-from": edge.caller,
        "data-to": edge.exporter,
        "data-export": edge.export,
        "data-principals": " ".join(edge.principals),
    }
    if edge.order is not None:
        attrs["data-order"] = str(edge.order + 1)
        attrs["data-import"] = edge.local_host or ""
    attr_text = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
    d = (
        f"M{_f(c.start[0])},{_f(c.start[1])} Q{_f(c.control[0])},{_f(c.control[1])} "
        f"{_f(c.end[0])},{_f(c.end[1])}"
    )
    return (
        f"<g {attr_text}><title>{escape(edge.title())}</title>"
        f'<path d="{d}" marker-end="url(#{_marker_for(placed)})"/></g>'
    )


def _label(i: int, placed: PlacedEdge, live: int = 0) -> str:
    r = placed.label
    spans = []
    fixed = len(placed.lines) - live
    for n, line in enumerate(placed.lines):
        cls = ' class="head"' if n == 0 else ""
        y = r.y + 4 + LINE_H * (n + 1) - 2
        if n >= fixed:
            cls, line = f' class="live" data-line="{n - fixed}"', ""
        spans.append(
            f'<text x="{_f(r.x + r.w / 2)}" y="{_f(y)}" text-anchor="middle"{cls}>'
            f"{escape(line)}</text>"
        )
    return (
        f'<g class="label" data-edge="edge-{i}"><title>{escape(placed.edge.title())}</title>'
        f'<rect x="{_f(r.x)}" y="{_f(r.y)}" width="{_f(r.w)}" height="{_f(r.h)}" rx="3"/>'
        + "".join(spans)
        + "</g>"
    )


def _mesh(node: MeshNode, r: Rect) -> str:
    _, _, detail2 = box_lines(node)
    title = (
        f"{node.name}\ntrust domain {node.trust_domain}\n{detail2}\n"
        f"exports: {', '.join(node.exports) or '(none)'}"
    )
    cx = r.x + r.w / 2
    return (
        f"<g class={quoteattr('mesh')} data-mesh={quoteattr(node.name)}>"
        f"<title>{escape(title)}</title>"
        f'<rect x="{_f(r.x)}" y="{_f(r.y)}" width="{_f(r.w)}" height="{_f(r.h)}" rx="6"/>'
        f'<text class="name" x="{_f(cx)}" y="{_f(r.y + 20)}" text-anchor="middle">'
        f"{escape(node.name)}</text>"
        f'<text class="detail" x="{_f(cx)}" y="{_f(r.y + 37)}" text-anchor="middle">'
        f"{escape(node.trust_domain)}</text>"
        f'<text class="detail" x="{_f(cx)}" y="{_f(r.y + 53)}" text-anchor="middle">'
        f"{escape(detail2)}</text></g>"
    )


def _legend(y: float) -> str:
    items = [
        ("edge import primary", "arrow", "import, 1st choice (label: position · export)"),
        ("edge import failover", "arrow-failover", "failover source (2nd, 3rd, ...)"),
        ("edge grant", "arrow-grant", "allowed by an export, not imported"),
    ]
    parts = [f'<g class="legend" transform="translate(40,{_f(y)})">']
    for n, (cls, marker, text) in enumerate(items):
        x = n * 300
        parts.append(
            f'<g class="{cls}"><path d="M{x},10 L{x + 40},10" marker-end="url(#{marker})"/></g>'
            f'<text x="{x + 48}" y="14">{escape(text)}</text>'
        )
    parts.append(
        '<text x="0" y="44">Arrows point the way calls go: from the importing mesh to the '
        "exporting mesh; the second label line lists the allowed principals.</text></g>"
    )
    return "".join(parts)


def svg_from_layout(graph: FederationGraph, placed: Layout, live: int = 0) -> str:
    """The SVG of a layout; ``live``: how many reserved label lines to leave empty."""
    width = max(placed.width, 960.0)
    height = placed.height + LEGEND_H
    nodes = {m.name: m for m in graph.meshes}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_f(width)}" height="{_f(height)}" '
        f'viewBox="0 0 {_f(width)} {_f(height)}" font-family="Helvetica, Arial, sans-serif" '
        f'role="img" aria-label={quoteattr(f"federation {graph.name}")}>',
        f"<title>federation {escape(graph.name)} ({escape(graph.trust_mode)})</title>",
        f"<style>{_STYLE}</style>",
        "<defs>"
        + _marker("arrow", "#1f5fa8")
        + _marker("arrow-failover", "#c26a00")
        + _marker("arrow-grant", "#9aa5b1")
        + "</defs>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        '<g class="edges">',
        *(_edge(i, e) for i, e in enumerate(placed.edges)),
        "</g>",
        '<g class="meshes">',
        *(_mesh(nodes[name], rect) for name, rect in placed.boxes.items()),
        "</g>",
        '<g class="labels">',
        *(_label(i, e, live) for i, e in enumerate(placed.edges)),
        "</g>",
        _legend(placed.height),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def render_svg(graph: FederationGraph) -> str:
    return svg_from_layout(graph, layout(graph))
