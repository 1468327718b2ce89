"""Workloads read from a mesh's clusters, for meshes whose spec leaves them out.

Where the Multi-Cluster Services API is installed (``ServiceExport``, multicluster.x-k8s.io/
v1alpha1), only exported Services count; else every Service outside the system namespaces. Per
Service: its first port; HTTP when ``appProtocol`` (or Istio's port-name prefix) says HTTP, HTTP/2
or gRPC, else TCP; the service account of the pods behind its selector when they can be read and
agree, else the Service's name.

A primary serving remotes whose spec leaves ``discoveryAddress`` out gets the load-balancer
address of its east-west gateway (the Service meshfed applied there), once the cloud assigned one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from meshfed.kube.apply import Connect
from meshfed.kube.client import Cluster
from meshfed.kube.errors import KubeError
from meshfed.kube.parallel import in_parallel
from meshfed.plan.build import mesh_clusters
from meshfed.plan.names import GATEWAY_NAMESPACE, INGRESS_GATEWAY
from meshfed.render.istio.multicluster import EASTWEST_GATEWAY
from meshfed.spec.check import check_federation
from meshfed.spec.errors import SpecError
from meshfed.spec.model import Federation, Mesh

Obj = dict[str, Any]
MCS_API = "multicluster.x-k8s.io/v1alpha1"
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", GATEWAY_NAMESPACE})
_HTTP = frozenset(
    {"http", "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c", "kubernetes.io/ws"}
)


def protocol_of(port: Obj) -> str:
    """HTTP or TCP, from ``appProtocol``, else the port name's prefix (Istio's convention)."""
    app = str(port.get("appProtocol") or "").lower()
    if app:
        return "HTTP" if app in _HTTP else "TCP"
    prefix = str(port.get("name") or "").lower().split("-")[0]
    return "HTTP" if prefix in _HTTP else "TCP"


@dataclass
class Discovery:
    """What one mesh's clusters hold."""

    mesh: str
    workloads: list[Obj] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = "Service"


def _service_account(client: Cluster, service: Obj, notes: list[str]) -> str | None:
    selector = (service.get("spec") or {}).get("selector") or {}
    meta = service["metadata"]
    if not selector:
        return None
    labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    try:
        pods = client.list("v1", "Pod", namespace=meta["namespace"], labels=labels)
    except KubeError as exc:
        notes.append(f"{meta['namespace']}/{meta['name']}: pods not readable ({exc.message})")
        return None
    accounts = sorted({(p.get("spec") or {}).get("serviceAccountName") or "default" for p in pods})
    if len(accounts) > 1:
        notes.append(
            f"{meta['namespace']}/{meta['name']}: pods run as {', '.join(accounts)}; "
            f"using {accounts[0]}"
        )
    return pick_account(accounts)


def pick_account(accounts: Iterable[str]) -> str | None:
    """The service account discovery takes for a Service whose Pods run as ``accounts`` (the
    first by name when a rollout runs two; None without Pods: the Service's name is taken)."""
    return min(accounts, default=None)


def discover_cluster(
    client: Cluster, istio_namespace: str, found: Discovery, workers: int = 1
) -> None:
    """``workers``: Pod lists (one per Service) in flight at once."""
    exported: set[tuple[str, str]] | None = None
    if client.find(MCS_API, "ServiceExport") is not None:
        exported = {
            (e["metadata"]["namespace"], e["metadata"]["name"])
            for e in client.list(MCS_API, "ServiceExport")
        }
        found.source = "ServiceExport"
    known = {(w["namespace"], w["name"]) for w in found.workloads}
    skip = SYSTEM_NAMESPACES | {istio_namespace}
    chosen: list[Obj] = []
    for service in client.list("v1", "Service"):
        meta = service["metadata"]
        key = (meta["namespace"], meta["name"])
        if key in known or meta["namespace"] in skip or key == ("default", "kubernetes"):
            continue
        if exported is not None and key not in exported:
            continue
        chosen.append(service)
    notes: dict[int, list[str]] = {id(s): [] for s in chosen}
    accounts = in_parallel(
        lambda s: _service_account(client, s, notes[id(s)]) if _ports(s) else None,
        chosen,
        workers,
    )
    for service, account in zip(chosen, accounts, strict=True):
        meta = service["metadata"]
        key = (meta["namespace"], meta["name"])
        ports = _ports(service)
        if not ports:
            found.notes.append(f"{key[0]}/{key[1]}: no ports; skipped")
            continue
        if len(ports) > 1:
            found.notes.append(
                f"{key[0]}/{key[1]}: {len(ports)} ports; using the first ({ports[0]['port']})"
            )
        found.notes += notes[id(service)]
        found.workloads.append(
            {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "serviceAccount": account or meta["name"],
                "port": ports[0]["port"],
                "protocol": protocol_of(ports[0]),
            }
        )
        known.add(key)


