"""meshfed's Kubernetes side without a cluster: spec and plan of clusters, what goes where,
pruning, field views, kubeconfig merging, and the dry-run-then-write order (on a fake cluster;
tests/test_kube_integration.py runs the same against real API servers)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.credentials import MeshCredentials
from meshfed.kube.apply import Rollout
from meshfed.kube.client import FIELD_MANAGER, Obj, Resource
from meshfed.kube.config import merged_kubeconfig, resolve_context
from meshfed.kube.discover import load_balancer_address, protocol_of, with_discovered
from meshfed.kube.errors import ApplyRefused, KubeError
from meshfed.kube.fields import owned_view, project, redact
from meshfed.kube.remote_secret import (
    TOKEN_PREFIX,
    istioctl_output,
    istioctl_secret,
    kubeconfig_text,
)
from meshfed.kube.state import spec_yaml, state_object
from meshfed.kube.targets import (
    ClusterTarget,
    TargetError,
    cluster_targets,
    order_rank,
    prune_set,
    server_form,
)
from meshfed.plan.model import ClusterPlan, FederationPlan
from meshfed.render.istio import RenderedMesh
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.spec.model import Federation
from meshfed.workspace import plan_of, render_istio

from k8s_schema import validate_all

CREDS = MeshCredentials(
    ca_cert="CA", ca_key="KEY", root_cert="ROOT", cert_chain="CHAIN",
    ingress_cert_chain="CERT", ingress_key="IKEY",
)  # fmt: skip

SPEC = """\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata: {name: unit}
spec:
  meshes:
    - name: payments
      trustDomain: payments.unit.example
      network: pci
      ingress: {address: 192.0.2.1}
      clusters:
        - {name: east, context: ctx-east, role: primary, discoveryAddress: 192.0.2.99}
        - {name: west, context: ctx-west, role: remote}
      workloads:
        - {name: tokenizer, namespace: cards, serviceAccount: tokenizer, port: 8080}
    - name: web
      trustDomain: web.unit.example
      ingress: {address: 192.0.2.2}
      kubernetes: {context: ctx-web}
      workloads:
        - {name: checkout, namespace: shop, serviceAccount: checkout, port: 8080}
  exports:
    - name: tokenizer
      mesh: payments
      workload: cards/tokenizer
      consumers:
        - {mesh: web, principals: [ns/shop/sa/checkout]}
  imports:
    - {mesh: web, host: tokenizer.shop.svc.cluster.local, from: [payments/tokenizer]}
