"""Both translations of the plan's authorization, checked against one oracle.

For each mesh of each bundled example and of 50 generated federations, every case of the matrix
of tests/authz_cases.py (callers x SNIs x methods x paths, and requests under another export's
name) is put to

- the local federation's ingress, as rendered for Envoy (tests/envoy_oracle.py), and
- the Istio objects rendered for the mesh, evaluated with Istio's documented semantics
  (tests/istio_oracle.py),

and both must give the plan's verdict (`plan_verdict`: the plan's ``allows()``). Where Istio
cannot say what the plan says the difference is asserted to be exactly the one the README and
``meshfed audit`` name, and nothing more:

- a leaf with two URI SANs (never issued by Istio's or meshfed's CAs; an X.509-SVID has one) is
  admitted on Istio when one of its SANs alone would be, and only then (Istio matches
  principals and ``subjectAltNames`` against any SAN); its SANs all lie in one trust domain the
  export trusts (name constraints);
- a TCP export admitting by prefix cannot pin its callers in the handshake (``subjectAltNames``
  is exact only): a denied caller completes the handshake and is cut by RBAC on its first byte.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from authz_cases import Case, cases_for, generated_spec, handshake_domains, plan_verdict
from envoy_oracle import request as local_request
from istio_oracle import Gateway, Sidecar, Verdict
from local_helpers import numbered_layout
from meshfed.plan.model import FederationPlan, IngressServer, MeshPlan
from meshfed.plan.names import GATEWAY_NAMESPACE, INGRESS_GATEWAY
from meshfed.render.envoy import render_local
from meshfed.render.envoy.process import ProcessConfig
from meshfed.render.istio import RenderedMesh
from meshfed.render.istio.gateways import handshake_identities
from meshfed.spec.load import load_spec, parse_spec
from meshfed.spec.model import Federation
from meshfed.workspace import plan_of, preview_istio

from conftest import EXAMPLES

GENERATED = 50
Obj = dict[str, Any]


def istio_gateway(
    plan: FederationPlan, mesh: MeshPlan, rendered: RenderedMesh, mutate: Mutation | None = None
) -> Gateway:
    docs = copy.deepcopy([d for docs in rendered.files.values() for d in docs])
    if mutate is not None:
        mutate(docs)
    (values,) = rendered.install_files["istiod-values.yaml"]
    return Gateway(
        docs,
        INGRESS_GATEWAY,
        GATEWAY_NAMESPACE,
        values["meshConfig"],
        handshake_domains(plan, mesh),
    )


def _single_san_allowed(mesh: MeshPlan, case: Case) -> bool:
    return any(plan_verdict(mesh, replace(case, sans=(s,))) for s in case.sans or ())


def _prefix_admits(mesh: MeshPlan, server: IngressServer, case: Case) -> bool:
    """Whether a prefix principal of the workload's guard admits the caller header's value
    (the SANs joined by ``,``), which Istio's header matching cannot tell from one identity."""
    guard = mesh.guard(server.workload.ref)
    joined = ",".join(case.sans or ())
    return guard is not None and any(
        p.prefix and joined.startswith(p.value) for r in guard.rules for p in r.principals
    )


def check_istio(mesh: MeshPlan, case: Case, got: Verdict, want: bool) -> str:
    """Assert the Istio verdict (gateway, then the exported workload's sidecar); return the
    name of the documented gap it shows, if any."""
    server = mesh.ingress.server(case.sni)
    if got.allowed:
        assert server is not None and got.destination == server.workload.fqdn, (case, got)
    if got.allowed != want:
        # Two URI SANs, one of them allowed: Istio's any-SAN matching. Never the other way.
        assert not want and case.sans is not None and len(case.sans) > 1, (case, got)
        assert _single_san_allowed(mesh, case), (case, got)
        assert len({s.split("/")[2] for s in case.sans}) == 1  # one trust domain
        assert server is not None
        if server.protocol == "TCP":
            return "two-uri-sans"  # no header on a TCP stream: nothing refuses it
        # HTTP: the workload's guard refuses the joined SANs, unless a prefix admits them.
        assert _prefix_admits(mesh, server, case), (case, got)
        return "two-uri-sans-prefix"
    if got.stage == "workload-forbidden":
        # The sidecar refused what the gateway let through: only a leaf with two URI SANs.
        assert case.sans is not None and len(case.sans) > 1 and not want, (case, got)
    tcp = server is not None and server.protocol == "TCP"
    if tcp and case.sans and not want and got.stage == "forbidden":
        # Past the handshake: the server-first greeting reached a denied caller. Only where
        # the export admits by prefix (no exact list for subjectAltNames).
        assert server is not None and handshake_identities(server) is None, (case, got)
        return "tcp-not-pinned"
    return ""


