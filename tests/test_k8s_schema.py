"""Tests for the offline apiserver-like validator in tests/k8s_schema.py."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

import istio_registry
import k8s_schema
from conftest import Rendered
from k8s_schema import (
    ALLOWED_SKIPPED_CEL_RULES,
    SKIPPED_CEL_RULES,
    all_cel_rules,
    bundle_present,
    parse_go_duration,
    validate_all,
    validate_kustomization,
    validate_manifest,
)

FIXTURES = Path(__file__).parent / "fixtures" / "schema"

needs_bundle = pytest.mark.skipif(
    not bundle_present(),
    reason="CEL rules are only in ../shared/istio/crd-all.gen.yaml, which is not beside this "
    "checkout (no registry package carries them); the registry's schemas are checked without it",
)


@pytest.fixture
def registry_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validate as a user's clone does: no bundle beside the checkout, the registry's schemas."""
    monkeypatch.setattr(k8s_schema, "CRD_PATH", Path("/nonexistent/crd-all.gen.yaml"))


@functools.lru_cache(maxsize=1)
def _valid_docs() -> tuple[dict[str, Any], ...]:
    with (FIXTURES / "valid.yaml").open(encoding="utf-8") as fh:
        return tuple(doc for doc in yaml.safe_load_all(fh) if doc)


def valid(kind: str) -> dict[str, Any]:
    """A deep copy of the valid fixture of that kind."""
    for doc in _valid_docs():
        if doc["kind"] == kind:
            return copy.deepcopy(doc)
    raise KeyError(kind)


def assert_one_error(obj: dict[str, Any], *fragments: str) -> str:
    errors = validate_manifest(obj)
    assert len(errors) == 1, errors
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------------------- valid


@pytest.mark.parametrize(
    "kind",
    [
        "Gateway",
        "AuthorizationPolicy",
        "DestinationRule",
        "ServiceEntry",
        "Telemetry",
        "PeerAuthentication",
        "VirtualService",
        "Service",
        "Deployment",
        "Namespace",
        "ServiceAccount",
        "Role",
        "Secret",
    ],
)
def test_valid_fixture_passes(kind: str) -> None:
    assert validate_manifest(valid(kind)) == []


def test_validate_all_on_fixture_file() -> None:
    assert validate_all(_valid_docs()) == []


def test_fixture_covers_required_features() -> None:
    gateway = valid("Gateway")
    assert gateway["apiVersion"] == "networking.istio.io/v1"
    assert gateway["spec"]["servers"][0]["tls"]["mode"] == "MUTUAL"
    lb = valid("DestinationRule")["spec"]["trafficPolicy"]
    assert (
        "outlierDetection" in lb and "failoverPriority" in lb["loadBalancer"]["localityLbSetting"]
    )
    vs = valid("VirtualService")["spec"]
    assert vs["http"] and vs["tls"]


# ---------------------------------------------------------------------------- unknown fields


def test_unknown_field_in_istio_spec() -> None:
    gateway = valid("Gateway")
    gateway["spec"]["servers"][0]["tls"]["cipher"] = "AES"  # typo: cipherSuites
    assert_one_error(
        gateway, "Gateway/east-west: spec.servers[0].tls.cipher:", 'unknown field "cipher"'
    )


def test_unknown_top_level_field_in_istio_object() -> None:
    policy = valid("PeerAuthentication")
    policy["specs"] = policy.pop("spec")
    assert_one_error(policy, "PeerAuthentication/default: specs:", "unknown field")


def test_unknown_field_in_service() -> None:
    service = valid("Service")
    service["spec"]["ports"][0]["targetport"] = 9080
    assert_one_error(service, "Service/reviews: spec.ports[0]", "targetport")


def test_unknown_metadata_field() -> None:
    gateway = valid("Gateway")
    gateway["metadata"]["label"] = {"a": "b"}
    assert_one_error(gateway, "Gateway/east-west: metadata", "label")


def test_null_in_non_nullable_field_is_pruned() -> None:
    dr = valid("DestinationRule")
    dr["spec"]["trafficPolicy"]["portLevelSettings"] = None
    assert validate_manifest(dr) == []


