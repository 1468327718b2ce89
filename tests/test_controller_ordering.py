"""Make-before-break decisions: edges, waves, the union spec, frozen meshes (pure)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from meshfed.controller.ordering import (
    FINAL,
    OPEN,
    ROUTE,
    edge_changes,
    frozen_meshes,
    holds,
    side,
    union_spec,
    waves,
)
from meshfed.plan.build import build_plan
from meshfed.plan.model import FederationPlan
from meshfed.render.istio import render_mesh
from meshfed.render.istio.trust import MeshCredentials
from meshfed.spec.model import Federation

BANK = Path(__file__).resolve().parents[1] / "src/meshfed/examples/bank.yaml"


def _doc() -> dict[str, Any]:
    loaded = yaml.safe_load(BANK.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _fed(doc: dict[str, Any]) -> Federation:
    return Federation.model_validate(doc)


def _plan(fed: Federation) -> FederationPlan:
    return build_plan(fed, {m.name: f"PEM {m.name}" for m in fed.spec.meshes})


def _without_ledger(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["spec"]["exports"] = [e for e in doc["spec"]["exports"] if e["name"] != "ledger"]
    doc["spec"]["imports"] = [i for i in doc["spec"]["imports"] if "ledger" not in i["host"]]
    return doc


def test_unchanged_federation_is_one_final_wave() -> None:
    plan = _plan(_fed(_doc()))
    changes = edge_changes(plan, plan)
    assert not changes.changed
    assert waves(changes) == [FINAL]


def test_first_apply_opens_exporters_before_importers() -> None:
    changes = edge_changes(None, _plan(_fed(_doc())))
    assert changes.opening == {("web", "payments"), ("web", "payments-dr")}
    assert not changes.closing
    assert waves(changes) == [OPEN, FINAL]


def test_adding_an_export_and_import_opens_first() -> None:
    old_fed, new_fed = _fed(_without_ledger(_doc())), _fed(_doc())
    union, _ = union_spec(old_fed, new_fed)
    changes = edge_changes(_plan(old_fed), _plan(new_fed), _plan(union))
    assert changes.opening == {("web", "payments")}
    assert not changes.closing  # the edge carries more, nothing less
    assert waves(changes) == [OPEN, FINAL]
    # Without the union, a changed edge counts as closing too (the safe side).
    assert edge_changes(_plan(old_fed), _plan(new_fed)).closing == {("web", "payments")}


def test_removing_an_export_routes_away_before_closing() -> None:
    old_fed, new_fed = _fed(_doc()), _fed(_without_ledger(_doc()))
    # The union keeps the ledger served while web still routes to it (wave 1) ...
    union, reason = union_spec(old_fed, new_fed)
    assert reason is None
    changes = edge_changes(_plan(old_fed), _plan(new_fed), _plan(union))
    assert ("web", "payments") in changes.closing
    assert {e.name for e in union.spec.exports if e.mesh == "payments"} == {"tokenizer", "ledger"}
    # ... the importer stops routing (wave 2) before the final wave prunes the export.
    order = waves(changes)
    assert order.index(ROUTE) < order.index(FINAL)


def test_union_merges_consumer_rules() -> None:
    old_doc = _doc()
    new_doc = copy.deepcopy(old_doc)
    new_doc["spec"]["exports"][0]["consumers"][0]["principals"] = ["ns/shop/sa/catalog"]
    new_doc["spec"]["exports"][0]["consumers"][0]["methods"] = ["GET"]
    union, reason = union_spec(_fed(old_doc), _fed(new_doc))
    assert reason is None
    consumer = union.export("payments/tokenizer").consumers[0]
    assert consumer.principals == ["ns/shop/sa/catalog", "ns/shop/sa/checkout"]
    assert consumer.methods == ["GET", "POST"]
    # A pure widening: the union is the new spec, so nothing counts as closing.
    wider = copy.deepcopy(old_doc)
    wider["spec"]["exports"][0]["consumers"][0]["principals"].append("ns/shop/sa/catalog")
    union, _ = union_spec(_fed(old_doc), _fed(wider))
    changes = edge_changes(_plan(_fed(old_doc)), _plan(_fed(wider)), _plan(union))
    assert changes.opening == {("web", "payments")} and not changes.closing
    # A rule that allowed any method stays "any" in the union.
    del new_doc["spec"]["exports"][0]["consumers"][0]["methods"]
    union, _ = union_spec(_fed(old_doc), _fed(new_doc))
    assert union.export("payments/tokenizer").consumers[0].methods is None


def test_union_drops_what_a_removed_mesh_served() -> None:
    old_doc = _doc()
    new_doc = copy.deepcopy(old_doc)
    new_doc["spec"]["meshes"] = [m for m in new_doc["spec"]["meshes"] if m["name"] != "payments-dr"]
    new_doc["spec"]["exports"] = [
        e for e in new_doc["spec"]["exports"] if e["mesh"] != "payments-dr"
    ]
    new_doc["spec"]["imports"][0]["from"] = ["payments/tokenizer"]
    union, reason = union_spec(_fed(old_doc), _fed(new_doc))
    assert reason is None
    assert all(e.mesh != "payments-dr" for e in union.spec.exports)


def test_unreachable_exporter_freezes_the_importers_that_change_with_it() -> None:
    old = _plan(_fed(_without_ledger(_doc())))
    new = _plan(_fed(_doc()))
    frozen = frozen_meshes(edge_changes(old, new), new, {"payments": "cluster unreachable"})
    assert frozen["payments"] == "cluster unreachable"
    assert "imports from mesh payments change" in frozen["web"]
    assert "payments-dr" not in frozen  # its edges do not change: it is reconciled


def test_unreachable_mesh_with_no_change_freezes_nobody_else() -> None:
    plan = _plan(_fed(_doc()))
    frozen = frozen_meshes(edge_changes(plan, plan), plan, {"payments-dr": "unreachable"})
    assert frozen == {"payments-dr": "unreachable"}


def test_an_address_change_needs_no_opening_wave() -> None:
    old_doc = _doc()
    new_doc = copy.deepcopy(old_doc)
    new_doc["spec"]["meshes"][0]["ingress"]["address"] = "127.0.0.9"
    changes = edge_changes(_plan(_fed(old_doc)), _plan(_fed(new_doc)), _plan(_fed(new_doc)))
    assert changes.opening == {("web", "payments")} and not changes.serving
    assert waves(changes) == [FINAL]


def test_pending_address_on_first_apply_holds_only_the_importer() -> None:
    new = _plan(_fed(_doc()))
    frozen = frozen_meshes(edge_changes(None, new), new, {}, pending_address=["payments"])
    assert set(frozen) == {"web"}  # the exporters are written: their gateways come up first


def test_held_importer_keeps_what_it_routes_to_open() -> None:
    old_fed, new_fed = _fed(_doc()), _fed(_without_ledger(_doc()))
    union, _ = union_spec(old_fed, new_fed)
    new = _plan(new_fed)
    changes = edge_changes(_plan(old_fed), new, _plan(union))
    frozen = frozen_meshes(changes, new, {"web": "cluster unreachable"})
    assert "web waits" in frozen["payments"]  # it would close the ledger web still routes to
    # Widening for a held importer is fine: nothing routes there until it is written.
    widened = edge_changes(_plan(new_fed), _plan(old_fed), _plan(union))
    assert frozen_meshes(widened, _plan(old_fed), {"web": "unreachable"}) == {"web": "unreachable"}


def test_pending_address_freezes_its_importers() -> None:
    plan = _plan(_fed(_doc()))
    frozen = frozen_meshes(edge_changes(plan, plan), plan, {}, pending_address=["payments-dr"])
    assert set(frozen) == {"web"}
    assert "load-balancer address" in frozen["web"]


def _creds() -> MeshCredentials:
    return MeshCredentials(
        ca_cert="x",
        ca_key="x",
        root_cert="x",
        cert_chain="x",
        ingress_cert_chain="x",
        ingress_key="x",
    )


def test_every_rendered_object_has_the_side_it_serves() -> None:
    plan = _plan(_fed(_doc()))
    sides: dict[str, set[str]] = {}
    for mesh in plan.meshes:
        rendered = render_mesh(plan, mesh, _creds())
        for file, docs in {**rendered.files, **rendered.secret_files}.items():
            for obj in docs:
                sides.setdefault(file, set()).add(side(obj))
    assert sides["imports.yaml"] == {"importer"}
    assert sides["egress-gateway.yaml"] == {"importer"}
    assert sides["ingress-gateway.yaml"] == {"exporter"}
    assert sides["exports.yaml"] == {"exporter"}
    assert sides["mtls.yaml"] == {"exporter"}
    assert sides["cacerts.yaml"] == {"exporter"}
    assert sides["namespace.yaml"] == {"base"}


def _ring() -> Federation:
    """a -> b -> c -> a: each mesh exports one service to the next, which imports it."""
    names = ["a", "b", "c"]
    meshes = [
        {
            "name": n,
            "trustDomain": f"{n}.ring.example",
            "ingress": {"address": "127.0.0.1", "port": 20000 + i},
            "workloads": [{"name": "s", "namespace": "app", "serviceAccount": "s", "port": 8080}],
        }
        for i, n in enumerate(names)
    ]
    exports, imports = [], []
    for i, n in enumerate(names):
        nxt = names[(i + 1) % 3]
        exports.append(
            {"name": "s", "mesh": n, "workload": "app/s",
             "consumers": [{"mesh": nxt, "principals": ["*"]}]}
        )  # fmt: skip
        imports.append({"mesh": nxt, "host": f"s.{n}.local.example", "from": [f"{n}/s"]})
    doc = {
        "apiVersion": "meshfed.dev/v1alpha1",
        "kind": "Federation",
        "metadata": {"name": "ring"},
        "spec": {"meshes": meshes, "exports": exports, "imports": imports},
    }
    return _fed(doc)


def test_a_ring_waiting_for_one_address_holds_only_one_importer_side() -> None:
    """b's address is pending: c (importing from b) holds its routes, but b and c still open
    what they serve, so b's gateway (and its address) can come up."""
    plan = _plan(_ring())
    held = holds(edge_changes(None, plan), plan, {}, pending_address=["b"])
    assert set(held) == {"c"}
    assert held["c"].sides == {"importer"}
    assert not held["c"].whole


