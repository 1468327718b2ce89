"""How Istio reads the objects of one cluster: which gateways exist, which policies select
them (the mesh config is read in ``install.py``). Shared by the checks; decides no finding itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from meshfed.audit.attach import is_gateway_template, target_refs
from meshfed.audit.model import Location
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import as_dict, as_list, as_str, dig, str_list, str_map

Role = Literal["ingress", "egress"]


def istio(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.is_istio(kind)]


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.kind == kind]


def subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- gateways -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayWorkload:
    """Gateway pods of one cluster, the Istio Gateway objects that configure them."""

    scope: str
    namespace: str
    labels: dict[str, str]
    name: str
    role: Role
    gateways: tuple[Doc, ...]
    deployment: Doc | None

    def location(self) -> Location:
        if self.deployment is not None:
            return self.deployment.at()
        if self.gateways:
            return self.gateways[0].at("spec", "selector")
        return Location(namespace=self.namespace, name=self.name)

    def describe(self) -> str:
        return f"{self.role} gateway {self.namespace}/{self.name}"


def _pod_labels(deployment: Doc) -> dict[str, str]:
    return str_map(deployment.get("spec", "template", "metadata", "labels"))


def _is_gateway_deployment(doc: Doc) -> bool:
    return doc.kind == "Deployment" and is_gateway_template(as_dict(doc.get("spec", "template")))


def _role(*names: str) -> Role:
    return "egress" if any("egress" in n for n in names) else "ingress"


def gateway_workloads(docs: list[Doc]) -> list[GatewayWorkload]:
    """Gateway deployments of a cluster, and pods Istio Gateways select that are not in it."""
    deployments = [d for d in docs if _is_gateway_deployment(d)]
    attached: dict[int, list[Doc]] = {i: [] for i in range(len(deployments))}
    orphans: dict[tuple[str, tuple[tuple[str, str], ...]], list[Doc]] = {}
    for gw in istio(docs, "Gateway"):
        selector = str_map(gw.spec.get("selector"))
        hits = [i for i, d in enumerate(deployments) if subset(selector, _pod_labels(d))]
        for i in hits:
            attached[i].append(gw)
        if not hits:
            orphans.setdefault((gw.namespace, tuple(sorted(selector.items()))), []).append(gw)
    out = []
    for i, dep in enumerate(deployments):
        labels = _pod_labels(dep)
        gws = tuple(attached[i])
        role = _role(dep.name, *labels.values(), *(g.name for g in gws))
        out.append(GatewayWorkload(dep.scope, dep.namespace, labels, dep.name, role, gws, dep))
    for (ns, pairs), selecting in orphans.items():
        pod = dict(pairs)
        name = pod.get("istio") or pod.get("app") or selecting[0].name
        role = _role(name, *pod.values(), *(g.name for g in selecting))
        out.append(GatewayWorkload(selecting[0].scope, ns, pod, name, role, tuple(selecting), None))
    return out


GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
"""The label Istio puts on the pods it deploys for a Kubernetes Gateway API ``Gateway``."""


def selects_workload(policy: Doc, workload: GatewayWorkload, root_ns: str) -> bool:
    """Whether a selector-based policy (AuthorizationPolicy, Telemetry, ...) applies to it.

    A policy applies in its own namespace, or mesh-wide from the root namespace; its
    ``selector.matchLabels`` (absent: every workload) must match the pod labels. A policy bound
    with ``targetRef(s)`` applies to the gateway pods Istio deployed for a Gateway API
    ``Gateway`` it names in its own namespace (their ``gateway-name`` label); its other targets
    (Services, ServiceEntries: waypoints; GatewayClasses) never select a gateway deployment.
    """
    spec = policy.spec
    refs = target_refs(spec)
    if refs or "targetRefs" in spec:
        if policy.namespace != workload.namespace:
            return False
        return any(
            as_str(ref.get("kind")) == "Gateway"
            and as_str(ref.get("group")) == GATEWAY_API_GROUP
            and as_str(ref.get("namespace")) in (None, "", policy.namespace)
            and workload.labels.get(GATEWAY_NAME_LABEL) == as_str(ref.get("name"))
            for ref in refs
        )
    if policy.namespace not in (workload.namespace, root_ns):
        return False
    selector = str_map(dig(spec, "selector", "matchLabels"))
    return subset(selector, workload.labels)


def action(policy: Doc) -> str:
    """An AuthorizationPolicy's action (Istio's default: ALLOW)."""
    return as_str(policy.spec.get("action")) or "ALLOW"


def gateway_refs(vs: Doc) -> list[str]:
    """The Gateways a VirtualService binds to, as ``namespace/name``."""
    out = []
    for ref in str_list(vs.spec.get("gateways")):
        if ref == "mesh":
            continue
        out.append(ref if "/" in ref else f"{vs.namespace}/{ref}")
    return out


def bound_virtual_services(docs: list[Doc], workload: GatewayWorkload) -> list[Doc]:
    names = {f"{g.namespace}/{g.name}" for g in workload.gateways}
    return [vs for vs in istio(docs, "VirtualService") if names & set(gateway_refs(vs))]


ISTIOD_PORTS = {15012, 15017}


def control_plane_only(gateway: Doc, docs: Iterable[Doc]) -> bool:
    """A gateway that only passes TLS through to istiod (Istio's expose-istiod pattern for
    primary-remote): remotes dial it by IP, so it cannot name SNI hosts, and istiod
    authenticates the remotes itself. Every server is PASSTHROUGH on istiod's ports, and every
    VirtualService bound to it routes to istiod only."""
    servers = [as_dict(s) for s in as_list(gateway.spec.get("servers"))]
    if not servers:
        return False
    for server in servers:
        mode = as_str(as_dict(server.get("tls")).get("mode"))
        if mode != "PASSTHROUGH" or dig(server, "port", "number") not in ISTIOD_PORTS:
            return False
    ref = f"{gateway.namespace}/{gateway.name}"
    bound = [vs for vs in istio(docs, "VirtualService") if ref in gateway_refs(vs)]
    hosts = [host for vs in bound for host, _ in route_destinations(vs)]
    return bool(hosts) and all(h.split(".")[0] == "istiod" for h in hosts)


def route_destinations(vs: Doc) -> list[tuple[str, tuple[str | int, ...]]]:
    """(host, field path) of every destination of a VirtualService."""
    out: list[tuple[str, tuple[str | int, ...]]] = []
    for proto in ("http", "tcp", "tls"):
        for i, route in enumerate(as_list(vs.spec.get(proto))):
            for j, dest in enumerate(as_list(as_dict(route).get("route"))):
                host = as_str(dig(dest, "destination", "host"))
                if host:
                    out.append((host, ("spec", proto, i, "route", j, "destination", "host")))
    return out


def host_namespace(host: str, default: str) -> str | None:
    """The namespace of an in-cluster service host; None for a host outside the cluster."""
    parts = host.split(".")
    if len(parts) == 1:
        return default
    if len(parts) == 2 or (len(parts) >= 3 and parts[2] == "svc"):
        return parts[1]
    return None


def principal_patterns(rule: Any) -> tuple[list[str], bool]:
    """The principals of an AuthorizationPolicy rule's sources, and whether every source
    constrains the caller's identity (principals set)."""
    sources = [as_dict(as_dict(f).get("source")) for f in as_list(as_dict(rule).get("from"))]
    principals = [p for s in sources for p in str_list(s.get("principals"))]
    constrained = bool(sources) and all(s.get("principals") for s in sources)
    return principals, constrained