def test_status_is_ignored_on_create() -> None:
    policy = valid("PeerAuthentication")
    policy["status"] = {"observedGeneration": 3}
    assert validate_manifest(policy) == []


# ---------------------------------------------------------------------------- versions / kinds


@pytest.mark.parametrize(
    ("api_version", "kind", "fragment"),
    [
        ("security.istio.io/v1beta1", "MeshPolicy", 'no matches for kind "MeshPolicy"'),
        ("rbac.istio.io/v1alpha1", "ServiceRole", 'no matches for kind "ServiceRole"'),
        ("authentication.istio.io/v1alpha1", "Policy", 'no matches for kind "Policy"'),
        ("security.istio.io/v1alpha1", "PeerAuthentication", "served versions: v1, v1beta1"),
        ("networking.istio.io/v2", "Gateway", "is not defined"),
        ("example.com/v1", "Widget", 'no matches for kind "Widget"'),
    ],
)
def test_unserved_or_removed_api(api_version: str, kind: str, fragment: str) -> None:
    obj = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": {}}
    assert_one_error(obj, f"{kind}/x: ", fragment)


def test_older_served_istio_version_is_accepted() -> None:
    gateway = valid("Gateway")
    gateway["apiVersion"] = "networking.istio.io/v1beta1"
    assert validate_manifest(gateway) == []


# ---------------------------------------------------------------------------- CEL rules


@needs_bundle
def test_cel_duration_rule() -> None:
    dr = valid("DestinationRule")
    dr["spec"]["trafficPolicy"]["outlierDetection"]["interval"] = "10"  # no unit
    assert_one_error(
        dr,
        "spec.trafficPolicy.outlierDetection.interval",
        "must be a valid duration greater than 1ms",
    )


@needs_bundle
def test_cel_duration_rule_below_minimum() -> None:
    vs = valid("VirtualService")
    vs["spec"]["http"][0]["timeout"] = "500us"
    assert_one_error(vs, "spec.http[0].timeout", "must be a valid duration greater than 1ms")


@needs_bundle
def test_cel_authorization_policy_selector_vs_target_ref() -> None:
    policy = valid("AuthorizationPolicy")
    policy["spec"]["targetRef"] = {
        "kind": "Gateway",
        "group": "gateway.networking.k8s.io",
        "name": "gw",
    }
    assert_one_error(
        policy, "AuthorizationPolicy/allow-mesh-b: spec:", "only one of targetRefs or selector"
    )


@needs_bundle
def test_cel_peer_authentication_port_level_mtls_requires_selector() -> None:
    policy = valid("PeerAuthentication")
    policy["spec"]["portLevelMtls"] = {"8080": {"mode": "DISABLE"}}
    assert_one_error(policy, "spec:", "portLevelMtls requires selector")


@needs_bundle
def test_cel_gateway_credential_name_exclusive() -> None:
    gateway = valid("Gateway")
    gateway["spec"]["servers"][0]["tls"]["credentialNames"] = ["a", "b"]
    assert_one_error(
        gateway, "spec.servers[0].tls:", "only one of credentialName or credentialNames"
    )


@needs_bundle
def test_cel_wildcard_in_label_selector() -> None:
    policy = valid("AuthorizationPolicy")
    policy["spec"]["selector"]["matchLabels"] = {"app*": "reviews"}
    errors = validate_manifest(policy)
    assert any("wildcard not allowed in label key match" in e for e in errors), errors


@needs_bundle
def test_cel_service_entry_port_rules() -> None:
    se = valid("ServiceEntry")
    se["spec"]["endpoints"][0]["ports"] = {"http": 70000}
    assert_one_error(se, "spec.endpoints[0].ports", "port must be between 1-65535")


@needs_bundle
def test_cel_service_entry_resolution_none_with_endpoints() -> None:
    se = valid("ServiceEntry")
    se["spec"]["resolution"] = "NONE"
    assert_one_error(se, "ServiceEntry/mesh-b-reviews: spec:", "NONE mode cannot set endpoints")