def test_unreachable_exporter_holds_importer_side_only() -> None:
    old = _plan(_fed(_without_ledger(_doc())))
    new = _plan(_fed(_doc()))
    held = holds(edge_changes(old, new), new, {"payments": "unreachable"})
    assert held["payments"].whole
    assert held["web"].sides == {"importer"}


def test_union_of_specs_differing_only_in_meshes_is_the_new_spec() -> None:
    # A discovered port or a load-balancer address changes meshes only: the new spec itself
    # is the union (no second plan), and no edge closes.
    old_doc = _doc()
    new_doc = copy.deepcopy(old_doc)
    new_doc["spec"]["meshes"][0]["ingress"]["address"] = "192.0.2.99"
    old_fed, new_fed = _fed(old_doc), _fed(new_doc)
    union, reason = union_spec(old_fed, new_fed)
    assert union is new_fed and reason is None
    changes = edge_changes(_plan(old_fed), _plan(new_fed), _plan(union))
    assert not changes.closing and not changes.serving
    assert waves(changes) == [FINAL]
    # Any change to exports still builds the union.
    wider = copy.deepcopy(old_doc)
    wider["spec"]["exports"][0]["consumers"][0]["principals"].append("ns/shop/sa/catalog")
    assert union_spec(old_fed, _fed(wider))[0] is not _fed(wider)
