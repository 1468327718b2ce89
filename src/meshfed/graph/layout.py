"""Geometry: meshes on a circle (no two boxes overlap), arrows as quadratic curves that bow
toward the centre until they clear every other box, labels where they overlap nothing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from meshfed.graph.model import Edge, FederationGraph, MeshNode

BOX_W = 200.0
BOX_H = 64.0
MARGIN = 40.0
GAP = 6.0
"""Space between an arrow's end and the box border."""
LANE = 30.0
"""Distance between parallel arrows of the same pair of meshes."""
CHAR_W = 6.4
"""Width of a character of 11px text, generously (labels, box details)."""
NAME_CHAR_W = 9.0
"""Width of a character of a mesh name (14px bold)."""
LINE_H = 13.0
Point = tuple[float, float]


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    @property
    def center(self) -> Point:
        return (self.x + self.w / 2, self.y + self.h / 2)

    def overlaps(self, other: Rect, pad: float = 0.0) -> bool:
        return not (
            self.x + self.w + pad <= other.x
            or other.x + other.w + pad <= self.x
            or self.y + self.h + pad <= other.y
            or other.y + other.h + pad <= self.y
        )

    def contains(self, p: Point, pad: float = 0.0) -> bool:
        return (
            self.x - pad <= p[0] <= self.x + self.w + pad
            and self.y - pad <= p[1] <= self.y + self.h + pad
        )


@dataclass(frozen=True)
class Curve:
    start: Point
    control: Point
    end: Point

    def at(self, t: float) -> Point:
        u = 1 - t
        return (
            u * u * self.start[0] + 2 * u * t * self.control[0] + t * t * self.end[0],
            u * u * self.start[1] + 2 * u * t * self.control[1] + t * t * self.end[1],
        )


@dataclass(frozen=True)
class PlacedEdge:
    edge: Edge
    curve: Curve
    label: Rect
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    boxes: dict[str, Rect]
    edges: tuple[PlacedEdge, ...]


def box_lines(node: MeshNode) -> tuple[str, str, str]:
    """Name, trust domain, and where peers reach the mesh."""
    where = f"ingress {node.ingress}" + (f" · net {node.network}" if node.network else "")
    return node.name, node.trust_domain, where


def box_width(nodes: Sequence[MeshNode]) -> float:
    """One width for every box: the default, or wide enough for the longest text."""
    widest = max(
        max(len(name) * NAME_CHAR_W, len(domain) * CHAR_W, len(where) * CHAR_W)
        for name, domain, where in map(box_lines, nodes)
    )
    return max(BOX_W, widest + 20)


def _circle(names: Sequence[str], box_w: float) -> dict[str, Rect]:
    n = len(names)
    if n == 1:
        return {names[0]: Rect(0, 0, box_w, BOX_H)}
    radius = max(260.0, n * (box_w + 120) / (2 * math.pi))
    while True:
        boxes = {}
        for i, name in enumerate(names):
            angle = -math.pi / 2 + 2 * math.pi * i / n
            cx, cy = radius * math.cos(angle), radius * math.sin(angle)
            boxes[name] = Rect(cx - box_w / 2, cy - BOX_H / 2, box_w, BOX_H)
        rects = list(boxes.values())
        if not any(a.overlaps(b, pad=40) for i, a in enumerate(rects) for b in rects[i + 1 :]):
            return boxes
        radius *= 1.1


def _border(rect: Rect, toward: Point, gap: float) -> Point:
    """Where the line from the box centre toward ``toward`` leaves the box (plus ``gap``)."""
    cx, cy = rect.center
    dx, dy = toward[0] - cx, toward[1] - cy
    length = math.hypot(dx, dy) or 1.0
    dx, dy = dx / length, dy / length
    tx = (rect.w / 2) / abs(dx) if dx else math.inf
    ty = (rect.h / 2) / abs(dy) if dy else math.inf
    t = min(tx, ty) + gap
    return (cx + dx * t, cy + dy * t)


def _clear(curve: Curve, boxes: Sequence[Rect], pad: float = 8.0) -> bool:
    return not any(box.contains(curve.at(i / 40), pad) for i in range(1, 40) for box in boxes)


