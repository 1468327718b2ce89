"""Whole-document checks: the rules that types alone cannot express.

Each check yields Problems located by field path; ``check_federation`` runs them all so a user
sees every problem at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Literal

from meshfed.spec.bundle_checks import check_bundles
from meshfed.spec.errors import Problem
from meshfed.spec.headers import keep_problem
from meshfed.spec.ingress import check_address
from meshfed.spec.model import Export, Federation, Import, Mesh
from meshfed.spec.paths import PathError, parse_path
from meshfed.spec.principals import parse_principal
from meshfed.spec.reserved import check_reserved

_METHOD = re.compile(r"^[A-Z]+$")

MAX_MESH_NAME = 31
"""A mesh's CA certificates are named ``<mesh> intermediate CA <generation>`` (generation: a
16-character time stamp); X.509 caps a common name at 64 characters."""
MAX_FEDERATION_NAME = 39
"""The shared root is named ``<federation> root CA <generation>`` (64 characters at most)."""
MIN_TTL = timedelta(seconds=10)
"""Shortest certificate lifetime: certificates count whole seconds, and the renewer issues a
new one at 2/3 of the lifetime (a workload TTL of 12s is tested)."""
_TTL_FIELDS: tuple[tuple[Literal["root", "intermediate", "workload", "gateway"], str], ...] = (
    ("root", "rootTTL"),
    ("intermediate", "intermediateTTL"),
    ("workload", "workloadTTL"),
    ("gateway", "gatewayTTL"),
)
_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}


def _local_names(mesh: Mesh) -> dict[str, str]:
    """Every name a workload of the mesh answers to, mapped to its ``ns/name``."""
    names: dict[str, str] = {}
    for w in mesh.workloads:
        for form in ("", ".svc", ".svc.cluster.local"):
            names[f"{w.name}.{w.namespace}{form}"] = w.ref
    return names


def _check_meshes(fed: Federation, discovery_pending: bool = False) -> Iterator[Problem]:
    names: dict[str, int] = {}
    domains: dict[str, int] = {}
    listeners: dict[tuple[str, int], int] = {}
    for i, mesh in enumerate(fed.spec.meshes):
        path = ("spec", "meshes", i)
        if mesh.name in names:
            yield Problem(
                (*path, "name"),
                f"mesh name {mesh.name!r} is already used by spec.meshes[{names[mesh.name]}]",
                "give every mesh a unique name",
            )
        names.setdefault(mesh.name, i)
        if mesh.trust_domain in domains:
            yield Problem(
                (*path, "trustDomain"),
                f"trust domain {mesh.trust_domain!r} is already used by "
                f"spec.meshes[{domains[mesh.trust_domain]}]; identities of the two meshes "
                "could not be told apart",
                "give every mesh its own trust domain, e.g. <mesh>.<company>.example",
            )
        domains.setdefault(mesh.trust_domain, i)
        if mesh.trust_domain == "cluster.local":
            yield Problem(
                (*path, "trustDomain"),
                "'cluster.local' is Istio's default trust domain and not unique to this mesh",
                f"choose a trust domain of its own, e.g. {mesh.name}.{fed.name}.example",
            )
        key = (mesh.ingress.address or f"<{mesh.name}'s load balancer>", mesh.ingress.port)
        if key in listeners:
            yield Problem(
                (*path, "ingress"),
                f"{key[0]}:{key[1]} is already the ingress of spec.meshes[{listeners[key]}]",
                "give each mesh's ingress its own address or port",
            )
        listeners.setdefault(key, i)
        yield from check_address(mesh, path, discovery_pending)
        seen: dict[str, int] = {}
        for j, w in enumerate(mesh.workloads):
            if w.ref in seen:
                yield Problem(
                    (*path, "workloads", j),
                    f"workload {w.ref} is already defined at workloads[{seen[w.ref]}]",
                    "give each workload a unique namespace/name",
                )
            seen.setdefault(w.ref, j)


def _check_exports(fed: Federation, discovery_pending: bool) -> Iterator[Problem]:
    seen: dict[tuple[str, str], int] = {}
    meshes = {m.name: m for m in fed.spec.meshes}
    for i, export in enumerate(fed.spec.exports):
        path = ("spec", "exports", i)
        key = (export.mesh, export.name)
        if key in seen:
            yield Problem(
                (*path, "name"),
                f"mesh {export.mesh!r} already exports {export.name!r} at "
                f"spec.exports[{seen[key]}]",
                "give each export of a mesh a unique name",
            )
        seen.setdefault(key, i)
        mesh = meshes.get(export.mesh)
        if mesh is None:
            yield Problem(
                (*path, "mesh"),
                f"no mesh named {export.mesh!r}",
                f"use one of: {', '.join(sorted(meshes))}",
            )
            continue
        workloads = {w.ref: w for w in mesh.workloads}
        workload = workloads.get(export.workload)
        if workload is None and mesh.workloads_omitted:
            if not discovery_pending:
                yield Problem(
                    (*path, "workload"),
                    f"mesh {mesh.name!r} leaves its workloads to discovery in its cluster, "
                    "which only the Kubernetes commands (apply, diff, discover) do",
                    "list the workloads in the spec (`meshfed discover SPEC` prints them), or "
                    "use meshfed apply/diff",
                )
        elif workload is None:
            yield Problem(
                (*path, "workload"),
                f"mesh {mesh.name!r} has no workload {export.workload!r}",
                "add it to the mesh's workloads or use one of: "
                + (", ".join(sorted(workloads)) or "(none defined)"),
            )
        if export.host is not None and (
            export.host.endswith(".local") or export.host.endswith(".cluster.local")
        ):
            yield Problem(
                (*path, "host"),
                f"{export.host!r} is a mesh-internal name; exposing it would leak the "
                "exporting mesh's private naming across the boundary",
                f"use a public name such as {export.name}.{export.mesh}.{fed.name}.global",
            )
        yield from _check_kept_headers(export, path, workload.protocol if workload else None)
        for j in range(len(export.consumers)):
            yield from _check_consumer(
                fed,
                export,
                j,
                (*path, "consumers", j),
                meshes,
                workload.protocol if workload else None,
            )


def _check_kept_headers(
    export: Export, path: tuple[str | int, ...], protocol: str | None
) -> Iterator[Problem]:
    """Each header an export keeps must be one the ingress strips and none that walks around
    what the export's consumers are limited to (`meshfed.spec.headers`)."""
    methods = any(c.methods for c in export.consumers)
    paths = any(c.paths for c in export.consumers)
    seen: dict[str, int] = {}
    for k, name in enumerate(export.keep_request_headers or []):
        where = (*path, "keepRequestHeaders", k)
        if name.lower() in seen:
            yield Problem(
                where,
                f"{name!r} is already listed at keepRequestHeaders[{seen[name.lower()]}]",
                "list each header once",
            )
            continue
        seen[name.lower()] = k
        problem = keep_problem(name, methods, paths, protocol)
        if problem is not None:
            yield Problem(where, problem.message, problem.fix)


