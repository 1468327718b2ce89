"""Decisions the renderers used to make and the plan now holds: admission per SNI with its trust
domains and roots, the foreign trust of a mesh, what the ingress ``ca.crt`` holds, the boundary
policy; and that both renderers translate the same decision, not each their own."""

from __future__ import annotations

import base64
import string
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshfed.plan.boundary import RESPONSE_HEADERS_REMOVED
from meshfed.plan.model import FederationPlan
from meshfed.render.envoy import ProcessConfig, render_local
from meshfed.spec.headers import CALLER_HEADER, STRIPPED_HEADERS
from meshfed.spec.model import Federation
from meshfed.spec.paths import PathError, PathMatch, parse_path
from meshfed.workspace import Workspace, plan_of
from test_render_envoy import fake_layout, walk

from conftest import Rendered


def test_every_rule_names_its_trust_domain_and_admits_only_it(partners: Federation) -> None:
    plan = plan_of(partners)
    for mesh in plan.meshes:
        for server in mesh.ingress.servers:
            for rule in server.allow:
                assert rule.trust_domain == plan.mesh(rule.consumer_mesh).trust_domain
                assert rule.id_prefix == f"spiffe://{rule.trust_domain}/"
                assert all(p.value.startswith(rule.id_prefix) for p in rule.principals)


def test_each_server_trusts_only_the_roots_of_its_callers(partners_rendered: Rendered) -> None:
    plan = partners_rendered.workspace.plan
    for mesh in plan.meshes:
        ingress = mesh.ingress
        for server in ingress.servers:
            domains = {rule.trust_domain for rule in server.allow}
            assert {d for b in server.trusted for d in b.trust_domains} == domains
            for bundle in server.trusted:
                (whole,) = [b for b in ingress.trusted if b.name == bundle.name]
                assert bundle.pem == whole.pem and set(bundle.trust_domains) <= set(
                    whole.trust_domains
                )


def test_federated_ingress_roots_are_cross_certified_shared_ones_are_not(
    bank_rendered: Rendered, partners_rendered: Rendered
) -> None:
    for rendered, crossed in ((bank_rendered, False), (partners_rendered, True)):
        plan = rendered.workspace.plan
        bundles = [b for m in plan.meshes for b in m.ingress.trusted]
        assert bundles and all(b.cross_certify is crossed for b in bundles)
        # Only the ingress trust of Istio's plain CA bundle needs it; sidecars bind roots.
        assert not any(b.cross_certify for m in plan.meshes for b in m.workload_trust)


def test_foreign_trust_is_what_a_mesh_imports_beyond_its_own_root(
    bank_rendered: Rendered, partners_rendered: Rendered
) -> None:
    assert all(m.foreign_trust == () for m in bank_rendered.workspace.plan.meshes)
    plan = partners_rendered.workspace.plan
    acme = plan.mesh("acme")
    sources = {s.mesh for route in acme.imports for s in route.sources}
    assert {b.name for b in acme.foreign_trust} == sources
    for bundle in acme.foreign_trust:
        assert bundle.roots and "".join(bundle.roots) == bundle.pem
        assert all(r.count("BEGIN CERTIFICATE") == 1 for r in bundle.roots)


def _secret(rendered: Rendered, mesh: str, name: str) -> dict[str, str]:
    doc = rendered.secret_docs(mesh)[name]
    return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}


def test_ingress_ca_is_what_the_plan_decided(bank_rendered: Rendered) -> None:
    plan = bank_rendered.workspace.plan
    for mesh in plan.meshes:
        data = _secret(bank_rendered, mesh.name, "ingress-credential.yaml")
        if mesh.ingress.trusted:  # SharedRoot: the roots as they are
            assert data["ca.crt"] == "".join(b.pem for b in mesh.ingress.trusted)
        else:  # nobody may call: no CA entry at all
            assert "ca.crt" not in data