def check_local(mesh: MeshPlan, case: Case, got: Verdict, want: bool) -> None:
    assert got.allowed == want, (case, got)
    server = mesh.ingress.server(case.sni)
    if got.allowed:
        assert server is not None and got.destination == f"inbound|{server.workload.ref}"
    if server is not None and server.protocol == "TCP" and case.sans and not want:
        # Locally every denied identity is refused in the handshake (or has no trusted chain).
        assert got.stage == "handshake" or len(case.sans) > 1, (case, got)


Mutation = Callable[[list[Obj]], None]


def run_matrix(
    fed: Federation, compact: bool = False, mutate: Mutation | None = None
) -> Counter[str]:
    """Every case on both translations; with ``mutate`` (a change to each mesh's Istio
    objects), count the cases where the Istio verdict no longer holds instead of failing."""
    plan = plan_of(fed)
    istio = {r.mesh: r for r in preview_istio(fed)}
    processes = {
        p.name: p for p in render_local(plan, numbered_layout(plan), Path("/run/meshfed-matrix"))
    }
    seen: Counter[str] = Counter()
    for mesh in plan.meshes:
        gateway = istio_gateway(plan, mesh, istio[mesh.name], mutate)
        sidecars = {
            g.workload.fqdn: Sidecar(gateway.docs, g.workload.namespace, {"app": g.workload.name})
            for g in mesh.workload_guards
        }
        ingress: ProcessConfig = processes[f"{mesh.name}/ingress"]
        for case in cases_for(plan, mesh, compact):
            want = plan_verdict(mesh, case)
            seen["cases"] += 1
            seen["allowed"] += want
            if mutate is None:
                check_local(mesh, case, local_request(ingress, case), want)
            got = gateway.request(case, mesh.ingress.port)
            server = mesh.ingress.server(case.sni)
            if got.allowed and server is not None and server.protocol == "HTTP":
                sidecar = sidecars[server.workload.fqdn]
                port = server.workload.port
                got = sidecar.request(mesh.ingress.spiffe_id, port, got, case.method)
            try:
                gap = check_istio(mesh, case, got, want)
            except AssertionError:
                if mutate is None:
                    raise
                seen["wrong"] += 1
                continue
            if gap:
                seen[gap] += 1
    return seen


@pytest.mark.parametrize("example", ["bank", "partners"])
def test_bundled_examples_both_translations_agree_with_the_plan(example: str) -> None:
    seen = run_matrix(load_spec(EXAMPLES / f"{example}.yaml"))
    assert seen["allowed"] and seen["cases"] > seen["allowed"]  # both outcomes exercised
    # The documented gap is exercised where it exists (the bank's TCP ledger), and only it:
    # every export of both examples names its callers exactly, so on HTTP the workload's guard
    # refuses a leaf with two URI SANs.
    assert bool(seen["two-uri-sans"]) == (example == "bank") and not seen["two-uri-sans-prefix"]


def test_generated_federations_both_translations_agree_with_the_plan() -> None:
    totals: Counter[str] = Counter()
    start = time.monotonic()
    for seed in range(GENERATED):
        fed = parse_spec(json.dumps(generated_spec(seed)), f"generated-{seed}.yaml")
        totals += run_matrix(fed, compact=True)
    assert totals["allowed"] > 1000 and totals["tcp-not-pinned"] and totals["two-uri-sans"]
    assert totals["two-uri-sans-prefix"]  # generated exports admit by prefix too
    print(dict(totals), f"{time.monotonic() - start:.1f}s")


