"""The plan's caller namespaces (`MeshPlan.caller_namespaces`): where an importing mesh's callers
live, so that each such namespace gets its own copy of the egress subsets' rule (Istio)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz_cases import generated_spec
from meshfed.plan.callers import caller_namespaces
from meshfed.plan.model import FederationPlan, MeshPlan, Workload
from meshfed.spec.load import load_spec, parse_spec
from meshfed.spiffe import PrincipalMatch
from meshfed.workspace import plan_of

from conftest import EXAMPLES

TD = "web.example"


def _w(namespace: str, sa: str) -> Workload:
    return Workload(
        "web", namespace, sa, sa, 8080, "HTTP", f"spiffe://{TD}/ns/{namespace}/sa/{sa}", "x"
    )


WORKLOADS = [
    _w("shop", "checkout"),
    _w("shop", "catalog"),
    _w("batch", "nightly"),
    _w("ops", "pager"),
    _w("meshfed-system", "federation-egress"),
]


@pytest.mark.parametrize(
    ("principals", "namespaces"),
    [
        ([], ()),
        ([PrincipalMatch(f"spiffe://{TD}/ns/shop/sa/checkout")], ("shop",)),
        ([PrincipalMatch(f"spiffe://{TD}/ns/shop/sa/nobody")], ()),  # no such workload
        ([PrincipalMatch(f"spiffe://{TD}/ns/b", prefix=True)], ("batch",)),
        ([PrincipalMatch(f"spiffe://{TD}/ns/shop/sa/", prefix=True)], ("shop",)),
        # the whole trust domain: every namespace of a known workload, never meshfed's own
        ([PrincipalMatch(f"spiffe://{TD}/", prefix=True)], ("batch", "ops", "shop")),
        ([PrincipalMatch("spiffe://other.example/", prefix=True)], ()),
        (
            [
                PrincipalMatch(f"spiffe://{TD}/ns/ops/sa/pager"),
                PrincipalMatch(f"spiffe://{TD}/ns/shop/sa/catalog"),
                PrincipalMatch(f"spiffe://{TD}/ns/shop/sa/checkout"),
            ],
            ("ops", "shop"),
        ),
    ],
)
def test_namespaces_of_the_workloads_the_rules_admit(
    principals: list[PrincipalMatch], namespaces: tuple[str, ...]
) -> None:
    assert caller_namespaces(WORKLOADS, principals) == namespaces
    assert caller_namespaces(reversed(WORKLOADS), reversed(principals)) == namespaces


def _callers_from_ingress_rules(plan: FederationPlan, mesh: MeshPlan) -> set[str]:
    """The same decision read from the other side: the rules the exporters' ingresses enforce
    for each import's wire host (aliases included), applied to the mesh's workloads."""
    found = set()
    for route in mesh.imports:
        for source in route.sources:
            server = plan.ingress_of(source.mesh).server(route.wire_host)
            assert server is not None, (source.mesh, route.wire_host)
            for rule in server.allow:
                if rule.consumer_mesh != mesh.name:
                    continue
                for w in mesh.workloads:
                    if any(p.matches(w.spiffe_id) for p in rule.principals):
                        found.add(w.namespace)
    return found - {"meshfed-system"}


@pytest.mark.parametrize("name", ["bank", "partners", "acme", "globex"])
def test_examples(name: str) -> None:
    plan = plan_of(load_spec(EXAMPLES / f"{name}.yaml"))
    expected = {
        "bank": {"web": ("shop",)},
        "partners": {"acme": ("checkout", "orders")},
        "acme": {"acme": ("checkout",)},
        "globex": {"globex": ("billing",)},
    }.get(name, {})
    for mesh in plan.meshes:
        assert mesh.caller_namespaces == expected.get(mesh.name, ()), mesh.name
        assert set(mesh.caller_namespaces) == _callers_from_ingress_rules(plan, mesh)


@pytest.mark.parametrize("seed", range(40))
def test_generated_federations_agree_with_the_ingress_rules(seed: int) -> None:
    spec: dict[str, Any] = generated_spec(seed)
    plan = plan_of(parse_spec(json.dumps(spec), f"generated-{seed}.yaml"))
    for mesh in plan.meshes:
        assert list(mesh.caller_namespaces) == sorted(set(mesh.caller_namespaces))
        assert set(mesh.caller_namespaces) == _callers_from_ingress_rules(plan, mesh)
        if not mesh.imports:
            assert mesh.caller_namespaces == ()