def _ports(service: Obj) -> list[Obj]:
    return list((service.get("spec") or {}).get("ports") or [])


def discover_mesh(mesh: Mesh, connect: Connect, workers: int = 1) -> Discovery:
    """``workers``: requests to one cluster at a time (the controller's; the CLI: one)."""
    found = Discovery(mesh.name)
    for cluster in mesh_clusters(mesh):
        try:
            discover_cluster(connect(cluster), mesh.istio_namespace, found, workers)
        except KubeError as exc:
            raise KubeError(
                f"discovery in mesh {mesh.name} cluster {cluster.name}: {exc.message}"
            ) from None
    found.workloads.sort(key=lambda w: (w["namespace"], w["name"]))
    return found


def discover(
    fed: Federation, connect: Connect, meshes: Iterable[str] | None = None
) -> list[Discovery]:
    """Discovery for the chosen meshes (default: those whose spec leaves workloads out)."""
    chosen = set(meshes) if meshes is not None else None
    return [
        discover_mesh(m, connect)
        for m in fed.spec.meshes
        if (m.name in chosen if chosen is not None else m.workloads_omitted) and mesh_clusters(m)
    ]


@dataclass(frozen=True)
class AddressFound:
    """An address read from a gateway's load balancer: a primary's discovery address (its
    east-west gateway), or a mesh's ingress address (its federation ingress)."""

    mesh: str
    cluster: str
    address: str
    service: str = EASTWEST_GATEWAY

    @property
    def source(self) -> str:
        return f"Service {GATEWAY_NAMESPACE}/{self.service} on cluster {self.cluster}"

    @property
    def ingress(self) -> bool:
        return self.service == INGRESS_GATEWAY


def load_balancer_address(service: Obj | None) -> str | None:
    """The first IP or host name the cloud gave a LoadBalancer Service (None: not yet)."""
    status = (service or {}).get("status") or {}
    for entry in (status.get("loadBalancer") or {}).get("ingress") or []:
        address = entry.get("ip") or entry.get("hostname")
        if address:
            return str(address)
    return None


def discover_addresses(
    fed: Federation, connect: Connect, meshes: Iterable[str] | None = None
) -> list[AddressFound]:
    """Discovery addresses of the primaries with remotes whose spec leaves them out."""
    chosen = set(meshes) if meshes is not None else None
    out = []
    for mesh in fed.spec.meshes:
        clusters = mesh_clusters(mesh)
        if (chosen is not None and mesh.name not in chosen) or len(clusters) < 2:
            continue
        primary = clusters[0]
        if primary.discovery_address is not None:
            continue
        try:
            service = connect(primary).get("v1", "Service", EASTWEST_GATEWAY, GATEWAY_NAMESPACE)
        except KubeError as exc:
            raise KubeError(
                f"discovery in mesh {mesh.name} cluster {primary.name}: {exc.message}"
            ) from None
        address = load_balancer_address(service)
        if address is not None:
            out.append(AddressFound(mesh.name, primary.name, address))
    return out