def _check_consumer(
    fed: Federation,
    export: Export,
    index: int,
    path: tuple[str | int, ...],
    meshes: dict[str, Mesh],
    protocol: str | None,
) -> Iterator[Problem]:
    consumer = export.consumers[index]
    peer = meshes.get(consumer.mesh)
    if peer is None:
        yield Problem(
            (*path, "mesh"),
            f"no mesh named {consumer.mesh!r}",
            f"use one of: {', '.join(sorted(meshes))}",
        )
    elif peer.name == export.mesh:
        yield Problem(
            (*path, "mesh"),
            f"mesh {export.mesh!r} cannot be a consumer of its own export",
            "list other meshes as consumers; in-mesh traffic does not cross the boundary",
        )
    else:
        for k, principal in enumerate(consumer.principals):
            try:
                parse_principal(principal, peer.trust_domain)
            except ValueError as exc:
                yield Problem(
                    (*path, "principals", k),
                    str(exc),
                    f"write a principal of mesh {peer.name!r} (trust domain {peer.trust_domain})",
                )
    if protocol == "TCP":
        for field in ("methods", "paths"):
            if getattr(consumer, field) is not None:
                yield Problem(
                    (*path, field),
                    f"export {export.name!r} is TCP; {field} can only be enforced on HTTP",
                    f"remove {field}, or make the workload's protocol HTTP",
                )
    for k, method in enumerate(consumer.methods or []):
        if not _METHOD.match(method) or method not in _HTTP_METHODS:
            yield Problem(
                (*path, "methods", k),
                f"{method!r} is not an HTTP method",
                f"use upper case, one of {', '.join(sorted(_HTTP_METHODS))}",
            )
    for k, http_path in enumerate(consumer.paths or []):
        try:
            parse_path(http_path)
        except PathError as exc:
            yield Problem((*path, "paths", k), exc.problem, exc.fix)