"""


def fed_and_plan(text: str = SPEC) -> tuple[Federation, FederationPlan]:
    fed = parse_spec(text)
    return fed, plan_of(fed, {m.name: f"PEM {m.name}" for m in fed.spec.meshes})


def rendered(plan: FederationPlan) -> dict[str, RenderedMesh]:
    return {r.mesh: r for r in render_istio(plan, {m.name: CREDS for m in plan.meshes})}


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.lines


# -- spec and plan ------------------------------------------------------------------------


def test_clusters_need_exactly_one_primary_and_unique_names() -> None:
    two = SPEC.replace("role: remote}", "role: primary}")
    assert any("2 clusters have role primary" in p for p in problems(two))
    same = SPEC.replace("{name: west, context: ctx-west", "{name: east, context: ctx-east")
    found = problems(same)
    assert any("cluster name 'east' is already used" in p for p in found)
    assert any("context 'ctx-east' is already the cluster of" in p for p in found)
    both = SPEC.replace("      clusters:\n", "      kubernetes: {context: x}\n      clusters:\n")
    assert any("both kubernetes.context and clusters are set" in p for p in problems(both))
    remote_addr = SPEC.replace("role: remote}", "role: remote, discoveryAddress: 1.2.3.4}")
    assert any(
        "only the primary cluster has a discovery address" in p for p in problems(remote_addr)
    )
    shared = SPEC.replace("context: ctx-web", "context: ctx-west")
    assert any("context 'ctx-west' is already" in p for p in problems(shared))


def test_omitted_workloads_wait_for_discovery() -> None:
    omitted = SPEC.replace(
        "      workloads:\n        - {name: tokenizer, namespace: cards, serviceAccount: "
        "tokenizer, port: 8080}\n",
        "",
    )
    assert any("leaves its workloads to discovery" in p for p in problems(omitted))
    fed = parse_spec(omitted, discovery_pending=True)
    assert fed.mesh("payments").workloads_omitted
    assert not fed.mesh("web").workloads_omitted


def test_plan_orders_primary_first_and_names_the_shorthand_cluster() -> None:
    _, plan = fed_and_plan()
    payments = plan.mesh("payments")
    assert [c.name for c in payments.clusters] == ["east", "west"]
    assert payments.primary == ClusterPlan("east", "ctx-east", "primary", "192.0.2.99")
    assert payments.kube_context == "ctx-east"
    assert plan.mesh("web").clusters == (ClusterPlan("web", "ctx-web", "primary"),)
    assert plan.mesh("web").remotes == ()


# -- render -------------------------------------------------------------------------------


def test_primary_remote_render_is_valid_and_points_remotes_at_istiod() -> None:
    _, plan = fed_and_plan()
    out = rendered(plan)
    east_west = out["payments"].files["eastwest-gateway.yaml"]
    assert validate_all(east_west) == []
    service = next(o for o in east_west if o["kind"] == "Service")
    assert [p["port"] for p in service["spec"]["ports"]] == [15012, 15017]
    vs = next(o for o in east_west if o["kind"] == "VirtualService")
    assert {r["route"][0]["destination"]["host"] for r in vs["spec"]["tls"]} == {
        "istiod.istio-system.svc.cluster.local"
    }
    remote = out["payments"].install_files["istio-operator-west.yaml"][0]["spec"]
    assert remote["profile"] == "remote"
    assert remote["values"]["global"]["remotePilotAddress"] == "192.0.2.99"
    assert remote["values"]["istiodRemote"] == {
        "enabled": True,
        "injectionPath": "/inject/cluster/west/net/pci",
    }
    primary = out["payments"].install_files["istio-operator-east.yaml"][0]["spec"]
    assert primary["values"]["global"]["externalIstiod"] is True
    assert primary["values"]["global"]["multiCluster"] == {"clusterName": "east"}
    assert "eastwest-gateway.yaml" not in out["web"].files


def test_remote_settings_wait_for_the_discovery_address() -> None:
    _, plan = fed_and_plan(SPEC.replace(", discoveryAddress: 192.0.2.99", ""))
    files = rendered(plan)["payments"].install_files
    assert "istio-operator-east.yaml" in files
    assert "istio-operator-west.yaml" not in files


# -- targets and pruning ------------------------------------------------------------------


def test_primary_holds_config_remote_holds_ca_and_reader() -> None:
    _, plan = fed_and_plan()
    targets = cluster_targets(plan, rendered(plan))
    assert [(t.mesh.name, t.name, t.cluster.role) for t in targets] == [
        ("payments", "west", "remote"),
        ("payments", "east", "primary"),
        ("web", "web", "primary"),
    ]
    west, east, _ = targets
    assert sorted((o["kind"], o["metadata"]["name"]) for o in west.objects) == [
        ("ClusterRole", "istio-reader-clusterrole-istio-system"),
        ("ClusterRoleBinding", "istio-reader-clusterrole-istio-system"),
        ("Secret", "cacerts"),
        ("ServiceAccount", "istio-reader-service-account"),
    ]
    assert east.remotes == (plan.mesh("payments").clusters[1],)
    kinds = {o["kind"] for o in east.objects}
    assert "IstioOperator" not in kinds
    assert {"Gateway", "AuthorizationPolicy", "Deployment", "Secret", "Namespace"} <= kinds
    desired = east.desired()
    assert desired[0]["kind"] == "Namespace"
    assert [
        o["metadata"]["name"] for o in cluster_targets(plan, rendered(plan), ["web"])[0].objects
    ]
    with pytest.raises(TargetError, match="no mesh named nope"):
        cluster_targets(plan, rendered(plan), ["nope"])
    bare = SPEC.replace("      kubernetes: {context: ctx-web}\n", "")
    _, plan2 = fed_and_plan(bare)
    with pytest.raises(TargetError, match="mesh 'web' names no cluster"):
        cluster_targets(plan2, rendered(plan2))


def _labelled(kind: str, name: str, federation: str | None = "unit", ns: str = "x") -> Obj:
    labels = {"app.kubernetes.io/managed-by": "meshfed"}
    if federation:
        labels["meshfed.dev/federation"] = federation
    group = {"Deployment": "apps/v1", "Gateway": "networking.istio.io/v1"}.get(kind, "v1")
    return {
        "apiVersion": group,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, "labels": labels},
    }


def test_prune_set_is_what_meshfed_applied_and_no_longer_renders() -> None:
    live = [
        _labelled("Gateway", "keep"),
        _labelled("Gateway", "stale"),
        _labelled("Deployment", "stale-deploy"),
        _labelled("Secret", "stale-secret"),
        _labelled("Gateway", "other-fed", federation="other"),
        _labelled("Namespace", "x"),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users", "namespace": "x"}},
    ]
    desired = [_labelled("Gateway", "keep")]
    stale = prune_set(live, desired, "unit")
    # deletion order is the reverse of apply order: Istio config, workloads, then secrets
    assert [o["metadata"]["name"] for o in stale] == ["stale", "stale-deploy", "stale-secret"]


def test_server_form_leaves_out_empty_secret_values() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "data": {"a": "", "b": "Yg=="},
    }
    assert server_form(secret)["data"] == {"b": "Yg=="}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": ""}}
    assert server_form(config) is config


# -- field views --------------------------------------------------------------------------


def test_projection_follows_managed_fields_keys() -> None:
    obj = {
        "metadata": {"name": "n", "labels": {"a": "1", "b": "2"}},
        "spec": {
            "ports": [
                {"port": 80, "protocol": "TCP", "name": "http"},
                {"port": 81, "protocol": "TCP"},
            ],
            "hosts": ["x", "y"],
            "list": ["p", "q"],
        },
    }
    fields = {
        "f:metadata": {"f:labels": {"f:a": {}}},
        "f:spec": {
            "f:ports": {'k:{"port":80,"protocol":"TCP"}': {".": {}, "f:name": {}}},
            "f:hosts": {'v:"y"': {}},
            "f:list": {"i:1": {}},
        },
    }
    assert project(obj, fields) == {
        "metadata": {"labels": {"a": "1"}},
        "spec": {"ports": [{"name": "http"}], "hosts": ["y"], "list": ["q"]},
    }


def test_views_never_show_secret_values() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "cacerts",
            "namespace": "istio-system",
            "managedFields": [
                {
                    "manager": FIELD_MANAGER,
                    "operation": "Apply",
                    "fieldsV1": {"f:data": {"f:ca-key.pem": {}}},
                }
            ],
        },
        "data": {"ca-key.pem": base64.b64encode(b"PRIVATE").decode()},
    }
    view = owned_view(secret)
    assert view["metadata"] == {"name": "cacerts", "namespace": "istio-system"}
    assert "UFJJVkFURQ" not in yaml.safe_dump(view)
    assert view["data"]["ca-key.pem"].startswith("<sha256:")
    assert redact({"kind": "ConfigMap", "data": {"a": "b"}}) == {
        "kind": "ConfigMap",
        "data": {"a": "b"},
    }


# -- kubeconfig ---------------------------------------------------------------------------


def test_kubeconfig_files_merge_as_kubectl_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = tmp_path / "one" / "config"
    two = tmp_path / "two.yaml"
    one.parent.mkdir()
    one.write_text(
        yaml.safe_dump(
            {
                "current-context": "a",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": "https://one", "certificate-authority": "ca.crt"},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "t1"}}],
                "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    two.write_text(
        yaml.safe_dump(
            {
                "current-context": "b",
                "clusters": [{"name": "c", "cluster": {"server": "https://two"}}],
                "users": [{"name": "u2", "user": {"token": "t2"}}],
                "contexts": [
                    {"name": "a", "context": {"cluster": "zzz"}},
                    {"name": "b", "context": {"cluster": "c", "user": "u2"}},
                ],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", f"{one}:{tmp_path / 'missing'}:{two}")
    doc = merged_kubeconfig()
    assert doc["current-context"] == "a"
    assert [c["cluster"]["server"] for c in doc["clusters"]] == ["https://one"]
    assert doc["clusters"][0]["cluster"]["certificate-authority"] == str(one.parent / "ca.crt")
    b = resolve_context("b")
    assert b.cluster.server == "https://one"  # the first file's cluster "c" wins
    assert b.user is not None and b.user.token == "t2"
    assert resolve_context(None).context_name == "a"
    with pytest.raises(KubeError, match="no usable context 'nope'"):
        resolve_context("nope")
    with pytest.raises(KubeError, match="does not exist"):
        merged_kubeconfig(tmp_path / "absent")


# -- remote secret, discovery, state ------------------------------------------------------


def test_remote_secret_is_istioctl_shaped() -> None:
    kubeconfig = kubeconfig_text("west", "https://10.0.0.1:6443", b"CA PEM", "TOKEN")
    text = istioctl_output(istioctl_secret("west", "istio-system", kubeconfig))
    expected_kubeconfig = (
        "apiVersion: v1\n"
        "clusters:\n"
        "- cluster:\n"
        f"    certificate-authority-data: {base64.b64encode(b'CA PEM').decode()}\n"
        "    server: https://10.0.0.1:6443\n"
        "  name: west\n"
        "contexts:\n"
        "- context:\n"
        "    cluster: west\n"
        "    user: west\n"
        "  name: west\n"
        "current-context: west\n"
        "kind: Config\n"
        "preferences: {}\n"
        "users:\n"
        "- name: west\n"
        "  user:\n"
        "    token: TOKEN\n"
    )
    assert kubeconfig == expected_kubeconfig
    assert text.startswith(
        "# This file is autogenerated, do not edit.\n"
        "apiVersion: v1\n"
        "kind: Secret\n"
        "metadata:\n"
        "  annotations:\n"
        "    networking.istio.io/cluster: west\n"
        "  creationTimestamp: null\n"
        "  labels:\n"
        '    istio/multiCluster: "true"\n'
        "  name: istio-remote-secret-west\n"
        "  namespace: istio-system\n"
        "stringData:\n"
        "  west: |\n"
        "    apiVersion: v1\n"
    )
    assert text.endswith("---\n")
    assert (
        yaml.safe_load(text.split("\n", 1)[1].rsplit("---", 1)[0])["stringData"]["west"]
        == kubeconfig
    )


@pytest.mark.parametrize(
    ("port", "protocol"),
    [
        ({"port": 80, "name": "http"}, "HTTP"),
        ({"port": 80, "name": "http2-api"}, "HTTP"),
        ({"port": 80, "name": "grpc"}, "HTTP"),
        ({"port": 80, "name": "tcp-db"}, "TCP"),
        ({"port": 80}, "TCP"),
        ({"port": 80, "name": "web", "appProtocol": "http"}, "HTTP"),
        ({"port": 80, "name": "http", "appProtocol": "https"}, "TCP"),
        ({"port": 80, "appProtocol": "kubernetes.io/h2c"}, "HTTP"),
    ],
)
def test_protocol_from_app_protocol_or_port_name(port: Obj, protocol: str) -> None:
    assert protocol_of(port) == protocol


def test_state_keeps_applied_at_while_nothing_changes() -> None:
    fed, _ = fed_and_plan()
    first = state_object(fed, {"web": "PEM"}, [{"a": 1}], None)
    again = state_object(fed, {"web": "PEM"}, [{"a": 1}], first)
    assert again == first
    changed = state_object(
        fed, {"web": "PEM"}, [{"a": 2}], {"data": {**first["data"], "appliedAt": "old"}}
    )
    assert changed["data"]["appliedAt"] != "old"
    stored = parse_spec(first["data"]["spec.yaml"])
    assert stored.mesh("payments").clusters is not None


def test_spec_yaml_made_by_sections_is_the_whole_dump() -> None:
    fed, _ = fed_and_plan()
    doc = fed.model_dump(mode="json", by_alias=True, exclude_none=True)
    whole = yaml.safe_dump(doc, sort_keys=False)
    assert spec_yaml(fed) == whole
    assert spec_yaml(fed) == whole  # from the kept sections
    # One section changed (a discovered address), the others kept: still the whole dump.
    doc["spec"]["meshes"][0]["ingress"]["address"] = "192.0.2.7"
    moved = Federation.model_validate(doc)
    assert spec_yaml(moved) == yaml.safe_dump(
        moved.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False
    )
    assert parse_spec(spec_yaml(moved)).spec.meshes[0].ingress.address == "192.0.2.7"


# -- the rollout, on fake clusters --------------------------------------------------------

_KINDS = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Service"): ("services", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
}
_ISTIO = {
    ("networking.istio.io/v1", k): (k.lower() + "s", True)
    for k in ("Gateway", "VirtualService", "ServiceEntry", "DestinationRule")
} | {
    ("security.istio.io/v1", "AuthorizationPolicy"): ("authorizationpolicies", True),
    ("security.istio.io/v1", "PeerAuthentication"): ("peerauthentications", True),
    ("telemetry.istio.io/v1", "Telemetry"): ("telemetries", True),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): ("envoyfilters", True),
}


class FakeCluster:
    """Just enough of an API server: objects in a dict, every call recorded."""

    def __init__(
        self,
        name: str,
        log: list[tuple[str, str, str]],
        istio: bool = True,
        namespaces: tuple[str, ...] = ("istio-system", "cards", "shop", "default"),
    ) -> None:
        self.name = name
        self.server = f"https://{name}.test"
        self.log = log
        self.kinds = {**_KINDS, **(_ISTIO if istio else {})}
        self.store: dict[tuple[str, str, str, str], Obj] = {}
        self.version_ = 0
        for ns in namespaces:
            meta = {"name": ns, "resourceVersion": "0"}
            self.store[("v1", "Namespace", "", ns)] = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": meta,
            }

    @property
    def label(self) -> str:
        return self.name

    def version(self) -> str:
        return "v1.99.0-fake"

    def find(self, api_version: str, kind: str) -> Resource | None:
        found = self.kinds.get((api_version, kind))
        if found is None:
            return None
        group, _, version = api_version.rpartition("/")
        return Resource(group, version, kind, found[0], found[1])

    def resource(self, api_version: str, kind: str) -> Resource:
        found = self.find(api_version, kind)
        if found is None:
            raise KubeError(f"the server has no kind {kind} in {api_version}", status=404)
        return found

    def _key(self, obj: Obj, namespace: str | None = None) -> tuple[str, str, str, str]:
        res = self.resource(obj["apiVersion"], obj["kind"])
        ns = namespace or obj["metadata"].get("namespace") or ""
        return (
            obj["apiVersion"],
            obj["kind"],
            ns if res.namespaced else "",
            obj["metadata"]["name"],
        )

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        key = self._key(
            {
                "apiVersion": api_version,
                "kind": kind,
                "metadata": {"name": name, "namespace": namespace},
            }
        )
        found = self.store.get(key)
        return copy.deepcopy(found) if found else None

    def list(
        self,
        api_version: str,
        kind: str,
        *,
        namespace: str | None = None,
        labels: str | None = None,
    ) -> list[Obj]:
        self.resource(api_version, kind)
        want = dict(p.split("=") for p in labels.split(",")) if labels else {}
        return [
            copy.deepcopy(o)
            for (av, k, ns, _), o in self.store.items()
            if av == api_version and k == kind and (namespace is None or ns == namespace)
            and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in want.items())
        ]  # fmt: skip

    def namespace_exists(self, name: str) -> bool:
        return ("v1", "Namespace", "", name) in self.store

    def can(self, verb: str, resource: Resource, namespace: str | None, name: str = "") -> bool:
        return True

    def apply(
        self, obj: Obj, *, dry_run: bool = False, force: bool = False, namespace: str | None = None
    ) -> Obj:
        key = self._key(obj, namespace)
        self.log.append(
            (
                self.name,
                "dry-run" if dry_run else "apply",
                f"{obj['kind']}/{obj['metadata']['name']}",
            )
        )
        if key[2] and not self.namespace_exists(key[2]):
            raise KubeError(f'namespaces "{key[2]}" not found', status=404)
        old = self.store.get(key)
        new = copy.deepcopy(obj)
        new["metadata"] = {**new["metadata"], "namespace": key[2]} if key[2] else new["metadata"]
        if old is not None and {
            **old,
            "metadata": {**old["metadata"], "resourceVersion": None},
        } == {**new, "metadata": {**new["metadata"], "resourceVersion": None}}:
            return copy.deepcopy(old)
        self.version_ += 1
        new["metadata"]["resourceVersion"] = str(self.version_)
        if not dry_run:
            self.store[key] = new
        return copy.deepcopy(new)

    def create(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        if "generateName" in meta:
            meta["name"] = meta.pop("generateName") + "abcde"
        meta["creationTimestamp"] = "2026-01-01T00:00:00Z"
        if obj.get("type") == "kubernetes.io/service-account-token":
            obj["data"] = {
                "token": base64.b64encode(f"token-of-{self.name}".encode()).decode(),
                "ca.crt": base64.b64encode(b"CA").decode(),
            }
        self.log.append((self.name, "create", f"{obj['kind']}/{meta['name']}"))
        self.store[self._key(obj)] = obj
        return obj

    def delete(self, obj: Obj, *, dry_run: bool = False) -> bool:
        self.log.append(
            (
                self.name,
                "dry-delete" if dry_run else "delete",
                f"{obj['kind']}/{obj['metadata']['name']}",
            )
        )
        key = self._key(obj)
        if key not in self.store:
            return False
        if not dry_run:
            del self.store[key]
        return True

    def wait_for(
        self, api_version: str, kind: str, name: str, namespace: str | None,
        ready: Callable[[Obj], bool], timeout: float = 30.0,
    ) -> Obj:  # fmt: skip
        found = self.get(api_version, kind, name, namespace)
        assert found is not None and ready(found)
        return found


def _rollout(
    fed: Federation,
    plan: FederationPlan,
    clusters: dict[str, FakeCluster],
    meshes: list[str] | None = None,
    forget: tuple[str, ...] = (),
    workers: int = 1,
) -> Rollout:
    targets: list[ClusterTarget] = cluster_targets(plan, rendered(plan), meshes)
    roots = {m.name: f"PEM {m.name}" for m in plan.meshes}

    def connect(cluster: ClusterPlan) -> Any:
        found = clusters.get(cluster.context or "")
        if found is None:
            raise KubeError(f"cannot reach the API server of context {cluster.context}")
        return found

    return Rollout(
        fed, plan, roots, targets, connect, retire=meshes is None, forget=forget, workers=workers
    )


def _fakes(log: list[tuple[str, str, str]], istio_web: bool = True) -> dict[str, FakeCluster]:
    return {
        "ctx-east": FakeCluster("east", log),
        "ctx-west": FakeCluster("west", log),
        "ctx-web": FakeCluster("web", log, istio=istio_web),
    }


def test_every_cluster_is_dry_run_before_anything_is_written() -> None:
    fed, plan = fed_and_plan()
    log: list[tuple[str, str, str]] = []
    clusters = _fakes(log)
    runs = _rollout(fed, plan, clusters).run()
    writes = [i for i, entry in enumerate(log) if entry[1] in ("apply", "create", "delete")]
    dry = [i for i, entry in enumerate(log) if entry[1] in ("dry-run", "dry-delete")]
    assert dry and writes and max(dry) < min(writes)
    assert {entry[0] for entry in log if entry[1] == "dry-run"} == {"east", "west", "web"}
    # the remote gets its reader token before the primary gets the remote secret made from it
    token = next(
        i
        for i, e in enumerate(log)
        if e[1] == "create" and e[2].startswith("Secret/" + TOKEN_PREFIX)
    )
    remote_secret = next(
        i for i, e in enumerate(log) if e == ("east", "apply", "Secret/istio-remote-secret-west")
    )
    assert token < remote_secret
    secret = clusters["ctx-east"].get("v1", "Secret", "istio-remote-secret-west", "istio-system")
    assert secret is not None
    assert "token: token-of-west" in base64.b64decode(secret["data"]["west"]).decode()
    assert (
        clusters["ctx-west"].get(
            "networking.istio.io/v1", "Gateway", "federation-ingress", "meshfed-system"
        )
        is None
    )
    assert all(run.counts()["created"] > 0 for run in runs)
    # the same again changes nothing, the remote secret included
    log.clear()
    again = _rollout(fed, plan, clusters).run()
    assert [run.counts()["configured"] + run.counts()["created"] for run in again] == [0, 0, 0]


def test_requests_in_parallel_write_the_same_in_the_same_order_of_kinds() -> None:
    fed, plan = fed_and_plan()
    one: list[tuple[str, str, str]] = []
    many: list[tuple[str, str, str]] = []
    serial, parallel = _fakes(one), _fakes(many)
    _rollout(fed, plan, serial).run()
    runs = _rollout(fed, plan, parallel, workers=8).run()
    for ctx in serial:
        assert serial[ctx].store.keys() == parallel[ctx].store.keys()
    # Still every dry-run before any write, and per cluster the kinds in apply order.
    writes = [i for i, e in enumerate(many) if e[1] in ("apply", "create", "delete")]
    dry = [i for i, e in enumerate(many) if e[1] in ("dry-run", "dry-delete")]
    assert max(dry) < min(writes)
    for cluster in ("east", "west", "web"):
        made = [e[2] for e in many if e[0] == cluster and e[1] == "apply"]
        # (remote secrets and the stored state are made at apply time, and go last)
        kinds = [w.split("/")[0] for w in made if "remote-secret" not in w and "meshfed-" not in w]
        ranks = [order_rank({"kind": k}) for k in kinds]
        assert ranks == sorted(ranks)
    assert sorted(r.counts()["created"] for r in runs) == sorted(
        r.counts()["created"] for r in _rollout(fed, plan, _fakes([])).run()
    )
    # Refusals are the same too.
    with pytest.raises(ApplyRefused):
        _rollout(fed, plan, _fakes([], istio_web=False), workers=8).run()


def test_a_cluster_without_istio_crds_stops_the_whole_apply() -> None:
    fed, plan = fed_and_plan()
    log: list[tuple[str, str, str]] = []
    with pytest.raises(ApplyRefused) as info:
        _rollout(fed, plan, _fakes(log, istio_web=False)).run()
    assert not [e for e in log if e[1] in ("apply", "create", "delete")]
    text = str(info.value)
    assert "nothing was written to any cluster" in text
    assert (
        "cluster web (context ctx-web): Gateway.networking.istio.io "
        "meshfed-system/federation-egress: the server has no kind Gateway in "
        "networking.istio.io/v1" in text
    )


def test_prune_on_fakes_deletes_only_what_left_the_render() -> None:
    fed, plan = fed_and_plan()
    log: list[tuple[str, str, str]] = []
    clusters = _fakes(log)
    _rollout(fed, plan, clusters).run()
    stranger = _labelled("Gateway", "not-ours", federation=None, ns="meshfed-system")
    clusters["ctx-web"].store[
        ("networking.istio.io/v1", "Gateway", "meshfed-system", "not-ours")
    ] = stranger
    without_import = SPEC.replace(
        "  imports:\n    - {mesh: web, host: tokenizer.shop.svc.cluster.local, "
        "from: [payments/tokenizer]}\n",
        "",
    )
    fed2, plan2 = fed_and_plan(without_import)
    runs = _rollout(fed2, plan2, clusters, ["web"]).run()
    deleted = [name for action, name in runs[0].actions if action == "deleted"]
    assert (
        "ServiceEntry.networking.istio.io meshfed-system/import-tokenizer-shop-svc-cluster-local"
        in deleted
    )
    assert not any("not-ours" in name for name in deleted)
    assert clusters["ctx-web"].get(
        "networking.istio.io/v1", "Gateway", "not-ours", "meshfed-system"
    )


def test_dry_run_reports_and_writes_nothing() -> None:
    fed, plan = fed_and_plan()
    log: list[tuple[str, str, str]] = []
    runs = _rollout(fed, plan, _fakes(log), ["web"]).run(dry_run=True)
    assert not [e for e in log if e[1] in ("apply", "create", "delete")]
    assert {a for a, _ in runs[0].actions} == {"created"}


def test_objects_in_namespaces_created_by_the_apply_are_checked_in_a_stand_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fed, plan = fed_and_plan()
    log: list[tuple[str, str, str]] = []
    clusters = _fakes(log)
    seen: list[str | None] = []
    original = FakeCluster.apply

    def spy(self: FakeCluster, obj: Obj, **kwargs: Any) -> Obj:
        if kwargs.get("dry_run"):
            seen.append(kwargs.get("namespace"))
        return original(self, obj, **kwargs)

    monkeypatch.setattr(FakeCluster, "apply", spy)
    _rollout(fed, plan, clusters, ["web"]).run(dry_run=True)
    assert "default" in seen  # meshfed-system does not exist yet


# -- clusters the spec no longer names --------------------------------------------------------

WEB_ONLY = """\
apiVersion: meshfed.dev/v1alpha1
kind: Federation
metadata: {name: unit}
spec:
  meshes:
    - name: web
      trustDomain: web.unit.example
      ingress: {address: 192.0.2.2}
      kubernetes: {context: ctx-web}
      workloads:
        - {name: checkout, namespace: shop, serviceAccount: checkout, port: 8080}