def _route(a: Rect, b: Rect, lane: float, centre: Point, others: Sequence[Rect]) -> Curve:
    (ax, ay), (bx, by) = a.center, b.center
    mx, my = (ax + bx) / 2, (ay + by) / 2
    length = math.hypot(bx - ax, by - ay) or 1.0
    nx, ny = -(by - ay) / length, (bx - ax) / length
    best: Curve | None = None
    for pull in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3):
        cx = mx + (centre[0] - mx) * pull + nx * lane
        cy = my + (centre[1] - my) * pull + ny * lane
        curve = Curve(_border(a, (cx, cy), 0), (cx, cy), _border(b, (cx, cy), GAP))
        best = best or curve
        if _clear(curve, others):
            return curve
    assert best is not None
    return best


def _label_rect(curve: Curve, lines: Sequence[str], t: float, shift: Point) -> Rect:
    w = max(len(line) for line in lines) * CHAR_W + 10
    h = len(lines) * LINE_H + 6
    x, y = curve.at(t)
    return Rect(x - w / 2 + shift[0], y - h / 2 + shift[1], w, h)


_SHIFTS: tuple[Point, ...] = tuple(
    sorted(
        ((dx, dy) for dx in (-120.0, -60.0, 0.0, 60.0, 120.0) for dy in range(-72, 73, 18)),
        key=lambda p: abs(p[0]) + abs(p[1]),
    )
)


def _place_label(
    curve: Curve, lines: Sequence[str], taken: list[Rect], boxes: Sequence[Rect]
) -> Rect:
    """The first spot near the middle of the curve that overlaps no box and no other label."""
    for shift in _SHIFTS:
        for t in (0.5, 0.42, 0.58, 0.35, 0.65, 0.28, 0.72):
            rect = _label_rect(curve, lines, t, shift)
            if not any(rect.overlaps(o, pad=2) for o in [*taken, *boxes]):
                return rect
    return _label_rect(curve, lines, 0.5, (0.0, 0.0))


def layout(graph: FederationGraph, reserve: Sequence[str] = ()) -> Layout:
    """Place boxes, arrows and labels; ``reserve``: extra lines kept free in every label (as
    wide as the strings given), which the live dashboard fills with counters."""
    names = [m.name for m in graph.meshes]
    boxes = _circle(names, box_width(graph.meshes))
    centre = (0.0, 0.0) if len(names) > 1 else boxes[names[0]].center
    pairs: dict[tuple[str, str], list[Edge]] = {}
    for edge in graph.edges:
        key = (min(edge.caller, edge.exporter), max(edge.caller, edge.exporter))
        pairs.setdefault(key, []).append(edge)
    placed: list[PlacedEdge] = []
    labels: list[Rect] = []
    for (low, _), edges in pairs.items():
        for i, edge in enumerate(edges):
            lane = (i - (len(edges) - 1) / 2) * LANE
            if edge.caller != low:  # keep lanes on the pair's own axis whatever the direction
                lane = -lane
            others = [r for n, r in boxes.items() if n not in (edge.caller, edge.exporter)]
            a, b = boxes[edge.caller], boxes[edge.exporter]
            curve = _route(a, b, lane, centre, others)
            lines = (*edge.lines(), *reserve)
            label = _place_label(curve, lines, labels, list(boxes.values()))
            labels.append(label)
            placed.append(PlacedEdge(edge, curve, label, lines))
    return _shift(boxes, placed)


def _shift(boxes: dict[str, Rect], edges: list[PlacedEdge]) -> Layout:
    """Move everything so the top-left corner is at (MARGIN, MARGIN)."""
    rects = [*boxes.values(), *(e.label for e in edges)]
    points = [e.curve.at(i / 20) for e in edges for i in range(21)]
    xs = [r.x for r in rects] + [p[0] for p in points]
    ys = [r.y for r in rects] + [p[1] for p in points]
    x2 = [r.x + r.w for r in rects] + [p[0] for p in points]
    y2 = [r.y + r.h for r in rects] + [p[1] for p in points]
    dx, dy = MARGIN - min(xs), MARGIN - min(ys)

    def move(r: Rect) -> Rect:
        return Rect(r.x + dx, r.y + dy, r.w, r.h)

    def mp(p: Point) -> Point:
        return (p[0] + dx, p[1] + dy)

    return Layout(
        width=max(x2) + dx + MARGIN,
        height=max(y2) + dy + MARGIN,
        boxes={n: move(r) for n, r in boxes.items()},
        edges=tuple(
            PlacedEdge(
                e.edge,
                Curve(mp(e.curve.start), mp(e.curve.control), mp(e.curve.end)),
                move(e.label),
                e.lines,
            )
            for e in edges
        ),
    )
