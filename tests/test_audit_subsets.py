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
    catch_all,
    consolidate,
    covers,
    effective_entry,
    in_proxy_pool,
    most_specific,
    resolve_host,
)
from meshfed.audit.model import Finding, Severity
from meshfed.audit.sources.manifests import Doc
from meshfed.render.istio.imports import COPY_LABEL

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


def _without_copies(tree: Path) -> None:
    """The tree as meshfed rendered it before it made caller-side copies."""
    for path in tree.rglob("imports.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        kept = [d for d in docs if COPY_LABEL not in d["metadata"].get("labels", {})]
        path.write_text(yaml.safe_dump_all(kept))


def _audit(
    r: Rendered, tmp: Path, mesh: str, *rules: dict[str, Any], copies: bool = True
) -> list[Finding]:
    tree = tmp / "tree"
    shutil.copytree(r.out, tree)
    if not copies:
        _without_copies(tree)
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


def _original(r: Rendered, mesh: str) -> dict[str, Any]:
    (ours,) = [
        d
        for d in r.docs(mesh, "DestinationRule")
        if d["metadata"]["name"] == "federation-egress-imports"
        and d["metadata"]["namespace"] == "meshfed-system"
    ]
    return ours


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
def test_without_meshfeds_copy_a_callers_namespace_rule_fails_its_imports(
    rendered: Rendered, tmp_path: Path, host: str, spec: dict[str, Any]
) -> None:
    """Manifests rendered before meshfed made caller-side copies (or the copy not applied)."""
    mesh, ns = _importer(rendered)
    (finding,) = _audit(rendered, tmp_path, mesh, rule(host, ns, **spec), copies=False)
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
    ours = _original(rendered, mesh)
    copy = rule(EGRESS, ns, exportTo=["."], subsets=ours["spec"]["subsets"])
    copy["metadata"]["name"] = "egress-copy"
    assert _audit(rendered, tmp_path, mesh, rule("*.local", ns), copy, copies=False) == []
    stale = rule(EGRESS, ns, exportTo=["."], subsets=ours["spec"]["subsets"][:-1])
    (finding,) = _audit(rendered, tmp_path / "stale", mesh, stale, copies=False)
    assert finding.severity == Severity.HIGH and "lacks subset" in finding.message


def test_a_selector_rule_hides_the_subsets_from_its_whole_namespace(
    rendered: Rendered, tmp_path: Path
) -> None:
    mesh, ns = _importer(rendered)
    user = rule("*.local", ns, workloadSelector={"matchLabels": {"app": "batch"}})
    (finding,) = _audit(rendered, tmp_path, mesh, user, copies=False)
    assert "get no DestinationRule for it at all" in finding.message


def test_a_namespace_without_authorised_callers_is_latent(
    rendered: Rendered, tmp_path: Path
) -> None:
    mesh, _ = _importer(rendered)
    (finding,) = _audit(rendered, tmp_path, mesh, rule("*.local", "batch-jobs"))
    assert finding.severity == Severity.LOW  # no copy there: no caller the plan knows
    assert "no workload of batch-jobs is authorised" in finding.message


# --- istiod's merge of one namespace's rules for one host ---------------------------------------


def test_a_later_rule_strictly_exporting_more_is_merged() -> None:
    """mergeDestinationRule (1.25.5): a later rule whose exportTo strictly contains an earlier
    one's sets appendSeparately, but two rules without selectors then reset it: merged only
    (the comment's "and also append as a standalone one" holds only across selectors)."""
    a = doc(EGRESS, name="a", export_to=["."], subsets=[{"name": "x"}], created="2026-01-01")
    b = doc(EGRESS, name="b", export_to=[".", "web"], subsets=[{"name": "y"}], created="2026-02")
    (entry,) = consolidate([a, b])
    assert set(entry.subsets) == {"x", "y"} and [r.name for r in entry.rules] == ["a", "b"]
    # the other way round (b older): a's exportTo is no superset of b's, so each stands alone
    b_old = doc(EGRESS, name="b", export_to=[".", "web"], subsets=[{"name": "y"}], created="2025")
    entries = consolidate([a, b_old])
    assert [set(e.subsets) for e in entries] == [{"y"}, {"x"}]
    assert catch_all(entries) is entries[1]  # the last one without a selector


def test_a_plain_rule_with_the_exportTo_of_a_selector_rule_is_taken_into_it() -> None:
    """mergeDestinationRule: equal exportTo (a selector makes a rule's ["."]), one with a
    selector and one without: merged, and the later one has no entry of its own."""
    selected = doc(EGRESS, name="z", selector={"app": "x"}, subsets=[{"name": "s"}])
    plain = doc(EGRESS, name="a", export_to=["."], subsets=[{"name": "p"}])
    (entry,) = consolidate([plain, selected])  # selector rules come first, whatever the name
    assert entry.selected and [r.name for r in entry.rules] == ["z", "a"]
    assert set(entry.subsets) == {"s", "p"}
    assert catch_all([entry]) is None  # the sidecars it does not select get no rule at all
    other = doc(EGRESS, name="a", export_to=["*"], subsets=[{"name": "p"}])
    entries = consolidate([other, selected])  # another exportTo: stands alone, catches all
    assert [r.name for e in entries for r in e.rules] == ["z", "a"]
    assert catch_all(entries) is entries[1]
    again = doc(EGRESS, name="y", selector={"app": "y"}, subsets=[{"name": "q"}])
    assert len(consolidate([selected, again])) == 2  # selectors that differ never merge


# --- meshfed's caller-side copy -----------------------------------------------------------------


def chosen(docs: list[Doc], proxy_ns: str, host: str = EGRESS) -> list[Doc] | None:
    """The rules istiod gives a sidecar of ``proxy_ns`` that no selector picks, for ``host``
    (a service of meshfed-system; root namespace istio-system): the emulation of
    push_context.go ``destinationRule`` over every rule of the tree."""
    rules = [d for d in docs if d.kind == "DestinationRule"]
    for ns, pool in (
        (proxy_ns, lambda d: in_proxy_pool(d, "istio-system", False)),
        ("meshfed-system", lambda d: "." not in (d.spec.get("exportTo") or ["*"])),
        ("istio-system", lambda d: "." not in (d.spec.get("exportTo") or ["*"])),
    ):
        mine = [d for d in rules if d.namespace == ns and pool(d)]
        hosts = [resolve_host(str(d.spec.get("host")), ns) for d in mine]
        win = most_specific(set(hosts), host)
        if win is not None:
            group = [d for d, h in zip(mine, hosts, strict=True) if h == win]
            entry = catch_all(consolidate(group))
            return None if entry is None else entry.rules
    return None


def _tree_docs(r: Rendered, mesh: str, *user: dict[str, Any]) -> list[Doc]:
    docs = [Doc(d, "rendered", 1, ".") for d in r.docs(mesh) if "spec" in d]
    return docs + [Doc(u, "user", 1, ".") for u in user]


@pytest.mark.parametrize("host", ["*.local", "*", "*.svc.cluster.local", "*.cluster.local"])
def test_in_every_caller_namespace_istiod_picks_meshfeds_copy_over_a_wildcard(
    rendered: Rendered, tmp_path: Path, host: str
) -> None:
    plan = rendered.workspace.plan
    for mesh in plan.meshes:
        for ns in mesh.caller_namespaces:
            docs = _tree_docs(rendered, mesh.name, rule(host, ns))
            picked = chosen(docs, ns)
            assert picked is not None and len(picked) == 1, ns
            (copy,) = picked
            assert (copy.namespace, copy.name) == (ns, "federation-egress-imports")
            assert copy.obj["metadata"]["labels"][COPY_LABEL]
            assert copy.spec["subsets"] == _original(rendered, mesh.name)["spec"]["subsets"]
            # a namespace the plan knows no caller in gets no copy: the user's rule is used
            picked = chosen(_tree_docs(rendered, mesh.name, rule(host, "batch-jobs")), "batch-jobs")
            assert picked is not None and [d.name for d in picked] == ["user-rule"]
            # and where no user rule is, meshfed-system's own
            picked = chosen(_tree_docs(rendered, mesh.name), "batch-jobs")
            assert picked is not None and [d.namespace for d in picked] == ["meshfed-system"]
    (importer, ns) = _importer(rendered)
    assert _audit(rendered, tmp_path, importer, rule(host, ns)) == []


def test_a_same_host_rule_with_the_copys_exportTo_is_merged_with_it(
    rendered: Rendered, tmp_path: Path
) -> None:
    mesh, ns = _importer(rendered)
    user = rule(EGRESS, ns, exportTo=["."], trafficPolicy={"loadBalancer": {"simple": "RANDOM"}})
    picked = chosen(_tree_docs(rendered, mesh, user), ns)
    assert picked is not None and {d.name for d in picked} == {
        "user-rule",
        "federation-egress-imports",
    }
    assert _audit(rendered, tmp_path, mesh, user) == []


@pytest.mark.parametrize(
    ("name", "user_created", "severity", "said"),
    [
        ("user-rule", None, Severity.HIGH, "is the DestinationRule istiod uses"),  # sorts last
        ("a-rule", None, Severity.HIGH, "if it is created after"),  # no times: either
        ("a-rule", "2026-12-06T10:00:00Z", Severity.HIGH, "is the DestinationRule istiod uses"),
        ("user-rule", "2026-12-06T08:00:00Z", Severity.MEDIUM, "becomes it when created again"),
    ],
)
def test_a_same_host_rule_with_another_exportTo_stands_apart_and_the_last_created_wins(
    rendered: Rendered,
    tmp_path: Path,
    name: str,
    user_created: str | None,
    severity: Severity,
    said: str,
) -> None:
    mesh, ns = _importer(rendered)
    user = rule(EGRESS, ns, exportTo=["*"])
    user["metadata"]["name"] = name
    tree = tmp_path / "tree"
    shutil.copytree(rendered.out, tree)
    if user_created:
        user["metadata"]["creationTimestamp"] = user_created
        for path in tree.rglob("imports.yaml"):
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
            for d in docs:
                d["metadata"]["creationTimestamp"] = "2026-12-06T09:00:00Z"
            path.write_text(yaml.safe_dump_all(docs))
    (tree / mesh / "zz-user.yaml").write_text(yaml.safe_dump(user))
    result = next(x for x in audit_manifests(tree).results if x.info.id == CHECK)
    (finding,) = result.findings
    assert finding.severity == severity
    assert (finding.location.namespace, finding.location.name) == (ns, name)
    assert said in finding.message
    assert f"meshfed's copy {ns}/federation-egress-imports is in this namespace" in finding.message
    assert "exportTo ['*'] vs the copy's ['.']" in finding.message
    assert "Set this rule's exportTo to ['.']" in (finding.fix or "")


def test_a_same_host_selector_rule_takes_the_copy_in(rendered: Rendered, tmp_path: Path) -> None:
    mesh, ns = _importer(rendered)
    user = rule(EGRESS, ns, workloadSelector={"matchLabels": {"app": "batch"}})
    assert chosen(_tree_docs(rendered, mesh, user), ns) is None
    (finding,) = _audit(rendered, tmp_path, mesh, user)
    assert finding.severity == Severity.HIGH
    assert "get no DestinationRule for it at all" in finding.message
    assert f"meshfed's copy {ns}/federation-egress-imports was merged into it" in finding.message
    assert "Remove this rule's workloadSelector" in (finding.fix or "")


def test_a_stale_copy_is_reported(rendered: Rendered, tmp_path: Path) -> None:
    """A copy applied from an older render (an import added since): its subsets are missing."""
    _, ns = _importer(rendered)
    tree = tmp_path / "tree"
    shutil.copytree(rendered.out, tree)
    for path in tree.rglob("imports.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for d in docs:
            if d["metadata"].get("labels", {}).get(COPY_LABEL) and d["metadata"]["namespace"] == ns:
                d["spec"]["subsets"] = d["spec"]["subsets"][:-1]
        path.write_text(yaml.safe_dump_all(docs))
    result = next(x for x in audit_manifests(tree).results if x.info.id == CHECK)
    (finding,) = result.findings
    assert (finding.location.namespace, finding.location.name) == (ns, "federation-egress-imports")
    assert "lacks subset" in finding.message


export_tos = st.sampled_from([None, ["."], ["*"], [".", "web"], ["shop"], ["web"]])
selectors = st.sampled_from([None, {"app": "a"}, {"app": "b"}])


@given(
    st.lists(
        st.tuples(export_tos, selectors, st.integers(min_value=0, max_value=3)),
        min_size=1,
        max_size=6,
    )
)
def test_consolidation_keeps_every_rule_and_istiods_order(
    specs: list[tuple[list[str] | None, dict[str, str] | None, int]],
) -> None:
    rules = [
        doc(EGRESS, name=f"r{i}", export_to=ex, selector=sel, created=f"2026-01-0{t + 1}",
            subsets=[{"name": f"s{i}"}, {"name": "shared", "labels": {"from": f"r{i}"}}])
        for i, (ex, sel, t) in enumerate(specs)
    ]  # fmt: skip
    entries = consolidate(rules)
    created = {r.name: r.obj["metadata"]["creationTimestamp"] for r in rules}
    order = sorted(
        rules, key=lambda d: (not d.spec.get("workloadSelector"), created[d.name], d.name)
    )
    # every rule is somewhere; each entry starts with a rule no earlier entry took in
    assert {r.name for e in entries for r in e.rules} == {r.name for r in rules}
    bases = [e.base.name for e in entries]
    assert bases == [r.name for r in order if r.name in bases]
    for e in entries:
        # its subsets: every rule's, by name, the first rule's ("shared") kept
        assert set(e.subsets) == {f"s{r.name[1:]}" for r in e.rules} | {"shared"}
        assert e.subsets["shared"]["labels"] == {"from": e.base.name}
        # rules of one entry: in istiod's order, each merged for an equal exportTo or a wider one
        assert [r.name for r in e.rules] == [r.name for r in order if r in e.rules]
    # two plain rules with equal exportTo end in one entry (the later one may also stand on its
    # own: istiod's appendSeparately is what the last entry compared left it)
    plain = [r for r in order if not r.spec.get("workloadSelector")]
    for i, a in enumerate(plain):
        for b in plain[i + 1 :]:
            if a.spec.get("exportTo") == b.spec.get("exportTo"):
                assert any(a in e.rules and b in e.rules for e in entries)
    found = catch_all(entries)
    assert (found is None) == all(e.selected for e in entries)
