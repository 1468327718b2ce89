"""import-subsets-shadowed: istiod's DestinationRule lookup (audit/dr_lookup.py) and the check on
meshfed's own rendered examples, with the rules a user might add to a caller's namespace."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshfed.audit import audit_manifests
from meshfed.audit.dr_lookup import (
    covers,
    effective_entry,
    in_proxy_pool,
    most_specific,
    resolve_host,
)
from meshfed.audit.model import Finding, Severity
from meshfed.audit.sources.manifests import Doc

from conftest import Rendered

EGRESS = "federation-egress.meshfed-system.svc.cluster.local"
CHECK = "import-subsets-shadowed"


def doc(
    host: str,
    namespace: str = "shop",
    name: str = "user",
    *,
    export_to: list[str] | None = None,
    selector: dict[str, str] | None = None,
    subsets: list[dict[str, Any]] | None = None,
    created: str | None = None,
) -> Doc:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    spec: dict[str, Any] = {"host": host}
    if export_to is not None:
        spec["exportTo"] = export_to
    if selector:
        spec["workloadSelector"] = {"matchLabels": selector}
    if subsets:
        spec["subsets"] = subsets
    obj = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": meta}
    return Doc({**obj, "spec": spec}, "x.yaml", 1, ".")


# --- Istio's host semantics ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "namespace", "resolved"),
    [
        ("federation-egress", "shop", "federation-egress.shop.svc.cluster.local"),
        ("federation-egress", "meshfed-system", EGRESS),
        ("federation-egress.meshfed-system", "shop", "federation-egress.meshfed-system"),
        ("*", "shop", "*"),
        ("*.local", "shop", "*.local"),
        ("10.0.0.1", "shop", "10.0.0.1"),
        ("fd00::1", "shop", "fd00::1"),
    ],
)
def test_short_names_resolve_in_the_rules_namespace(
    host: str, namespace: str, resolved: str
) -> None:
    assert resolve_host(host, namespace) == resolved


@pytest.mark.parametrize(
    ("rule_host", "matches"),
    [
        (EGRESS, True),
        ("*", True),
        ("*.local", True),
        ("*.cluster.local", True),
        ("*.svc.cluster.local", True),
        ("*.meshfed-system.svc.cluster.local", True),
        ("*-egress.meshfed-system.svc.cluster.local", True),  # a wildcard label: plain suffix
        ("*.shop.svc.cluster.local", False),
        ("*.global", False),
        ("federation-egress.meshfed-system", False),
        ("other.meshfed-system.svc.cluster.local", False),
    ],
)
def test_rule_hosts_covering_the_egress_gateway(rule_host: str, matches: bool) -> None:
    assert covers(rule_host, EGRESS) is matches


def test_the_most_specific_host_wins_within_a_namespace() -> None:
    assert most_specific({"*", "*.local", EGRESS}, EGRESS) == EGRESS
    assert most_specific({"*", "*.local", "*.svc.cluster.local"}, EGRESS) == "*.svc.cluster.local"
    assert most_specific({"*.shop.svc.cluster.local"}, EGRESS) is None


labels = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


@given(st.lists(labels, min_size=1, max_size=5), st.integers(min_value=0, max_value=5))
def test_a_wildcard_over_any_suffix_of_labels_covers_the_host(parts: list[str], keep: int) -> None:
    service = ".".join(parts)
    suffix = ".".join(parts[len(parts) - min(keep, len(parts)) :])
    wildcard = f"*.{suffix}" if suffix else "*"
    if suffix == service:
        return  # '*.<the host>' needs one more label than the host has
    assert covers(wildcard, service)
    assert most_specific({wildcard, "*"}, service) == wildcard


@pytest.mark.parametrize(
    ("export_to", "selector", "local"),
    [
        (None, None, True),
        (["*"], None, True),
        (["."], None, True),
        (["shop"], None, True),
        ([".", "web"], None, True),
        (["web"], None, False),  # exported only elsewhere: not for its own namespace
        (["web"], {"app": "x"}, True),  # a selector makes it private, whatever exportTo says
    ],
)
def test_which_rules_a_namespaces_own_sidecars_consult_first(
    export_to: list[str] | None, selector: dict[str, str] | None, local: bool
) -> None:
    dr = doc("*.local", export_to=export_to, selector=selector)
    assert in_proxy_pool(dr, "istio-system", default_private=False) is local


def test_root_namespace_sidecars_consult_only_its_private_rules_first() -> None:
    def pool(export_to: list[str] | None, default_private: bool = False) -> bool:
        dr = doc("*.local", "istio-system", export_to=export_to)
        return in_proxy_pool(dr, "istio-system", default_private)

    assert pool(["."]) and pool(["istio-system"])
    assert not pool(None) and not pool(["*"]) and not pool([".", "web"])
    assert pool(None, default_private=True)


def test_same_host_rules_merge_subsets_only_with_equal_export_to() -> None:
    a = doc(EGRESS, name="a", export_to=["."], subsets=[{"name": "x", "labels": {"v": "1"}}])
    b = doc(EGRESS, name="b", export_to=["."], subsets=[{"name": "x"}, {"name": "y"}])
    entry = effective_entry([b, a])
    assert entry is not None and set(entry.subsets) == {"x", "y"}
    assert entry.subsets["x"] == {"name": "x", "labels": {"v": "1"}}  # the first rule's (by name)
    c = doc(EGRESS, name="c", export_to=["*"], subsets=[{"name": "z"}])
    entry = effective_entry([a, c])  # not equal, not a superset of {"."}: separate, last wins
    assert entry is not None and set(entry.subsets) == {"z"}
    only_selected = doc(EGRESS, selector={"app": "x"}, subsets=[{"name": "x"}])
    assert effective_entry([only_selected]) is None


# --- the check on meshfed's output --------------------------------------------------------------


@pytest.fixture(params=["bank_rendered", "partners_rendered"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    value: Rendered = request.getfixturevalue(request.param)
    return value


def _importer(r: Rendered) -> tuple[str, str]:
    """An importing mesh and a namespace of its callers (from the plan)."""
    for mesh in r.workspace.plan.meshes:
        if mesh.imports:
            route = mesh.imports[0]
            source = route.sources[0]
            server = r.workspace.plan.ingress_of(source.mesh).server(route.wire_host)
            assert server is not None
            rule = next(a for a in server.allow if a.consumer_mesh == mesh.name)
            namespace = rule.principals[0].value.split("/ns/")[1].split("/")[0]
            return mesh.name, namespace
    raise AssertionError("no import")


def _audit(r: Rendered, tmp: Path, mesh: str, *rules: dict[str, Any]) -> list[Finding]:
    tree = tmp / "tree"
    shutil.copytree(r.out, tree)
    (tree / mesh / "zz-user.yaml").write_text(yaml.safe_dump_all(list(rules)))
    report = audit_manifests(tree)
    result = next(x for x in report.results if x.info.id == CHECK)
    assert result.status == ("fail" if result.findings else "pass"), result.note
    return list(result.findings)


def rule(host: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "user-rule", "namespace": namespace},
        "spec": {"host": host, **spec},
    }


def test_examples_pass_and_are_assessed(rendered: Rendered, tmp_path: Path) -> None:
    mesh, _ = _importer(rendered)
    assert _audit(rendered, tmp_path, mesh) == []


@pytest.mark.parametrize(
    ("host", "spec"),
    [
        ("*.local", {}),
        ("*", {"exportTo": ["."]}),
        ("*.svc.cluster.local", {"exportTo": ["*"]}),
        ("*.meshfed-system.svc.cluster.local", {}),
        (EGRESS, {"exportTo": ["."], "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    ],
)
def test_a_callers_namespace_rule_covering_the_egress_fails_its_imports(
    rendered: Rendered, tmp_path: Path, host: str, spec: dict[str, Any]
) -> None:
    mesh, ns = _importer(rendered)
    (finding,) = _audit(rendered, tmp_path, mesh, rule(host, ns, **spec))
    assert finding.severity == Severity.HIGH
    assert (finding.location.namespace, finding.location.name) == (ns, "user-rule")
    assert f"every sidecar of namespace {ns}" in finding.message
    assert "federation-egress-imports" in finding.message and "lacks subset" in finding.message
    fix = finding.fix or ""
    assert ("Narrow host" in fix) is host.startswith("*")


@pytest.mark.parametrize(
    ("host", "namespace", "spec"),
    [
        ("federation-egress", "{ns}", {}),  # a short name: a Service of the rule's namespace
        ("federation-egress.meshfed-system", "{ns}", {}),  # taken as written, not expanded
        ("*.{ns}.svc.cluster.local", "{ns}", {}),
        ("*.local", "{ns}", {"exportTo": ["some-other-namespace"]}),
        ("*.local", "istio-system", {}),  # root, exported: after the service's namespace
    ],
)
def test_rules_that_do_not_reach_the_callers_egress_lookup(
    rendered: Rendered, tmp_path: Path, host: str, namespace: str, spec: dict[str, Any]
) -> None:
    mesh, ns = _importer(rendered)
    user = rule(host.format(ns=ns), namespace.format(ns=ns), **spec)
    assert _audit(rendered, tmp_path, mesh, user) == []


def test_an_exact_rule_carrying_the_subsets_protects_the_namespace(
    rendered: Rendered, tmp_path: Path
) -> None:
    mesh, ns = _importer(rendered)
    (ours,) = [
        d
        for d in rendered.docs(mesh, "DestinationRule")
        if d["metadata"]["name"] == "federation-egress-imports"
    ]
    copy = rule(EGRESS, ns, exportTo=["."], subsets=ours["spec"]["subsets"])
    copy["metadata"]["name"] = "egress-copy"
    assert _audit(rendered, tmp_path, mesh, rule("*.local", ns), copy) == []
    stale = rule(EGRESS, ns, exportTo=["."], subsets=ours["spec"]["subsets"][:-1])
    (finding,) = _audit(rendered, tmp_path / "stale", mesh, stale)
    assert finding.severity == Severity.HIGH and "lacks subset" in finding.message


def test_a_selector_rule_hides_the_subsets_from_its_whole_namespace(
    rendered: Rendered, tmp_path: Path
) -> None:
    mesh, ns = _importer(rendered)
    user = rule("*.local", ns, workloadSelector={"matchLabels": {"app": "batch"}})
    (finding,) = _audit(rendered, tmp_path, mesh, user)
    assert "get no DestinationRule for it at all" in finding.message


def test_a_namespace_without_authorised_callers_is_latent(
    rendered: Rendered, tmp_path: Path
) -> None:
    mesh, _ = _importer(rendered)
    (finding,) = _audit(rendered, tmp_path, mesh, rule("*.local", "batch-jobs"))
    assert finding.severity == Severity.LOW
    assert "no workload of batch-jobs is authorised" in finding.message
