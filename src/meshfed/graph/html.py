"""The federation graph in a web page: the SVG, a legend and the arrows as a table."""

from __future__ import annotations

from html import escape

from meshfed.graph.model import FederationGraph
from meshfed.graph.svg import render_svg

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2733}
.figure{overflow:auto;border:1px solid #d5dbe3;border-radius:4px}
dl.legend{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem}
dl.legend dt{font-weight:600}
table{border-collapse:collapse;font-size:.9rem;margin-top:1rem}
th,td{border:1px solid #d5dbe3;padding:.3rem .5rem;text-align:left}th{background:#eef2f7}
"""


def render_html(graph: FederationGraph) -> str:
    e = escape
    rows = []
    for edge in graph.edges:
        for rule in edge.rules:  # one row per rule: what each allows, never merged
            rows.append(
                "<tr>"
                f"<td>{e(edge.caller)}</td><td>{e(edge.local_host or '-')}</td>"
                f"<td>{e(edge.export)}</td><td>{e(edge.host)}</td>"
                f"<td>{e(edge.order_label or 'not imported')}</td>"
                f"<td>{e(', '.join(rule.principals))}</td>"
                f"<td>{e(', '.join(rule.methods) or 'any')}</td>"
                f"<td>{e(', '.join(rule.paths) or 'any')}</td></tr>"
            )
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                f"<title>federation {e(graph.name)}</title><style>{_CSS}</style></head><body>",
                f"<h1>Federation {e(graph.name)}</h1>",
                f"<p>{len(graph.meshes)} meshes, trust mode {e(graph.trust_mode)}. "
                "Hover over a box or an arrow for details.</p>",
                '<div class="figure">',
                render_svg(graph),
                "</div>",
                "<h2>Legend</h2>",
                '<dl class="legend">',
                "<dt>box</dt><dd>a mesh: name, trust domain, ingress address and network</dd>",
                "<dt>solid blue arrow</dt><dd>an import's first source: calls go from the "
                "importing mesh to the exporting mesh</dd>",
                "<dt>dashed orange arrow</dt><dd>a failover source, used when the ones before it "
                "fail; the label says its position (2nd, 3rd, ...)</dd>",
                "<dt>dotted grey arrow</dt><dd>a consumer an export allows that imports nothing "
                "from it</dd>",
                "<dt>label</dt><dd>position · export, then the principals allowed to call</dd>",
                "</dl>",
                "<h2>Arrows</h2>",
                "<table><tr><th>importing mesh</th><th>local name</th><th>export</th><th>host (SNI)"
                "</th><th>position</th><th>principals</th><th>methods</th><th>paths</th></tr>",
                *rows,
                "</table>",
                "</body></html>",
            ]
        )
        + "\n"
    )