# --- the oracle notices each way the Istio output could be wrong ---------------------------------


def _of(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def _rules(docs: list[Obj]) -> list[Obj]:
    """The rules of the ingress gateway's policies (not the workloads' guards)."""
    return [
        r
        for p in _of(docs, "AuthorizationPolicy")
        if p["metadata"]["namespace"] == GATEWAY_NAMESPACE
        for r in p["spec"].get("rules", [])
    ]


def _with_scheme(docs: list[Obj]) -> None:  # the classic mistake: Istio adds spiffe:// itself
    for rule in _rules(docs):
        for f in rule["from"]:
            f["source"]["principals"] = [f"spiffe://{p}" for p in f["source"]["principals"]]


def _without_sni(docs: list[Obj]) -> None:  # a rule of one export then opens every export
    for rule in _rules(docs):
        rule.pop("when", None)


def _without_baseline(docs: list[Obj]) -> None:  # nothing left to deny a mesh without exports
    docs[:] = [d for d in docs if not d["metadata"]["name"].endswith("-allow-nothing")]
    for policy in _of(docs, "AuthorizationPolicy"):
        policy["spec"]["rules"] = [{}] if "tokenizer" in policy["metadata"]["name"] else []


def _without_path_policy(docs: list[Obj]) -> None:  # Istio's BASE normalization only
    docs[:] = [d for d in docs if d["kind"] != "EnvoyFilter"]


def _without_pins(docs: list[Obj]) -> None:  # TCP exports greet denied callers
    for gateway in _of(docs, "Gateway"):
        for server in gateway["spec"]["servers"]:
            server.get("tls", {}).pop("subjectAltNames", None)


def _prefix_as_exact(docs: list[Obj]) -> None:  # ns/x/* written without its *
    for rule in _rules(docs):
        for f in rule["from"]:
            f["source"]["principals"] = [p.rstrip("*") for p in f["source"]["principals"]]


def _wrong_route(docs: list[Obj]) -> None:  # routes crossed between exports
    routes = [
        r
        for vs in _of(docs, "VirtualService")
        if vs["metadata"]["name"].startswith("ingress-")
        for r in vs["spec"].get("http", []) + vs["spec"].get("tcp", [])
    ]
    hosts = [r["route"][0]["destination"]["host"] for r in routes]
    for route, host in zip(routes, hosts[1:] + hosts[:1], strict=True):
        route["route"][0]["destination"]["host"] = host


def _without_guards(docs: list[Obj]) -> None:  # defense in depth gone: two SANs pass on HTTP
    docs[:] = [d for d in docs if not d["metadata"]["name"].startswith("meshfed-guard-")]


def _guard_without_caller_header(docs: list[Obj]) -> None:  # the route no longer sets it
    for vs in _of(docs, "VirtualService"):
        for route in vs["spec"].get("http", []):
            route.get("headers", {}).get("request", {}).pop("set", None)


MUTATIONS = {
    "no-workload-guards": (_without_guards, "bank"),
    "no-caller-header": (_guard_without_caller_header, "bank"),
    "principals-with-scheme": (_with_scheme, "bank"),
    "rules-without-sni": (_without_sni, "bank"),
    "no-baseline": (_without_baseline, "bank"),
    "no-path-policy": (_without_path_policy, "bank"),
    "tcp-without-pins": (_without_pins, "bank"),
    "prefix-as-exact": (_prefix_as_exact, "partners-prefix"),
    "crossed-routes": (_wrong_route, "bank"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_oracle_notices_each_mistake(name: str, tmp_path: Path) -> None:
    mutate, example = MUTATIONS[name]
    if example == "partners-prefix":
        text = (EXAMPLES / "partners.yaml").read_text()
        text = text.replace("[ns/checkout/sa/storefront]", "[ns/checkout/*]")
        fed = parse_spec(text, "partners-prefix.yaml")
    else:
        fed = load_spec(EXAMPLES / f"{example}.yaml")
    assert run_matrix(fed, mutate=mutate)["wrong"] > 0
