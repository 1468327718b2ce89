"""Where an Istio policy applies (its *scope*), and the workloads of a tree it can reach.

Istio attaches policies by namespace and selector, with the root namespace (meshConfig
``rootNamespace``, default ``istio-system``) standing for the whole mesh:

- no selector in the root namespace: every workload of the mesh (``mesh``);
- no selector elsewhere: every workload of that namespace (``namespace``);
- a selector: the matching workloads of that namespace, or of every namespace when the policy is
  in the root namespace (``workload``) -- except PeerAuthentication, whose selector policies in the
  root namespace Istio ignores;
- ``targetRefs``: the Gateway API ``Gateway`` (``GatewayClass`` from the root namespace),
  ``Service`` or ``ServiceEntry`` it names (``targets``).

The selector field differs by kind: ``spec.selector.matchLabels`` (AuthorizationPolicy,
PeerAuthentication, RequestAuthentication, Telemetry, WasmPlugin) or
``spec.workloadSelector.labels`` (Sidecar, EnvoyFilter, DestinationRule).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, dig, str_list, str_map

Level = Literal["mesh", "namespace", "workload", "targets", "ignored"]
WORKLOAD_SELECTOR_KINDS = ("Sidecar", "EnvoyFilter", "DestinationRule")
DRY_RUN = "istio.io/dry-run"

_RANK: dict[Level, int] = {"mesh": 3, "namespace": 2, "workload": 1, "targets": 1, "ignored": 0}


def selector_labels(doc: Doc) -> dict[str, str]:
    if doc.kind in WORKLOAD_SELECTOR_KINDS:
        return str_map(dig(doc.spec, "workloadSelector", "labels"))
    return str_map(dig(doc.spec, "selector", "matchLabels"))


def target_refs(spec: Obj) -> list[Obj]:
    refs = [as_dict(r) for r in as_list(spec.get("targetRefs"))]
    single = spec.get("targetRef")
    return [*refs, as_dict(single)] if isinstance(single, dict) else refs


@dataclass(frozen=True)
class Attachment:
    """The scope of one policy object."""

    level: Level
    namespace: str
    root: str
    labels: tuple[tuple[str, str], ...] = ()
    targets: tuple[str, ...] = ()

    @property
    def rank(self) -> int:
        """3 for the whole mesh, 2 a namespace, 1 some workloads, 0 nothing."""
        return _RANK[self.level]

    def describe(self) -> str:
        selector = ", ".join(f"{k}={v}" for k, v in self.labels)
        if self.level == "mesh":
            return f"mesh-wide (root namespace {self.root})"
        if self.level == "namespace":
            return f"namespace {self.namespace}"
        if self.level == "targets":
            return ", ".join(self.targets)
        if self.level == "ignored":
            return f"ignored by Istio (selector in the root namespace {self.root})"
        if self.namespace == self.root:
            return f"workloads {selector} in every namespace"
        return f"workloads {selector} in namespace {self.namespace}"

    def reaches(self, namespace: str, labels: Mapping[str, str]) -> bool:
        """Whether a (non-gateway) workload with these labels in that namespace is in scope."""
        if self.level in ("ignored", "targets"):
            return False
        if self.level == "mesh":
            return True
        if self.level == "namespace":
            return self.namespace == namespace
        if self.namespace not in (namespace, self.root):
            return False
        return all(labels.get(k) == v for k, v in self.labels)


def attachment(doc: Doc, root: str) -> Attachment:
    """The scope Istio gives ``doc`` (a policy with a selector or targetRefs)."""
    refs = target_refs(doc.spec)
    if refs:
        names = tuple(
            f"{as_str(r.get('kind')) or '?'} {as_str(r.get('namespace')) or doc.namespace}/"
            f"{as_str(r.get('name')) or '?'}"
            for r in refs
        )
        return Attachment("targets", doc.namespace, root, targets=names)
    labels = tuple(sorted(selector_labels(doc).items()))
    if labels:
        if doc.kind == "PeerAuthentication" and doc.namespace == root:
            return Attachment("ignored", doc.namespace, root, labels)
        return Attachment("workload", doc.namespace, root, labels)
    level: Level = "mesh" if doc.namespace == root else "namespace"
    return Attachment(level, doc.namespace, root)


def dry_run(doc: Doc) -> bool:
    """An AuthorizationPolicy annotated ``istio.io/dry-run: "true"``: evaluated and logged,
    never enforced."""
    value = as_str(dig(doc.obj, "metadata", "annotations", DRY_RUN))
    return (value or "").strip().lower() in ("true", "1", "t")


# --- workloads ----------------------------------------------------------------------------------

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}
_INJECT = "sidecar.istio.io/inject"


@dataclass(frozen=True)
class Pod:
    """The pods of one workload object of the tree (a Deployment, StatefulSet, ... or a Pod)."""

    doc: Doc
    labels: dict[str, str]
    gateway: bool
    """Istio gateway pods: PeerAuthentication and Sidecar do not apply to them."""
    injected: bool
    """False when the pod opts out of the sidecar (outside the mesh)."""

    @property
    def namespace(self) -> str:
        return self.doc.namespace

    def describe(self) -> str:
        return f"{self.doc.kind} {self.doc.namespace}/{self.doc.name}"


def _template(doc: Doc) -> Obj | None:
    path = _TEMPLATES.get(doc.kind)
    if path is None or doc.group not in ("", "apps", "batch"):
        return None
    return as_dict(doc.get(*path)) if path else doc.obj


def is_gateway_template(template: Obj) -> bool:
    """Pods Istio injects as a gateway, or running its proxy as a router (manual gateways)."""
    annotations = str_map(dig(template, "metadata", "annotations"))
    if annotations.get("inject.istio.io/templates") == "gateway":
        return True
    for container in as_list(dig(template, "spec", "containers")):
        image = as_str(as_dict(container).get("image")) or ""
        if "proxyv2" in image and "router" in str_list(as_dict(container).get("args")):
            return True
    return False


def pods(docs: Iterable[Doc]) -> list[Pod]:
    out = []
    for doc in docs:
        template = _template(doc)
        if template is None:
            continue
        meta = as_dict(template.get("metadata"))
        labels = str_map(meta.get("labels"))
        opt = labels.get(_INJECT) or str_map(meta.get("annotations")).get(_INJECT)
        injected = (opt or "true").lower() != "false"
        out.append(Pod(doc, labels, is_gateway_template(template), injected))
    return out


def mesh_pods(docs: Iterable[Doc]) -> list[Pod]:
    """Pods with a sidecar (not gateways, not opted out): what mesh policy governs."""
    return [p for p in pods(docs) if p.injected and not p.gateway]