def _ingress_hcms(process: ProcessConfig) -> list[dict[str, Any]]:
    return [
        f["typed_config"]
        for chain in process.listeners[0]["filter_chains"]
        for f in chain["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"
    ]


def test_both_renderers_remove_the_plans_response_headers(
    bank_rendered: Rendered, tmp_path: Any
) -> None:
    ws: Workspace = bank_rendered.workspace
    processes = {p.name: p for p in render_local(ws.plan, fake_layout(ws), tmp_path)}
    for mesh in ws.plan.meshes:
        policy = mesh.boundary
        assert policy.response_headers_removed == RESPONSE_HEADERS_REMOVED
        assert policy.request_headers_removed == (*STRIPPED_HEADERS, CALLER_HEADER)
        http = [s for s in mesh.ingress.servers if s.protocol == "HTTP"]
        hcms = _ingress_hcms(processes[f"{mesh.name}/ingress"])
        assert len(hcms) == len(http)
        for hcm in hcms:
            route = hcm["route_config"]
            removed = policy.request_headers_removed_for(route["name"])
            assert route["response_headers_to_remove"] == list(policy.response_headers_removed)
            assert route["request_headers_to_remove"] == list(removed)
            (caller,) = route["request_headers_to_add"]
            assert caller["header"] == {
                "key": policy.caller_header,
                "value": "%DOWNSTREAM_PEER_URI_SAN%",
            }
            assert hcm["forward_client_cert_details"] == policy.client_cert.at_ingress
            assert hcm["skip_xff_append"] is not policy.forward_caller_address
        routes = [
            r
            for d in bank_rendered.docs(mesh.name, "VirtualService")
            if d["metadata"]["name"].startswith("ingress-")
            for r in d["spec"].get("http", [])
        ]
        assert len(routes) == len(http)
        for route in routes:
            assert route["headers"]["response"]["remove"] == list(policy.response_headers_removed)
            request = route["headers"]["request"]
            assert policy.caller_header in request["remove"]  # removed first, then set
            assert request["set"] == {policy.caller_header: "%DOWNSTREAM_PEER_URI_SAN%"}
            assert set(STRIPPED_HEADERS) <= set(request["remove"])  # the bank keeps none


def test_xfcc_is_accepted_from_the_planned_forwarder_only(
    bank_rendered: Rendered, tmp_path: Any
) -> None:
    ws = bank_rendered.workspace
    for process in render_local(ws.plan, fake_layout(ws), tmp_path):
        if process.role != "sidecar":
            continue
        mesh = ws.plan.mesh(process.mesh)
        forwarder = mesh.boundary.client_cert.forwarder
        assert forwarder == mesh.ingress.spiffe_id
        found = walk(process.listeners)
        exact = [v["exact"] for v in found if isinstance(v, dict) and "exact" in v]
        if mesh.workload(process.workload or "").protocol == "HTTP":
            assert forwarder in exact


def test_egress_allow_list(bank: Federation) -> None:
    plan: FederationPlan = plan_of(bank)
    assert plan.mesh("web").egress.allowed_snis == (
        "ledger.payments.bank.global",
        "tokenizer.payments.global",
    )
    assert plan.mesh("payments").egress.allowed_snis == ()


# --- paths: one rule, for the spec and the plan ---------------------------------------------------

path_text = st.text(string.printable, max_size=24)


@given(path_text)
def test_a_path_parses_or_says_why_not(text: str) -> None:
    try:
        path = parse_path(text)
    except PathError as exc:
        assert exc.problem and exc.fix
        return
    assert str(path) == text
    assert "?" not in path.value and "#" not in path.value
    assert PathMatch(path.value, path.prefix) == path  # the plan's type holds the same rule


@given(st.from_regex(r"\A/[a-z0-9/._-]{0,16}\*?\Z"))
def test_a_plain_path_is_a_path(text: str) -> None:
    path = parse_path(text)
    assert path.prefix is text.endswith("*")
    assert path.matches(path.value)