def _check_imports(fed: Federation) -> Iterator[Problem]:
    meshes = {m.name: m for m in fed.spec.meshes}
    exports = {f"{e.mesh}/{e.name}": e for e in fed.spec.exports}
    hosts: dict[tuple[str, str], int] = {}
    local_names = {name: _local_names(mesh) for name, mesh in meshes.items()}
    for i, imp in enumerate(fed.spec.imports):
        path = ("spec", "imports", i)
        mesh = meshes.get(imp.mesh)
        if mesh is None:
            yield Problem(
                (*path, "mesh"),
                f"no mesh named {imp.mesh!r}",
                f"use one of: {', '.join(sorted(meshes))}",
            )
            continue
        key = (imp.mesh, imp.host)
        if key in hosts:
            yield Problem(
                (*path, "host"),
                f"mesh {imp.mesh!r} already imports {imp.host!r} at spec.imports[{hosts[key]}]",
                "give each import of a mesh its own local host",
            )
        hosts.setdefault(key, i)
        local = local_names[imp.mesh].get(imp.host)
        if local is not None:
            yield Problem(
                (*path, "host"),
                f"{imp.host!r} is the name of local workload {local} in mesh {imp.mesh!r}; "
                "the import would hijack it",
                "choose a local name no workload of the mesh uses",
            )
        yield from _check_sources(fed, imp, path, exports, meshes)


def _check_sources(
    fed: Federation,
    imp: Import,
    path: tuple[str | int, ...],
    exports: dict[str, Export],
    meshes: dict[str, Mesh],
) -> Iterator[Problem]:
    protocols: set[str] = set()
    seen: set[str] = set()
    for k, ref in enumerate(imp.from_):
        where = (*path, "from", k)
        if ref in seen:
            yield Problem(where, f"{ref!r} is listed twice", "list each source once")
            continue
        seen.add(ref)
        export = exports.get(ref)
        if export is None:
            yield Problem(
                where,
                f"no export {ref!r}",
                "use <mesh>/<export> of an entry in spec.exports: "
                + (", ".join(sorted(exports)) or "(none defined)"),
            )
            continue
        if export.mesh == imp.mesh:
            yield Problem(
                where,
                f"{ref!r} is exported by the importing mesh itself",
                "import only exports of other meshes; call local workloads directly",
            )
            continue
        if not any(c.mesh == imp.mesh for c in export.consumers):
            yield Problem(
                where,
                f"export {ref!r} does not list mesh {imp.mesh!r} as a consumer, so it would "
                "refuse these calls (also as a failover target)",
                f"add a consumer entry for mesh {imp.mesh!r} to that export, or drop it "
                "from the list",
            )
        ns, _, name = export.workload.partition("/")
        for w in meshes[export.mesh].workloads if export.mesh in meshes else []:
            if w.namespace == ns and w.name == name:
                protocols.add(w.protocol)
    if len(protocols) > 1:
        yield Problem(
            (*path, "from"),
            "the sources mix HTTP and TCP exports",
            "fail over only between exports of the same protocol",
        )


def _check_sni(fed: Federation) -> Iterator[Problem]:
    """Each SNI name on a mesh's ingress must lead to exactly one export.

    A mesh serves its exports' hosts, plus, as failover alias, the wire host of every import
    that lists one of its exports after the first source.
    """
    owners: dict[tuple[str, str], str] = {}
    for export in fed.spec.exports:
        key = (export.mesh, fed.export_host(export))
        ref = f"{export.mesh}/{export.name}"
        if key in owners and owners[key] != ref:
            index = fed.spec.exports.index(export)
            yield Problem(
                ("spec", "exports", index, "host"),
                f"host {key[1]!r} is already served by {owners[key]} on mesh {export.mesh!r}",
                "give each export of a mesh its own host",
            )
        owners.setdefault(key, ref)
    exports = {f"{e.mesh}/{e.name}": e for e in fed.spec.exports}
    egress: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for i, imp in enumerate(fed.spec.imports):
        if not imp.from_ or imp.from_[0] not in exports:
            continue
        wire = fed.wire_host(imp)
        first, sources = egress.setdefault((imp.mesh, wire), (i, imp.from_))
        if sources != imp.from_:
            yield Problem(
                ("spec", "imports", i, "from"),
                f"spec.imports[{first}] of mesh {imp.mesh!r} reaches the same remote host "
                f"{wire!r} with a different failover list {sources}",
                "list the same sources in the same order for both, or import another export",
            )
        for k, ref in enumerate(imp.from_[1:], start=1):
            target = exports.get(ref)
            if target is None:
                continue
            key = (target.mesh, wire)
            if key in owners and owners[key] != ref:
                yield Problem(
                    ("spec", "imports", i, "from", k),
                    f"as failover for {imp.from_[0]}, {ref} would also answer to {wire!r}, but "
                    f"on mesh {target.mesh!r} that host already leads to {owners[key]}",
                    "give the exports distinct hosts, or the same host for the same service",
                )
            owners.setdefault(key, ref)