@needs_bundle
def test_no_cel_rule_is_skipped_unexpectedly() -> None:
    rules = all_cel_rules()  # loads the CRDs, which fills SKIPPED_CEL_RULES
    assert len(rules) > 30
    assert set(SKIPPED_CEL_RULES) == set(ALLOWED_SKIPPED_CEL_RULES), SKIPPED_CEL_RULES


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("0", 0),
        ("1ms", 10**6),
        ("1.5s", 1_500_000_000),
        ("1h2m", 3_720_000_000_000),
        ("-2us", -2000),
    ],
)
def test_go_duration(text: str, nanos: int) -> None:
    assert parse_go_duration(text) == nanos


@pytest.mark.parametrize("text", ["", "1", "1d", "s", "1.s5", " 1s"])
def test_go_duration_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


# ---------------------------------------------------------------------------- required / enum


def test_missing_required_istio_field() -> None:
    gateway = valid("Gateway")
    del gateway["spec"]["servers"][0]["port"]["protocol"]
    assert_one_error(gateway, "spec.servers[0].port:", "'protocol' is a required property")


def test_missing_required_builtin_field() -> None:
    service = valid("Service")
    del service["spec"]["ports"][0]["port"]
    assert_one_error(service, "spec.ports[0]", "'port' is a required property")


def test_missing_name() -> None:
    policy = valid("PeerAuthentication")
    del policy["metadata"]["name"]
    assert_one_error(policy, "metadata.name", "Required value")


def test_wrong_enum_istio() -> None:
    policy = valid("PeerAuthentication")
    policy["spec"]["mtls"]["mode"] = "STRICTER"
    assert_one_error(policy, "spec.mtls.mode", "'STRICTER' is not one of")


def test_wrong_type_builtin() -> None:
    deployment = valid("Deployment")
    deployment["spec"]["replicas"] = "two"
    errors = validate_manifest(deployment)
    assert errors and all("spec.replicas" in e for e in errors), errors


def test_int32_format_range() -> None:
    dr = valid("DestinationRule")
    dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["maxConnections"] = 2**31
    assert_one_error(dr, "maxConnections", "int32")


# ---------------------------------------------------------------------------- metadata / apiserver


@pytest.mark.parametrize(
    ("kind", "name"),
    [("Gateway", "East_West"), ("Service", "9reviews"), ("Namespace", "book.info")],
)
def test_invalid_names(kind: str, name: str) -> None:
    obj = valid(kind)
    obj["metadata"]["name"] = name
    assert_one_error(obj, f"{kind}/{name}: metadata.name: Invalid value")


def test_invalid_label_value() -> None:
    service = valid("Service")
    service["metadata"]["labels"]["app"] = "reviews!"
    assert_one_error(service, "metadata.labels['app']", "label value")


def test_deployment_selector_must_match_template() -> None:
    deployment = valid("Deployment")
    deployment["spec"]["template"]["metadata"]["labels"]["version"] = "v2"
    assert_one_error(deployment, "does not match template labels")


def test_validate_all_detects_duplicates() -> None:
    errors = validate_all([valid("Gateway"), valid("Gateway")])
    assert len(errors) == 1 and "AlreadyExists" in errors[0], errors


def test_error_format() -> None:
    policy = valid("PeerAuthentication")
    policy["spec"]["mtls"]["mode"] = "X"
    kind_name, path, problem = validate_manifest(policy)[0].split(": ", 2)
    assert (kind_name, path) == ("PeerAuthentication/default", "spec.mtls.mode")
    assert problem


# ---------------------------------------------------------------------------- kustomize


def test_kustomization_resources_exist() -> None:
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["gateway.yaml", "./base", "missing.yaml"],
    }
    files = {"gateway.yaml", "base/kustomization.yaml", "kustomization.yaml"}
    errors = validate_kustomization(kustomization, files)
    assert len(errors) == 1 and "resources[2]" in errors[0] and "missing.yaml" in errors[0], errors
    del kustomization["resources"][2]
    assert validate_kustomization(kustomization, files) == []


def test_kustomization_unknown_field() -> None:
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resource": ["a.yaml"],
    }
    errors = validate_kustomization(kustomization, {"a.yaml"})
    assert len(errors) == 1 and 'unknown field "resource"' in errors[0], errors


