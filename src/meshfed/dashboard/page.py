"""The dashboard page: one HTML document with inline CSS and JS (no external assets).

The picture is ``meshfed.graph``'s SVG with two empty lines in every arrow label; the script polls
``/api/state`` every second and fills them (counters, and whether the arrow's exporter serves its
import now), marks stopped ingress gateways, and fills the side panels and the boundary log. It
writes text with ``textContent`` only: SNI names, paths and claimed identities in the log come from
the network.
"""

from __future__ import annotations

from html import escape

POLL_MS = 1000

_CSS = """
:root{--ink:#18222f;--muted:#5b6b7f;--line:#dde3ea;--bg:#f4f6f9;--card:#fff;
--ok:#17803d;--deny:#c62828;--tls:#b45309;--refused:#6b46c1;--blue:#1f5fa8}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--ink);background:var(--bg)}
header{display:flex;align-items:center;gap:14px;padding:12px 22px;background:#14263f;color:#fff}
header h1{font-size:19px;margin:0;font-weight:650;letter-spacing:.2px}
header .sub{color:#b9c7da;font-size:13px}
header .spacer{flex:1}
#live{display:inline-flex;align-items:center;gap:7px;font-size:13px;padding:4px 11px;
border-radius:999px;background:#24406a;color:#dbe7f7}
#live .dot{width:9px;height:9px;border-radius:50%;background:#9aa5b1}
#live.on .dot{background:#35d07f;box-shadow:0 0 0 3px rgba(53,208,127,.25)}
#live.off{background:#6b1f1f;color:#ffd9d9}#live.off .dot{background:#ff6b6b}
main{padding:16px 22px 22px;display:grid;gap:16px;
grid-template-columns:minmax(0,1fr) 510px;align-items:start}
.tiles{grid-column:1/-1;display:grid;grid-template-columns:repeat(5,1fr);gap:16px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 16px;
border-left:5px solid var(--muted)}
.tile .n{font-size:28px;font-weight:700;font-variant-numeric:tabular-nums;line-height:1.15}
.tile .t{color:var(--muted);font-size:12.5px}
.tile.ok{border-left-color:var(--ok)}.tile.ok .n{color:var(--ok)}
.tile.deny{border-left-color:var(--deny)}.tile.deny .n{color:var(--deny)}
.tile.tls{border-left-color:var(--tls)}.tile.tls .n{color:var(--tls)}
.tile.refused{border-left-color:var(--refused)}.tile.refused .n{color:var(--refused)}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px;
min-width:0}
.card h2{font-size:14px;margin:0 0 8px;font-weight:650}
.card h2 small{font-weight:400;color:var(--muted);margin-left:6px}
.side{display:grid;gap:16px}
.wide{grid-column:1/-1}
#graph svg{width:100%;height:auto;max-height:620px;display:block}
#graph svg .legend{display:none}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin-top:8px;color:var(--muted);font-size:12px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.legend i{display:inline-block;width:28px;height:0;border-top:2px solid var(--blue)}
.legend i.failover{border-top:2px dashed #c26a00}.legend i.grant{border-top:2px dotted #9aa5b1}
.legend i.serving{border-top-width:4px}.legend i.down{border-top:2px solid var(--deny)}
#graph .error{color:var(--deny)}
#graph .edge path{transition:stroke-width .3s,opacity .3s}
#graph .edge.st-serving path{stroke-width:3.4}
#graph .edge.st-standby path,#graph .edge.st-unknown path{opacity:.55}
#graph .edge.st-down path{stroke:var(--deny);opacity:.8}
#graph .edge.st-ingress-down path{stroke:var(--deny);stroke-dasharray:3 4}
#graph .mesh.down rect{fill:#fdecec;stroke:var(--deny);stroke-dasharray:5 3}
.label text.live{font-size:11px;fill:var(--muted)}
.label text.live .ok{fill:var(--ok);font-weight:700}
.label text.live .deny{fill:var(--deny);font-weight:700}
.label text.live .tls{fill:var(--tls);font-weight:700}
.label text.live .zero{fill:#8a96a6;font-weight:400}
.label text.live.serving{fill:var(--ok);font-weight:600}
.label text.live.down{fill:var(--deny);font-weight:600}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th{text-align:left;font-weight:600;color:var(--muted);border-bottom:1px solid var(--line);
padding:4px 6px;white-space:nowrap}
td{border-bottom:1px solid #eef1f5;padding:4px 6px;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;font-weight:600}
td.num.zero{color:#9aa5b1;font-weight:400}
td.ok{color:var(--ok)}td.deny{color:var(--deny)}td.tls{color:var(--tls)}
td.calls,td.export,#gateways td:first-child{white-space:nowrap}
td.st{color:var(--muted)}td.st.serving{color:var(--ok);font-weight:600}
td.st.down,td.st.ingress-down{color:var(--deny);font-weight:600}
.bump{animation:bump 1.2s ease-out}
@keyframes bump{0%{background:#fff3bf}100%{background:transparent}}
.imp{padding:6px 0;border-bottom:1px solid #eef1f5}.imp:last-child{border-bottom:0}
.imp .name{font-weight:600;word-break:break-all}
.imp .who{margin-top:3px;display:flex;flex-wrap:wrap;gap:6px}
.chip{font-size:12px;padding:1px 8px;border-radius:999px;border:1px solid var(--line);
background:#f7f9fb;white-space:nowrap}
.chip.serving{background:#e6f6ec;border-color:#9fd8b3;color:#0f5f2c;font-weight:600}
.chip.down{background:#fdecec;border-color:#f1b0b0;color:#8e1c1c}
.chip.unknown{color:var(--muted)}
.gw .state{font-weight:600}.gw .state.up{color:var(--ok)}.gw .state.down{color:var(--deny)}
#log td{font-size:12.5px}
#log td.when{color:var(--muted);white-space:nowrap;font-variant-numeric:tabular-nums}
#log td.caller{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:11.5px;
word-break:break-all}
#log td.caller .claimed{color:var(--muted);font-style:italic}
#log td.sni{white-space:nowrap}
#log td.sni small,#log td.decision small{color:var(--muted)}
#log .badge{display:inline-block;font-size:11.5px;font-weight:650;padding:1px 7px;
border-radius:4px;white-space:nowrap}
#log tr.allowed .badge{background:#e6f6ec;color:#0f5f2c}
#log tr.denied .badge{background:#fdecec;color:#9b1c1c}
#log tr.tls .badge{background:#fff1e0;color:#8a4100}
#log tr.refused .badge{background:#efe9fb;color:#4c2f94}
#log tr.rejected .badge{background:#efe9fb;color:#4c2f94}
#log tr.failed .badge{background:#fdecec;color:#9b1c1c}
#log tr.passed .badge{background:#eef2f7;color:#33465e}
#log td.reason{color:var(--tls)}
#log .own,#log .false-mark{display:inline-block;margin-left:6px;font-size:11px;padding:0 6px;
border-radius:4px;border:1px dashed #9aa5b1;color:var(--muted)}
#log .false-mark{border-color:var(--deny);color:var(--deny);font-weight:650}
td.own{text-align:right;color:var(--muted);font-variant-numeric:tabular-nums}
#since{grid-column:1/-1;margin:-8px 0 0;color:var(--muted);font-size:12px}
.empty{color:var(--muted);font-style:italic;padding:8px 0}
footer{padding:0 22px 18px;color:var(--muted);font-size:12px}
"""

