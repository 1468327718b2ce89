"""``meshfed graph``: a readable picture at 10 meshes, as SVG (parsed back here) and HTML."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from meshfed.cli.audit import register
from meshfed.graph import build_graph, ordinal, render_html, render_svg
from meshfed.spec.load import parse_spec
from meshfed.spec.model import Federation
from meshfed.workspace import plan_of

from conftest import EXAMPLES

SVG = "{http://www.w3.org/2000/svg}"
N = 10


def ten_meshes() -> str:
    """m<i> exports api to m<i+1>, m<i+2> (and m<i+5> which imports nothing from it); m<i>
    imports api from m<i-1>, failing over to m<i-2>."""
    lines = [
        "apiVersion: meshfed.dev/v1alpha1",
        "kind: Federation",
        "metadata: {name: big}",
        "spec:",
        "  meshes:",
    ]
    for i in range(N):
        lines += [
            f"    - name: m{i}",
            f"      trustDomain: m{i}.big.example",
            f"      ingress: {{address: 203.0.113.{i + 1}, port: 15443}}",
            "      workloads:",
            "        - {name: api, namespace: svc, serviceAccount: api, port: 8080}",
            "        - {name: client, namespace: app, serviceAccount: client, port: 8080}",
        ]
    lines.append("  exports:")
    for i in range(N):
        lines += [
            "    - name: api",
            f"      mesh: m{i}",
            "      workload: svc/api",
            f"      host: api.m{i}.big.global",
            "      consumers:",
        ]
        for c in ((i + 1) % N, (i + 2) % N, (i + 5) % N):
            lines.append(
                f"        - {{mesh: m{c}, principals: [ns/app/sa/client], methods: [GET]}}"
            )
    lines.append("  imports:")
    for i in range(N):
        lines += [
            f"    - mesh: m{i}",
            "      host: api.app.svc.cluster.local",
            f"      from: [m{(i - 1) % N}/api, m{(i - 2) % N}/api]",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def big() -> Federation:
    return parse_spec(ten_meshes(), "big.yaml")


def rect(el: ET.Element) -> tuple[float, float, float, float]:
    return tuple(float(el.attrib[k]) for k in ("x", "y", "width", "height"))  # type: ignore[return-value]


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return not (
        a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
    )


def arrows(root: ET.Element, kind: str) -> list[ET.Element]:
    """The arrows of one kind (the legend's samples have no id)."""
    return [
        g
        for g in root.iter(f"{SVG}g")
        if g.get("id", "").startswith("edge-") and kind in g.get("class", "").split()
    ]


def test_ten_meshes_render_as_a_readable_svg(big: Federation) -> None:
    root = ET.fromstring(render_svg(build_graph(plan_of(big))))
    assert root.tag == f"{SVG}svg"
    meshes = [g for g in root.iter(f"{SVG}g") if g.get("class") == "mesh"]
    assert sorted(g.attrib["data-mesh"] for g in meshes) == sorted(f"m{i}" for i in range(N))
    boxes = [rect(g.find(f"{SVG}rect")) for g in meshes]  # type: ignore[arg-type]
    for a, b in itertools.combinations(boxes, 2):
        assert not overlap(a, b)
    width, height = float(root.attrib["width"]), float(root.attrib["height"])
    for x, y, w, h in boxes:
        assert x >= 0 and x + w <= width and y >= 0 and y + h <= height
    labels = {g.attrib["data-edge"]: g for g in root.iter(f"{SVG}g") if g.get("class") == "label"}
    label_boxes = [rect(g.find(f"{SVG}rect")) for g in labels.values()]  # type: ignore[arg-type]
    for label in label_boxes:
        assert not any(overlap(label, box) for box in boxes)
    for a, b in itertools.combinations(label_boxes, 2):
        assert not overlap(a, b)

    imports = arrows(root, "import")
    assert len(imports) == 2 * N  # one arrow per (import, source)
    seen = set()
    for g in imports:
        importer, exporter = g.attrib["data-from"], g.attrib["data-to"]
        i = int(importer[1:])
        order = int(g.attrib["data-order"])
        assert exporter == f"m{(i - order) % N}"  # 1st: m<i-1>, 2nd: m<i-2>
        assert g.attrib["data-principals"] == "ns/app/sa/client"
        assert g.find(f"{SVG}path") is not None
        text = " ".join(t.text or "" for t in labels[g.attrib["id"]].iter(f"{SVG}text"))
        assert text == f"{ordinal(order)} · api ns/app/sa/client"
        assert ("primary" if order == 1 else "failover") in g.attrib["class"]
        seen.add((importer, exporter))
    assert len(seen) == 2 * N
    grants = arrows(root, "grant")
    assert len(grants) == N  # m<i+5> is allowed but imports nothing from m<i>
    assert all(
        g.attrib["data-to"] == f"m{(int(g.attrib['data-from'][1:]) - 5) % N}" for g in grants
    )


def test_single_source_imports_carry_no_order() -> None:
    from meshfed.spec.load import load_spec

    graph = build_graph(plan_of(load_spec(EXAMPLES / "bank.yaml")))
    ledger = next(e for e in graph.edges if e.export == "payments/ledger")
    assert ledger.lines() == ["ledger", "ns/shop/sa/checkout"]
    dr = next(e for e in graph.edges if e.export == "payments-dr/tokenizer")
    # the spec spells the principal out as a full SPIFFE ID of web; shown relative to it
    assert dr.lines() == ["2nd · tokenizer", "ns/shop/sa/checkout"]
    assert "POST" in dr.title() and "/v1/tokenize" in dr.title()


def test_each_rule_is_shown_as_planned_never_merged(big: Federation) -> None:
    # m1 may call m0's api twice: GET as ns/app/sa/client, and POST on /v1/* as ns/ops/*.
    spec = ten_meshes().replace(
        "        - {mesh: m1, principals: [ns/app/sa/client], methods: [GET]}",
        "        - {mesh: m1, principals: [ns/app/sa/client], methods: [GET]}\n"
        "        - {mesh: m1, principals: [ns/ops/*], methods: [POST], paths: [/v1/*]}",
    )
    assert spec != ten_meshes()
    graph = build_graph(plan_of(parse_spec(spec, "two-rules.yaml")))
    (edge,) = [e for e in graph.edges if e.caller == "m1" and e.export == "m0/api"]
    assert [(r.principals, r.methods, r.paths) for r in edge.rules] == [
        (("ns/app/sa/client",), ("GET",), ()),
        (("ns/ops/*",), ("POST",), ("/v1/*",)),
    ]
    assert edge.principals == ("ns/app/sa/client", "ns/ops/*")
    title = edge.title().splitlines()
    assert "rule 1: ns/app/sa/client; methods: GET; paths: any" in title
    assert "rule 2: ns/ops/*; methods: POST; paths: /v1/*" in title
    page = render_html(graph)
    # one row per rule: m1 has a second rule at m0, m6 and m9 (the line replaced three times)
    assert page.count("<tr>") == 1 + 3 * N + 3


def test_ordinal() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "101st",
    ]


def test_html_embeds_the_svg_with_a_legend(big: Federation) -> None:
    page = render_html(build_graph(plan_of(big)))
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "Legend" in page
    assert page.count("<tr>") == 1 + 3 * N


@click.group()
def cli() -> None:
    pass


register(cli)


def test_graph_command(tmp_path: Path) -> None:
    runner = CliRunner()
    spec = tmp_path / "big.yaml"
    spec.write_text(ten_meshes())
    result = runner.invoke(cli, ["graph", str(spec)])
    assert result.exit_code == 0
    ET.fromstring(result.stdout)
    out = tmp_path / "fed.html"
    assert runner.invoke(cli, ["graph", str(spec), "-o", str(out)]).exit_code == 0
    assert "<svg" in out.read_text()
    svg = tmp_path / "fed.svg"
    assert runner.invoke(cli, ["graph", str(spec), "-o", str(svg)]).exit_code == 0
    ET.parse(svg)
    assert runner.invoke(cli, ["graph", str(spec), "-o", str(tmp_path / "x.png")]).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(ten_meshes().replace("trustDomain: m1.", "trustDomain: m0."))
    result = runner.invoke(cli, ["graph", str(bad)])
    assert result.exit_code == 1 and "trust domain" in result.stderr