# ---------------------------------------------------------------------------- registry schemas


def test_registry_package_is_pinned_and_built_from_istio_crds() -> None:
    assert istio_registry.package_label().startswith(f"{istio_registry.PACKAGE} 3.0.1 ")
    release = istio_registry.istio_release()
    assert tuple(int(x) for x in release.split(".")[:2]) >= (1, 25), release
    assert {"Gateway", "VirtualService", "DestinationRule", "ServiceEntry"} <= set(
        istio_registry.kinds("networking.istio.io")
    )


@pytest.mark.parametrize("kind", ["Gateway", "AuthorizationPolicy", "DestinationRule", "Telemetry"])
def test_registry_alone_accepts_valid_fixture(kind: str, registry_only: None) -> None:
    assert validate_manifest(valid(kind)) == []


def test_registry_alone_rejects_unknown_fields(registry_only: None) -> None:
    gateway = valid("Gateway")
    gateway["spec"]["servers"][0]["tls"]["cipher"] = "AES"
    assert_one_error(
        gateway, "Gateway/east-west: spec.servers[0].tls.cipher:", 'unknown field "cipher"'
    )
    policy = valid("AuthorizationPolicy")
    policy["spec"]["rules"][0]["from"][0]["source"]["principal"] = ["x"]  # principals
    assert_one_error(policy, "source.principal:", "unknown field")
    policy = valid("PeerAuthentication")
    policy["specs"] = policy.pop("spec")
    assert_one_error(policy, "PeerAuthentication/default: specs:", "unknown field")


def test_registry_alone_checks_types_enums_required_formats(registry_only: None) -> None:
    policy = valid("PeerAuthentication")
    policy["spec"]["mtls"]["mode"] = "STRICTER"
    assert_one_error(policy, "spec.mtls.mode", "'STRICTER' is not one of")
    gateway = valid("Gateway")
    del gateway["spec"]["servers"][0]["port"]["protocol"]
    assert_one_error(gateway, "spec.servers[0].port:", "'protocol' is a required property")
    gateway = valid("Gateway")
    gateway["spec"]["servers"][0]["port"]["number"] = "443"
    assert_one_error(gateway, "spec.servers[0].port.number:", "is not of type 'integer'")
    gateway = valid("Gateway")
    gateway["metadata"]["label"] = {"a": "b"}
    assert_one_error(gateway, "Gateway/east-west: metadata", "label")


def test_registry_alone_knows_kinds_and_versions(registry_only: None) -> None:
    obj = {"apiVersion": "networking.istio.io/v2", "kind": "Gateway", "metadata": {"name": "x"}}
    assert_one_error(obj, "apiVersion", "served versions: v1, v1alpha3, v1beta1")
    obj = {"apiVersion": "rbac.istio.io/v1alpha1", "kind": "ServiceRole", "metadata": {"name": "x"}}
    assert_one_error(obj, 'no matches for kind "ServiceRole"')


@pytest.mark.parametrize("example", ["bank_rendered", "partners_rendered"])
def test_registry_alone_accepts_every_rendered_object(
    example: str, request: pytest.FixtureRequest, registry_only: None
) -> None:
    rendered: Rendered = request.getfixturevalue(example)
    for mesh in rendered.meshes:
        objects = [d for d in rendered.docs(mesh) if d["kind"] != "Kustomization"]
        istio = [d for d in objects if "istio.io" in d["apiVersion"]]
        assert istio
        assert validate_all(objects) == []


@pytest.mark.skipif(not bundle_present(), reason="compares the registry with the bundle")
def test_registry_problem_the_bundle_misses_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def strict(*args: Any) -> Any:
        yield ("spec", "selector"), "made-up registry problem"

    monkeypatch.setattr(k8s_schema, "registry_errors", strict)
    errors = validate_manifest(valid("Gateway"))
    assert errors == [
        "Gateway/east-west: spec.selector: made-up registry problem "
        f"(by {istio_registry.package_label()}; the bundle accepts it)"
    ]