"""


def _ours(cluster: FakeCluster) -> list[str]:
    return sorted(
        f"{k[1]}/{k[2]}/{k[3]}"
        for k, o in cluster.store.items()
        if (o["metadata"].get("labels") or {}).get("meshfed.dev/federation") == "unit"
        and k[1] != "Namespace"
    )


def _recorded(cluster: FakeCluster) -> set[str]:
    state = cluster.get("v1", "ConfigMap", "meshfed-unit", "meshfed-system")
    assert state is not None
    return {c["context"] for c in json.loads(state["data"]["clusters.json"])}


def test_a_full_apply_empties_the_clusters_of_a_removed_mesh() -> None:
    fed, plan = fed_and_plan()
    log: list[tuple[str, str, str]] = []
    clusters = _fakes(log)
    _rollout(fed, plan, clusters).run()
    assert _ours(clusters["ctx-east"]) and _ours(clusters["ctx-west"])
    assert _recorded(clusters["ctx-web"]) == {"ctx-east", "ctx-west", "ctx-web"}
    west_tokens = [k for k in clusters["ctx-west"].store if k[3].startswith(TOKEN_PREFIX)]
    assert west_tokens

    fed2, plan2 = fed_and_plan(WEB_ONLY)
    log.clear()
    runs = _rollout(fed2, plan2, clusters).run()
    labels = [run.label for run in runs]
    assert "payments/east (context ctx-east, no longer in the spec)" in labels
    assert "payments/west (context ctx-west, no longer in the spec)" in labels
    # dry-run everywhere first, retired clusters included; then the retirement comes last
    writes = [i for i, e in enumerate(log) if e[1] in ("apply", "create", "delete")]
    assert max(i for i, e in enumerate(log) if e[1].startswith("dry")) < min(writes)
    # ... after every cluster's objects; the stored state (which drops the retired clusters
    # from the record) only once they are empty
    state = [i for i in writes if log[i][1:] == ("apply", "ConfigMap/meshfed-unit")]
    retiring = [i for i in writes if log[i][0] in ("east", "west")]
    assert state and retiring and max(retiring) < min(state)
    assert all(i in state for i in writes[-len(state) :])
    assert _ours(clusters["ctx-east"]) == []  # the state ConfigMap there included
    assert _ours(clusters["ctx-west"]) == []  # its cacerts
    # the reader token the pruned remote secret carried is revoked
    assert not [k for k in clusters["ctx-west"].store if k[3].startswith(TOKEN_PREFIX)]
    assert _recorded(clusters["ctx-web"]) == {"ctx-web"}
    # nothing left to retire: the next apply changes nothing
    again = _rollout(fed2, plan2, clusters).run()
    assert [r.label for r in again] == ["web (context ctx-web)"]
    assert again[0].counts()["configured"] + again[0].counts()["deleted"] == 0


def test_a_partial_apply_keeps_the_record_until_a_full_one_retires() -> None:
    fed, plan = fed_and_plan()
    clusters = _fakes([])
    _rollout(fed, plan, clusters).run()
    before = _ours(clusters["ctx-east"])
    fed2, plan2 = fed_and_plan(WEB_ONLY)
    runs = _rollout(fed2, plan2, clusters, ["web"]).run()
    assert [r.label for r in runs] == ["web (context ctx-web)"]
    assert _ours(clusters["ctx-east"]) == before
    assert _recorded(clusters["ctx-web"]) == {"ctx-east", "ctx-west", "ctx-web"}
    _rollout(fed2, plan2, clusters).run()
    assert _ours(clusters["ctx-east"]) == []
    assert _recorded(clusters["ctx-web"]) == {"ctx-web"}


def test_an_unreachable_retired_cluster_refuses_until_forgotten() -> None:
    fed, plan = fed_and_plan()
    clusters = _fakes([])
    _rollout(fed, plan, clusters).run()
    gone = {k: v for k, v in clusters.items() if k != "ctx-west"}
    fed2, plan2 = fed_and_plan(WEB_ONLY)
    web_before = copy.deepcopy(clusters["ctx-web"].store)
    east_before = copy.deepcopy(clusters["ctx-east"].store)
    with pytest.raises(ApplyRefused) as info:
        _rollout(fed2, plan2, gone).run()
    text = str(info.value)
    assert "payments/west (context ctx-west, no longer in the spec): (connection)" in text
    assert "apply with --forget ctx-west" in text
    assert clusters["ctx-web"].store == web_before
    assert clusters["ctx-east"].store == east_before
    _rollout(fed2, plan2, gone, forget=("ctx-west",)).run()
    assert _ours(clusters["ctx-east"]) == []
    assert _recorded(clusters["ctx-web"]) == {"ctx-web"}


def test_objects_of_another_federation_are_not_taken_over() -> None:
    fed, plan = fed_and_plan()
    clusters = _fakes([])
    _rollout(fed, plan, clusters, ["web"]).run()
    other = SPEC.replace("metadata: {name: unit}", "metadata: {name: other}")
    fed2, plan2 = fed_and_plan(other)
    before = copy.deepcopy(clusters["ctx-web"].store)
    with pytest.raises(ApplyRefused) as info:
        _rollout(fed2, plan2, clusters, ["web"]).run()
    text = str(info.value)
    assert "1 object(s) refused" in text
    assert "object(s) of meshfed federation 'unit' (Namespace meshfed-system, " in text
    assert "a mesh can be in one federation only" in text
    assert clusters["ctx-web"].store == before


@pytest.mark.parametrize(
    ("status", "address"),
    [
        ({"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}}, "127.0.0.9"),
        ({"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}, "lb.example"),
        ({"loadBalancer": {}}, None),
        (None, None),
    ],
)
def test_load_balancer_address(status: Obj | None, address: str | None) -> None:
    assert load_balancer_address({"status": status} if status else None) == address


def test_a_primary_without_discovery_address_gets_its_load_balancers() -> None:
    fed, _ = fed_and_plan(SPEC.replace(", discoveryAddress: 192.0.2.99", ""))
    clusters = _fakes([])
    connect = lambda c: clusters[c.context or ""]  # noqa: E731
    completed, found, addresses = with_discovered(fed, connect)
    assert (completed, found, addresses) == (fed, [], [])  # no Service yet: nothing to fill in
    clusters["ctx-east"].store[("v1", "Service", "meshfed-system", "istio-eastwestgateway")] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "istio-eastwestgateway", "namespace": "meshfed-system"},
        "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}},
    }
    completed, _, addresses = with_discovered(fed, connect)
    assert [(a.mesh, a.cluster, a.address) for a in addresses] == [
        ("payments", "east", "127.0.0.9")
    ]
    plan = plan_of(completed, {m.name: "PEM" for m in completed.spec.meshes})
    out = rendered(plan)["payments"]
    docs = [o for d in out.install_files.values() for o in d]
    remote = [o for o in docs if o.get("kind") == "IstioOperator"]
    assert any(
        o["spec"]["values"].get("global", {}).get("remotePilotAddress") == "127.0.0.9"
        for o in remote
    )


def test_connections_to_an_api_server_are_kept_between_reconciles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The controller's reconciles come seconds apart; with httpx's 5 s each began by opening
    # its connections again (a TLS handshake each, under load). Kept 60 s (the API server's
    # own idle bound is 90 s): a request 30 s after the last one reuses the connection.
    import http.server
    import threading

    import httpcore2._sync.http11 as http11

    from meshfed.kube.client import KubeClient

    peers: set[int] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            peers.add(self.client_address[1])
            body = b'{"kind": "Status"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "config"
    config.write_text(
        yaml.safe_dump(
            {
                "current-context": "a",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    client = KubeClient.for_context("a", config)
    try:
        client.request("GET", "/api")
        later = http11.time.monotonic() + 30
        monkeypatch.setattr(http11.time, "monotonic", lambda: later)
        client.request("GET", "/api")
        assert len(peers) == 1  # the same connection
        monkeypatch.setattr(http11.time, "monotonic", lambda: later + 61)
        client.request("GET", "/api")
        assert len(peers) == 2  # expired: a new one
    finally:
        client.close()
        server.shutdown()
        server.server_close()