_JS = """
"use strict";
const POLL_MS = __POLL__;
let version = document.body.dataset.version;
const previous = new Map();
const $ = (sel, root) => (root || document).querySelector(sel);
const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
function fmt(n) { return n === null || n === undefined ? "\\u2013" : n.toLocaleString("en"); }
function bump(node, key, value) {
  const old = previous.get(key);
  previous.set(key, value);
  if (old !== undefined && value !== null && old !== value) {
    node.classList.remove("bump"); void node.getBoundingClientRect(); node.classList.add("bump");
  }
}
function tspan(text, cls) {
  const t = document.createElementNS(SVGNS, "tspan");
  if (cls) t.setAttribute("class", cls);
  t.textContent = text;
  return t;
}
const STATE_TEXT = {
  "serving": "● serving now",
  "standby": "○ standby: healthy, not in use",
  "down": "✖ down: ejected by the egress",
  "unknown": "? health unknown (egress not answering)",
  "not imported": "allowed, not imported",
  "ingress down": "✖ exporter's ingress is down",
};

const SHORT_STATE = {"serving": "serving", "standby": "standby", "down": "down",
  "unknown": "?", "not imported": "\\u2013", "ingress down": "ingress down"};

function arrowState(a) { return a.ingress_up ? a.state : "ingress down"; }

function drawArrows(arrows) {
  for (const a of arrows) {
    const state = arrowState(a);
    const g = document.getElementById(a.id);
    if (g) {
      g.classList.forEach(c => { if (c.startsWith("st-")) g.classList.remove(c); });
      g.classList.add("st-" + state.replace(" ", "-"));
    }
    const label = $(`.label[data-edge="${a.id}"]`);
    if (!label) continue;
    const line0 = $('text.live[data-line="0"]', label);
    const line1 = $('text.live[data-line="1"]', label);
    if (line0) {
      line0.replaceChildren();
      if (a.allowed === null) {
        line0.append(tspan("no counters: " + (a.error || "ingress down")));
      } else {
        const part = (n, word, cls) => {
          line0.append(tspan(fmt(n), n ? cls : "zero"), tspan(" " + word));
        };
        part(a.allowed, "allowed", "ok"); line0.append(tspan(" · "));
        part(a.denied, "denied", "deny"); line0.append(tspan(" · "));
        part(a.tls_failures, "TLS failed", "tls");
      }
    }
    if (line1) {
      line1.textContent = STATE_TEXT[state] || state;
      line1.setAttribute("class", "live " + (state === "serving" ? "serving" :
        (state === "down" || state === "ingress down") ? "down" : ""));
    }
  }
}

function drawMeshes(meshes) {
  for (const m of meshes) {
    const g = $(`g.mesh[data-mesh="${CSS.escape(m.name)}"]`);
    if (g) g.classList.toggle("down", !m.ingress_up);
  }
}

function num(value, key, cls) {
  const td = el("td", {class: "num " + (value ? cls : "zero")}, fmt(value));
  bump(td, key, value);
  return td;
}

function drawTables(s) {
  const tiles = s.totals || {};
  for (const key of ["allowed", "denied", "tls_failures", "unknown_sni", "probes"]) {
    const node = $(`#tile-${key} .n`);
    if (!node) continue;
    node.textContent = fmt(tiles[key] ?? 0);
    bump(node.parentNode, "tile" + key, tiles[key]);
  }
  const since = $("#since");
  if (since) since.textContent = s.since ? "since " + s.since.replace("T", " ").slice(0, 19) +
    " UTC (the first line of the gateways' logs), across gateway restarts" : "";
  const arrows = $("#arrows tbody");
  arrows.replaceChildren(...s.arrows.map(a => {
    const tr = el("tr", {"data-arrow": a.id},
      el("td", {class: "calls"}, `${a.caller} → ${a.exporter}`),
      el("td", {class: "export"}, a.export.split("/")[1] +
        (a.order && a.sources > 1 ? ` · ${a.order}/${a.sources}` : "")),
      num(a.allowed, a.id + "a", "ok"), num(a.denied, a.id + "d", "deny"),
      num(a.tls_failures, a.id + "t", "tls"),
      el("td", {class: "own" + (a.probes ? "" : " zero")}, fmt(a.probes)),
      el("td", {class: "st " + arrowState(a).replace(" ", "-")}, SHORT_STATE[arrowState(a)] || ""));
    tr.title = "SNI: " + a.snis.join(", ") + "\\nprincipals: " + a.principals.join(", ");
    return tr;
  }));
  const imports = $("#imports");
  imports.replaceChildren(...(s.imports.length ? s.imports.map(i => el("div", {class: "imp"},
    el("div", {class: "name"}, `${i.mesh}: ${i.local}`),
    el("div", {class: "who"}, ...i.sources.map((src, n) => el("span", {
      class: "chip " + (src.mesh === i.current ? "serving" : src.healthy === false ? "down" :
        src.healthy === null ? "unknown" : ""),
      title: src.export}, `${n + 1}. ${src.mesh}` + (src.mesh === i.current ? " · serving" :
        src.healthy === false ? " · down" : src.healthy === null ? " · ?" : " · standby")))))) :
    [el("div", {class: "empty"}, "no imports")]));
  const gws = $("#gateways tbody");
  gws.replaceChildren(...s.meshes.map(m => el("tr", {class: "gw", "data-mesh": m.name},
    el("td", {}, m.name),
    el("td", {class: "state " + (m.ingress_up ? "up" : "down")}, m.ingress_up ? "up" : "down"),
    num(m.handshakes, m.name + "h", ""), num(m.tls_failures, m.name + "t", "tls"),
    num(m.unknown_sni, m.name + "u", "deny"))));
}

function drawLog(rows) {
  const body = $("#log tbody");
  if (!rows.length) {
    body.replaceChildren(el("tr", {}, el("td", {colspan: 6, class: "empty"},
      "no crossings yet: try meshfed call")));
    return;
  }
  body.replaceChildren(...rows.map(r => {
    const caller = el("td", {class: "caller"});
    if (r.caller) {
      caller.append(r.caller_verified ? r.caller : el("span", {class: "claimed",
        title: "from a certificate that failed verification: only a claim"},
        "claimed " + r.caller));
    } else {
      caller.append(r.gateway === "egress" ? "(passed through, encrypted)" : "\\u2013");
    }
    const what = r.request ? `${r.request}` : (r.to ? `→ ${r.to} ingress` : "connection");
    const tr = el("tr", {class: r.outcome},
      el("td", {class: "when"}, (r.time || "").slice(11, 23)),
      el("td", {}, `${r.mesh}/${r.gateway}`),
      caller,
      el("td", {class: "sni"}, r.sni || "\\u2013", el("br"), el("small", {}, what)),
      el("td", {class: "decision"}, el("span", {class: "badge"}, r.decision),
        r.policy ? el("small", {}, " " + r.policy) : null,
        r.probe ? el("span", {class: "own", title: "sent by meshfed itself (recorded in " +
          "its probe ledger); not counted with the callers' traffic"}, "meshfed " + r.probe) :
        null,
        r.false_probe_mark ? el("span", {class: "false-mark", title: "carries a probe mark " +
          "meshfed did not send: counted as a caller's"}, "false probe mark") : null),
      el("td", {class: "reason", title: r.tls_detail || ""}, r.tls_failure || ""));
    return tr;
  }));
}

function setLive(ok, when, why) {
  const live = $("#live");
  live.className = ok ? "on" : "off";
  $("#live .text").textContent = ok ? "live · " + (when || "").slice(11, 19) + " UTC" :
    (why || "no answer from the dashboard");
}

function fitGraph() {
  // Crop the picture to what is drawn (its own legend is replaced by the page's).
  const svg = $("#graph svg");
  if (!svg) return;
  let box = null;
  for (const g of $$(":scope > g.edges, :scope > g.meshes, :scope > g.labels", svg)) {
    const b = g.getBBox();
    if (!b.width) continue;
    box = box ? {x1: Math.min(box.x1, b.x), y1: Math.min(box.y1, b.y),
      x2: Math.max(box.x2, b.x + b.width), y2: Math.max(box.y2, b.y + b.height)} :
      {x1: b.x, y1: b.y, x2: b.x + b.width, y2: b.y + b.height};
  }
  if (!box) return;
  const pad = 16;
  const w = box.x2 - box.x1 + 2 * pad, h = box.y2 - box.y1 + 2 * pad;
  svg.setAttribute("viewBox", `${box.x1 - pad} ${box.y1 - pad} ${w} ${h}`);
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  svg.style.aspectRatio = `${w} / ${h}`;
}

async function reloadGraph() {
  const r = await fetch("/graph.svg", {cache: "no-store"});
  $("#graph").innerHTML = r.ok ? await r.text() : '<p class="error">no picture</p>';
  fitGraph();
}

async function tick() {
  try {
    const r = await fetch("/api/state", {cache: "no-store"});
    const s = await r.json();
    if (s.federation) {
      if (s.graph_version !== version) { await reloadGraph(); version = s.graph_version; }
      $("#federation").textContent = s.federation;
      $("#mode").textContent = s.trust_mode;
      if (s.error) $("#graph").replaceChildren(el("p", {class: "error"}, s.error));
      drawMeshes(s.meshes);
      drawArrows(s.arrows);
      drawTables(s);
      drawLog(s.log);
    }
    setLive(!!s.federation, s.time, s.error);
    document.body.dataset.updated = s.time;
  } catch (e) {
    setLive(false);
  }
  setTimeout(tick, POLL_MS);
}
fitGraph();
tick();
"""


