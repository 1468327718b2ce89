"""Where federated traffic lands, mTLS is STRICT: the gateway namespaces and the namespaces of
the workloads the ingress routes to (PeerAuthentication; Istio's default is PERMISSIVE)."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.install import root_namespace
from meshfed.audit.istio import (
    bound_virtual_services,
    control_plane_only,
    gateway_workloads,
    host_namespace,
    istio,
    of_kind,
    route_destinations,
)
from meshfed.audit.model import Location, Severity
from meshfed.audit.peer_auth import has_selector, mode_of, port_modes
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc

_WEAK = {"PERMISSIVE": Severity.HIGH, "DISABLE": Severity.CRITICAL}


def federation_namespaces(docs: list[Doc]) -> dict[str, Location]:
    """Namespaces that must be STRICT, each with the object that makes it so."""
    out: dict[str, Location] = {}
    for workload in gateway_workloads(docs):
        out.setdefault(workload.namespace, workload.location())
        if workload.role != "ingress" or all(
            control_plane_only(g, docs) for g in workload.gateways
        ):
            continue  # istiod's own port terminates and authenticates the remotes' mTLS
        for vs in bound_virtual_services(docs, workload):
            for host, path in route_destinations(vs):
                ns = host_namespace(host, vs.namespace)
                if ns is not None:
                    out.setdefault(ns, vs.at(*path))
    return out


@check(
    "peer-authentication-strict",
    title="mTLS is STRICT where federated traffic lands",
    severity=Severity.CRITICAL,
    why="With PERMISSIVE (Istio's default) or DISABLE, workloads also accept plaintext: traffic "
    "is neither encrypted nor authenticated, and authorization on principals can be bypassed "
    "by any in-cluster client that skips mTLS.",
    fix="Add a PeerAuthentication with mtls.mode STRICT in the namespace (or mesh-wide in the "
    "root namespace), and no PERMISSIVE/DISABLE exceptions for these workloads.",
    controls=("SC-8", "SC-8(1)", "IA-3", "IA-9"),
)
def peer_authentication_strict(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    found = False
    for docs in ctx.scopes().values():
        needed = federation_namespaces(docs)
        found = found or bool(needed)
        root = root_namespace(docs)
        pas = istio(docs, "PeerAuthentication")
        mesh_wide = [p for p in pas if p.namespace == root and not has_selector(p) and mode_of(p)]
        for ns, reason in sorted(needed.items()):
            ns_wide = [p for p in pas if p.namespace == ns and not has_selector(p) and mode_of(p)]
            chosen = ns_wide or mesh_wide
            if not chosen:
                namespace_doc = next((d for d in of_kind(docs, "Namespace") if d.name == ns), None)
                yield Hit(
                    Severity.HIGH,
                    f"no PeerAuthentication makes mTLS STRICT in namespace {ns} (Istio's "
                    "default: PERMISSIVE, plaintext accepted)",
                    namespace_doc.at() if namespace_doc else reason,
                )
            else:
                effective = chosen[0]
                mode = mode_of(effective) or ""
                if mode in _WEAK:
                    yield Hit(
                        _WEAK[mode],
                        f"mTLS is {mode} in namespace {ns} ({effective.namespace}/"
                        f"{effective.name})",
                        effective.at("spec", "mtls", "mode"),
                    )
            for pa in pas:
                if pa.namespace != ns:
                    continue
                if has_selector(pa) and mode_of(pa) in _WEAK:
                    mode = mode_of(pa) or ""
                    yield Hit(
                        _WEAK[mode],
                        f"{pa.name} sets mTLS {mode} for workloads in namespace {ns}",
                        pa.at("spec", "mtls", "mode"),
                    )
                for port, port_mode in port_modes(pa):
                    if port_mode in _WEAK:
                        mode = port_mode or ""
                        yield Hit(
                            _WEAK[mode],
                            f"{pa.name} sets mTLS {mode} on port {port} in namespace {ns}",
                            pa.at("spec", "portLevelMtls", port),
                        )
    if not found:
        raise NotAssessed("no federation gateway found")
