"""The Federation CRD: generated from the spec model, structural, and refusing what the model
and ``meshfed validate`` refuse (offline: JSON schema, list-map keys, every CEL rule with
cel-python; the integration suite applies it to a real API server)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.controller.crd import PRINTER_COLUMNS, federation_crd, federation_schema
from meshfed.controller.reconcile import parse_federation
from meshfed.spec.errors import SpecError

from k8s_schema import validate_custom_resource, validate_manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "src/meshfed/examples"


def _doc(name: str = "bank.yaml") -> dict[str, Any]:
    loaded = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def _problems(doc: dict[str, Any]) -> list[str]:
    return validate_custom_resource(doc, federation_crd())


@pytest.mark.parametrize("name", ["bank.yaml", "partners.yaml"])
def test_examples_are_valid_resources(name: str) -> None:
    assert _problems(_doc(name)) == []


def test_crd_is_a_valid_kubernetes_object() -> None:
    assert validate_manifest(federation_crd()) == []


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out += _walk(value, f"{path}.{key}")
        if "items" in node:
            out += _walk(node["items"], f"{path}[]")
    return out


def test_schema_is_structural() -> None:
    """Every node typed, objects with properties never also with additionalProperties, no
    $ref/anyOf/defaults (defaults would make the API server fill ``workloads`` in, and a mesh
    that leaves them to discovery must keep them omitted)."""
    for path, node in _walk(federation_schema()):
        assert "type" in node, path
        forbidden = {"$ref", "anyOf", "oneOf", "allOf", "default", "additionalProperties", "$defs"}
        assert not forbidden & set(node), (path, forbidden & set(node))
        if node["type"] == "array" and path.startswith(".spec"):
            assert "maxItems" in node, f"{path}: CEL cost needs a bound"


def test_printer_columns_and_status() -> None:
    version = federation_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in PRINTER_COLUMNS]
    assert names[:1] == ["Ready"]
    assert {"Ready", "Meshes", "Exports", "Age"} <= set(names)
    assert federation_crd()["spec"]["scope"] == "Cluster"


def _broken(edit: Any, name: str = "bank.yaml") -> list[str]:
    doc = copy.deepcopy(_doc(name))
    edit(doc)
    return _problems(doc)


def _one(problems: list[str], field: str, words: str) -> None:
    assert problems, "expected a refusal"
    assert any(field in p and words in p for p in problems), problems


def test_duplicate_mesh_refused_by_list_map_key() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["spec"]["meshes"].append(copy.deepcopy(doc["spec"]["meshes"][0]))

    _one(_broken(edit), "spec.meshes[3]", "Duplicate value")


def test_unknown_field_refused() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["spec"]["meshes"][0]["trustdomain"] = "x.example"

    _one(_broken(edit), "spec.meshes[0].trustdomain", "unknown field")


def test_export_of_unknown_mesh_refused() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["spec"]["exports"][0]["mesh"] = "nope"

    _one(_broken(edit), "spec.exports", "every exports[].mesh must name a mesh")


def _controller_refuses(edit: Any, words: str) -> None:
    """Rules that do not fit the API server's CEL budget: the CRD lets the object in, and the
    controller refuses it with the same checks as ``meshfed validate`` (into its status)."""
    doc = copy.deepcopy(_doc())
    edit(doc)
    assert _problems(doc) == []
    with pytest.raises(SpecError) as caught:
        parse_federation(doc)
    assert any(
        words in line and line.startswith("federation/bank: spec.") for line in caught.value.lines
    ), caught.value.lines


def test_cross_references_are_checked_by_the_controller() -> None:
    def self_consumer(doc: dict[str, Any]) -> None:
        doc["spec"]["exports"][0]["consumers"][0]["mesh"] = "payments"

    _controller_refuses(self_consumer, "cannot be a consumer of its own export")

    def no_consumer_entry(doc: dict[str, Any]) -> None:
        doc["spec"]["exports"][1]["consumers"][0]["mesh"] = "payments"

    _controller_refuses(no_consumer_entry, "does not list mesh 'web' as a consumer")

    def unknown_workload(doc: dict[str, Any]) -> None:
        doc["spec"]["exports"][0]["workload"] = "cards/nothing"

    _controller_refuses(unknown_workload, "has no workload 'cards/nothing'")


def test_discovered_workloads_accepted() -> None:
    def edit(doc: dict[str, Any]) -> None:
        del doc["spec"]["meshes"][0]["workloads"]

    assert _broken(edit) == []


def test_mesh_rules() -> None:
    def cluster_local(doc: dict[str, Any]) -> None:
        doc["spec"]["meshes"][2]["trustDomain"] = "cluster.local"

    _one(_broken(cluster_local), "spec.meshes[2].trustDomain", "cluster.local")

    def two_primaries(doc: dict[str, Any]) -> None:
        mesh = doc["spec"]["meshes"][2]
        del mesh["kubernetes"]
        mesh["clusters"] = [
            {"name": "a", "context": "a", "role": "primary"},
            {"name": "b", "context": "b", "role": "primary"},
        ]

    _one(_broken(two_primaries), "spec.meshes[2].clusters", "exactly one cluster")

    def both(doc: dict[str, Any]) -> None:
        doc["spec"]["meshes"][2]["clusters"] = [{"name": "a", "context": "a", "role": "primary"}]

    _one(_broken(both), "spec.meshes[2].clusters", "not both")


def test_consumer_rules() -> None:
    def lower(doc: dict[str, Any]) -> None:
        doc["spec"]["exports"][0]["consumers"][0]["methods"] = ["post"]

    _one(_broken(lower), "spec.exports[0].consumers[0].methods[0]", "enum")

    def query(doc: dict[str, Any]) -> None:
        doc["spec"]["exports"][0]["consumers"][0]["paths"] = ["/v1/tokenize?x=1"]

    _one(_broken(query), "spec.exports[0].consumers[0].paths[0]", "does not match")

    def local_host(doc: dict[str, Any]) -> None:
        doc["spec"]["exports"][0]["host"] = "tokenizer.cards.svc.cluster.local"

    _one(_broken(local_host), "spec.exports[0].host", "mesh-internal")


def test_name_must_be_a_label() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["metadata"]["name"] = "bank.example"

    _one(_broken(edit), "metadata.name", "DNS-1123 label")


def test_type_rules_from_the_model() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["spec"]["meshes"][0]["ingress"]["port"] = 70000

    _one(_broken(edit), "spec.meshes[0].ingress.port", "maximum")
