"""Clients keep Istio mTLS toward mesh services: no DestinationRule turns it off (DISABLE) or
replaces it with TLS of their own (SIMPLE, MUTUAL), and no TLS origination skips verifying the
server (``insecureSkipVerify``).

A DestinationRule's client TLS settings sit in ``trafficPolicy.tls``, per port in
``trafficPolicy.portLevelSettings[].tls``, and per subset in ``subsets[].trafficPolicy`` (the same
two places). A rule in the root namespace is the mesh-wide fallback for its host; without
``exportTo`` a rule reaches the clients of every namespace.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext
from meshfed.audit.install import root_namespace
from meshfed.audit.istio import istio, of_kind
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import FieldPath, Obj, as_dict, as_list, as_str, str_list

_MESH_WILDCARDS = ("*", "*.local", "*.cluster.local", "*.svc.cluster.local")


def tls_settings(dr: Doc) -> list[tuple[FieldPath, Obj, str]]:
    """(field path, tls settings, where) of every client TLS block of a DestinationRule."""
    out: list[tuple[FieldPath, Obj, str]] = []

    def policy(path: FieldPath, tp: Obj, where: str) -> None:
        if isinstance(tp.get("tls"), dict):
            out.append(((*path, "tls"), tp["tls"], where))
        for i, port in enumerate(as_list(tp.get("portLevelSettings"))):
            port = as_dict(port)
            number = as_dict(port.get("port")).get("number")
            if isinstance(port.get("tls"), dict):
                path_i = (*path, "portLevelSettings", i, "tls")
                out.append((path_i, port["tls"], f"{where}, port {number}"))

    policy(("spec", "trafficPolicy"), as_dict(dr.spec.get("trafficPolicy")), "trafficPolicy")
    for j, subset in enumerate(as_list(dr.spec.get("subsets"))):
        subset = as_dict(subset)
        name = as_str(subset.get("name")) or str(j)
        tp = as_dict(subset.get("trafficPolicy"))
        policy(("spec", "subsets", j, "trafficPolicy"), tp, f"subset {name}")
    return out


def _external_hosts(docs: list[Doc]) -> set[str]:
    out: set[str] = set()
    for se in istio(docs, "ServiceEntry"):
        if (as_str(se.spec.get("location")) or "MESH_EXTERNAL") == "MESH_EXTERNAL":
            out.update(str_list(se.spec.get("hosts")))
    return out


def _internal_hosts(docs: list[Doc]) -> set[str]:
    out = {f"{s.name}.{s.namespace}.svc.cluster.local" for s in of_kind(docs, "Service")}
    for se in istio(docs, "ServiceEntry"):
        if as_str(se.spec.get("location")) == "MESH_INTERNAL":
            out.update(str_list(se.spec.get("hosts")))
    return out


def mesh_host(host: str, docs: list[Doc]) -> bool:
    """Whether a DestinationRule host names services inside the mesh (Kubernetes services,
    MESH_INTERNAL ServiceEntries, cluster-local names and wildcards over them)."""
    if host in _external_hosts(docs):
        return False
    if host in _MESH_WILDCARDS or host in _internal_hosts(docs):
        return True
    parts = host.split(".")
    return len(parts) == 1 or host.endswith(".local") or (len(parts) >= 3 and parts[2] == "svc")


def _reach(dr: Doc, root: str) -> tuple[str, bool]:
    """Who the rule reaches, and whether that is every client of the mesh."""
    export = str_list(dr.spec.get("exportTo"))
    selector = as_dict(dr.spec.get("workloadSelector"))
    if selector:
        return f"the clients it selects in namespace {dr.namespace}", False
    if dr.namespace == root:
        return f"every client (root namespace {root})", not export or "*" in export
    if not export or "*" in export:
        return "clients in every namespace", True
    return f"clients in {', '.join(export)}", False


@check(
    "destination-rule-tls",
    title="Clients keep Istio mTLS toward mesh services",
    severity=Severity.CRITICAL,
    why="A DestinationRule's client TLS settings override Istio's automatic mTLS: DISABLE sends "
    "plaintext (a PERMISSIVE workload accepts it, without the caller's identity), SIMPLE or "
    "MUTUAL originates TLS without the workload's Istio identity, and insecureSkipVerify "
    "accepts any server certificate.",
    fix="Remove trafficPolicy.tls from rules for mesh services (Istio then uses mTLS), or set "
    "tls.mode ISTIO_MUTUAL; never set insecureSkipVerify.",
    controls=("SC-8", "SC-8(1)", "IA-3", "IA-9", "PCI 4.2.1"),
)
def destination_rule_tls(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    for docs in ctx.scopes().values():
        root = root_namespace(docs)
        for dr in istio(docs, "DestinationRule"):
            yield from _rule(dr, docs, root)


def _rule(dr: Doc, docs: list[Doc], root: str) -> Iterator[Hit]:
    host = as_str(dr.spec.get("host")) or ""
    in_mesh = mesh_host(host, docs)
    reach, everyone = _reach(dr, root)
    for path, tls, where in tls_settings(dr):
        mode = as_str(tls.get("mode")) or "DISABLE"
        if tls.get("insecureSkipVerify") is True:
            yield Hit(
                Severity.HIGH,
                f"{dr.name} ({where}) originates TLS to {host} with insecureSkipVerify: any "
                "server certificate is accepted, so anyone on the path can impersonate it",
                dr.at(*path, "insecureSkipVerify"),
            )
        if not in_mesh:
            continue
        if mode == "DISABLE":
            wide = host in _MESH_WILDCARDS and everyone
            yield Hit(
                Severity.CRITICAL if wide else Severity.HIGH,
                f"{dr.name} ({where}) turns mTLS off toward {host} for {reach}: they send "
                "plaintext, without their identity",
                dr.at(*path, "mode") if "mode" in tls else dr.at(*path),
            )
        elif mode in ("SIMPLE", "MUTUAL"):
            yield Hit(
                Severity.MEDIUM,
                f"{dr.name} ({where}) makes {reach} originate their own {mode} TLS toward the "
                f"mesh service {host}: the workload's Istio identity is not presented, so "
                "authorization on principals cannot see it",
                dr.at(*path, "mode"),
            )