def _check_clusters(fed: Federation) -> Iterator[Problem]:
    """Primary-remote: one primary per mesh; a cluster or context belongs to one place."""
    contexts: dict[str, str] = {}
    for i, mesh in enumerate(fed.spec.meshes):
        path: tuple[str | int, ...] = ("spec", "meshes", i)
        if mesh.clusters is None:
            if mesh.kubernetes is not None and mesh.kubernetes.context is not None:
                context = mesh.kubernetes.context
                if context in contexts:
                    yield Problem(
                        (*path, "kubernetes", "context"),
                        f"context {context!r} is already the cluster of {contexts[context]}; "
                        "two meshes in one cluster would overwrite each other's gateways",
                        "give each mesh its own cluster (context)",
                    )
                contexts.setdefault(context, f"mesh {mesh.name!r}")
            continue
        if mesh.kubernetes is not None and mesh.kubernetes.context is not None:
            yield Problem(
                (*path, "kubernetes", "context"),
                "both kubernetes.context and clusters are set",
                "list the clusters under clusters only (kubernetes.istioNamespace may stay)",
            )
        primaries = [j for j, c in enumerate(mesh.clusters) if c.role == "primary"]
        if len(primaries) != 1:
            yield Problem(
                (*path, "clusters"),
                f"{len(primaries)} clusters have role primary; a mesh has exactly one "
                "(it runs istiod, the remotes use it)",
                "give exactly one cluster role: primary and the others role: remote",
            )
        names: dict[str, int] = {}
        for j, cluster in enumerate(mesh.clusters):
            where = (*path, "clusters", j)
            if cluster.name in names:
                yield Problem(
                    (*where, "name"),
                    f"cluster name {cluster.name!r} is already used by "
                    f"clusters[{names[cluster.name]}]",
                    "give every cluster of the mesh a unique name",
                )
            names.setdefault(cluster.name, j)
            if cluster.context in contexts:
                yield Problem(
                    (*where, "context"),
                    f"context {cluster.context!r} is already the cluster of "
                    f"{contexts[cluster.context]}",
                    "give every cluster its own context",
                )
            contexts.setdefault(cluster.context, f"mesh {mesh.name!r} cluster {cluster.name!r}")
            if cluster.discovery_address is not None and cluster.role != "primary":
                yield Problem(
                    (*where, "discoveryAddress"),
                    "only the primary cluster has a discovery address (remotes use the primary's)",
                    "move discoveryAddress to the primary cluster",
                )
            if cluster.discovery_address is not None and not re.match(
                r"^[A-Za-z0-9]([-A-Za-z0-9.:]*[A-Za-z0-9])?$", cluster.discovery_address
            ):
                yield Problem(
                    (*where, "discoveryAddress"),
                    f"{cluster.discovery_address!r} is neither an IP address nor a DNS name",
                    "use the east-west gateway's load-balancer IP or DNS name",
                )


def _check_names_and_ttls(fed: Federation) -> Iterator[Problem]:
    """What the certificates meshfed issues can hold: names in common names, lifetimes."""
    if len(fed.name) > MAX_FEDERATION_NAME:
        yield Problem(
            ("metadata", "name"),
            f"the federation name has {len(fed.name)} characters; the shared root CA is named "
            f"'<federation> root CA <generation>', and a certificate's common name holds at "
            "most 64",
            f"use a federation name of at most {MAX_FEDERATION_NAME} characters",
        )
    for i, mesh in enumerate(fed.spec.meshes):
        if len(mesh.name) > MAX_MESH_NAME:
            yield Problem(
                ("spec", "meshes", i, "name"),
                f"the mesh name has {len(mesh.name)} characters; its CA is named '<mesh> "
                "intermediate CA <generation>', and a certificate's common name holds at most 64",
                f"use a mesh name of at most {MAX_MESH_NAME} characters",
            )
    for which, field in _TTL_FIELDS:
        if fed.spec.trust.ttl(which) < MIN_TTL:
            yield Problem(
                ("spec", "trust", field),
                f"{getattr(fed.spec.trust, f'{which}_ttl')!r} is shorter than "
                f"{int(MIN_TTL.total_seconds())}s, too short for a certificate to be used",
                f"give {field} at least {int(MIN_TTL.total_seconds())}s (e.g. 24h)",
            )


def check_federation(fed: Federation, *, discovery_pending: bool = False) -> list[Problem]:
    """Every whole-document problem of a type-valid spec.

    ``discovery_pending``: workloads that meshes leave to discovery are not known yet, so
    references to them are checked later, once discovered (the Kubernetes commands).
    """
    return [
        *_check_names_and_ttls(fed),
        *_check_meshes(fed, discovery_pending),
        *check_reserved(fed),
        *_check_clusters(fed),
        *_check_exports(fed, discovery_pending),
        *_check_imports(fed),
        *_check_sni(fed),
        *check_bundles(fed),
    ]