def render_page(federation: str | None, svg: str, version: str) -> str:
    e = escape
    name = federation or "(not running)"
    graph = svg or '<p class="empty">waiting for meshfed up</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshfed · {e(name)} · live</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style></head>
<body data-version="{e(version)}">
<header><h1>Federation <span id="federation">{e(name)}</span></h1>
<span class="sub">local federation on Envoy · trust <span id="mode"></span></span>
<span class="spacer"></span>
<span id="live"><span class="dot"></span><span class="text">connecting…</span></span></header>
<main>
<section class="tiles">
<div class="tile ok" id="tile-allowed"><div class="n">&ndash;</div>
<div class="t">requests allowed at the ingress gateways (RBAC)</div></div>
<div class="tile deny" id="tile-denied"><div class="n">&ndash;</div>
<div class="t">requests denied: 403 at the exporting ingress</div></div>
<div class="tile tls" id="tile-tls_failures"><div class="n">&ndash;</div>
<div class="t">TLS handshakes refused (no, untrusted or unadmitted certificate)</div></div>
<div class="tile refused" id="tile-unknown_sni"><div class="n">&ndash;</div>
<div class="t">connections refused: SNI not exported</div></div>
<div class="tile own" id="tile-probes"><div class="n">&ndash;</div>
<div class="t">meshfed's own checks (probes, rotation handshakes): not in the counts</div></div>
</section>
<p id="since"></p>
<section class="card"><h2>Federation graph<small>arrows point from the importing mesh to the
exporter; counters from the exporting ingress gateway's access logs</small></h2>
<div id="graph">{graph}</div>
<div class="legend"><span><i></i>import, 1st choice</span>
<span><i class="failover"></i>failover source (2nd, 3rd…)</span>
<span><i class="grant"></i>allowed, not imported</span>
<span><i class="serving"></i>serving now</span><span><i class="down"></i>down</span>
<span>label: position · export / principals / live counters / who serves</span></div></section>
<div class="side">
<section class="card"><h2>Imports<small>who serves now (egress health)</small></h2>
<div id="imports"></div></section>
<section class="card"><h2>Ingress gateways</h2>
<table id="gateways"><thead><tr><th>mesh</th><th>ingress</th><th>handshakes</th>
<th>TLS failed</th><th>unknown SNI</th></tr></thead><tbody></tbody></table></section>
<section class="card"><h2>Arrows</h2>
<table id="arrows"><thead><tr><th>calls</th><th>export</th><th>allowed</th><th>denied</th>
<th>TLS</th><th title="meshfed's own checks on this arrow">own</th><th>now</th></tr></thead>
<tbody></tbody></table></section>
</div>
<section class="card wide"><h2>Boundary log<small>last 50 crossings, newest first</small></h2>
<table id="log"><thead><tr><th>time (UTC)</th><th>gateway</th><th>caller</th>
<th>SNI · request</th><th>decision</th><th>TLS failure</th></tr></thead><tbody></tbody>
</table></section>
</main>
<footer>Counters are counted from the gateways' access logs, as meshfed logs --boundary shows
them: totals across gateway restarts. meshfed's own checks are marked in the log and counted
apart.</footer>
<script>{_JS.replace("__POLL__", str(POLL_MS))}</script>
</body></html>
"""