def discover_ingress_addresses(
    fed: Federation, connect: Connect, meshes: Iterable[str] | None = None
) -> tuple[list[AddressFound], list[str]]:
    """Ingress addresses of the meshes whose spec leaves them out, from the federation-ingress
    load balancer on each one's primary; and the meshes whose load balancer has none yet."""
    chosen = set(meshes) if meshes is not None else None
    found, pending = [], []
    for mesh in fed.spec.meshes:
        clusters = mesh_clusters(mesh)
        if (chosen is not None and mesh.name not in chosen) or not mesh.address_omitted:
            continue
        if not clusters:
            continue
        primary = clusters[0]
        try:
            service = connect(primary).get("v1", "Service", INGRESS_GATEWAY, GATEWAY_NAMESPACE)
        except KubeError as exc:
            raise KubeError(
                f"discovery in mesh {mesh.name} cluster {primary.name}: {exc.message}"
            ) from None
        address = load_balancer_address(service)
        if address is None:
            pending.append(mesh.name)
        else:
            found.append(AddressFound(mesh.name, primary.name, address, INGRESS_GATEWAY))
    return found, pending


def completed_spec(
    fed: Federation,
    workloads: dict[str, list[Obj]],
    addresses: Iterable[AddressFound],
    placeholder: dict[str, str] | None = None,
) -> Federation:
    """The spec with discovered workloads, discovery and ingress addresses filled in (and,
    for the controller, ``placeholder`` ingress addresses of meshes still waiting for their
    load balancer: objects of those meshes' importers are not written until it has one)."""
    address_of = {(a.mesh, a.cluster): a.address for a in addresses if not a.ingress}
    ingress_of = {a.mesh: a.address for a in addresses if a.ingress} | (placeholder or {})
    meshes = []
    for found in fed.spec.meshes:
        named = {c.name for c in found.clusters or []}
        if not (
            found.name in workloads
            or found.name in ingress_of
            or any((found.name, c) in address_of for c in named)
        ):
            meshes.append(found)  # as it is (the exports and imports too, below)
            continue
        mesh = found.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if mesh["name"] in workloads:
            mesh["workloads"] = workloads[mesh["name"]]
        if mesh["name"] in ingress_of:
            mesh["ingress"]["address"] = ingress_of[mesh["name"]]
        for cluster in mesh.get("clusters") or []:
            if (mesh["name"], cluster["name"]) in address_of:
                cluster["discoveryAddress"] = address_of[(mesh["name"], cluster["name"])]
        try:
            meshes.append(Mesh.model_validate(mesh))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']} (found {e.get('input')!r})"
                for e in exc.errors()
            )
            raise KubeError(
                f"discovery in mesh {found.name}: what its clusters hold does not fit the spec: "
                f"{problems}"
            ) from None
    # Only the meshes are made again: at a thousand exports, dumping and validating the
    # whole spec took most of a controller reconcile's CPU.
    complete = fed.model_copy(update={"spec": fed.spec.model_copy(update={"meshes": meshes})})
    complete._exports = None  # (an index of the exports, made again when asked)
    return complete


def with_discovered(
    fed: Federation, connect: Connect, file: str = "<spec>"
) -> tuple[Federation, list[Discovery], list[AddressFound]]:
    """The spec with discovered workloads and discovery addresses filled in, checked whole
    again."""
    found = discover(fed, connect)
    addresses = discover_addresses(fed, connect)
    ingress, pending = discover_ingress_addresses(fed, connect)
    if pending:
        raise KubeError(
            "the federation-ingress Service of mesh(es) "
            + ", ".join(pending)
            + f" ({GATEWAY_NAMESPACE}/{INGRESS_GATEWAY}) has no load-balancer address yet, and "
            "the spec leaves ingress.address out: set it for the first apply, or run the "
            "controller, which applies such a mesh first and its importers once the address "
            "is there"
        )
    addresses += ingress
    if not found and not addresses:
        return fed, [], []
    completed = completed_spec(fed, {d.mesh: d.workloads for d in found}, addresses)
    problems = check_federation(completed)
    if problems:
        where = f"{file} (with workloads discovered in the clusters)"
        raise SpecError(where, [p.render(where, None) for p in problems])
    return completed, found, addresses
