"""Every mesh has a trust domain of its own: identities of two meshes never look alike."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.install import MeshConfig, mesh_configs
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.spec import SpecSource
from meshfed.audit.yamlsrc import as_str, str_list

ISTIO_DEFAULT = "cluster.local"


def _from_spec(spec: SpecSource) -> Iterator[Hit]:
    owners: dict[str, str] = {}
    for i, mesh in spec.meshes():
        name, domain = as_str(mesh.get("name")) or f"#{i}", as_str(mesh.get("trustDomain"))
        if not domain:
            continue
        where = spec.at("spec", "meshes", i, "trustDomain")
        if domain in owners:
            yield Hit(
                Severity.CRITICAL,
                f"mesh {name} uses trust domain {domain}, already used by mesh {owners[domain]}",
                where,
            )
        owners.setdefault(domain, name)
        if domain == ISTIO_DEFAULT:
            yield Hit(Severity.HIGH, f"mesh {name} uses Istio's default trust domain", where)


def _from_configs(ctx: AuditContext) -> Iterator[Hit]:
    per_scope: list[tuple[str, MeshConfig, str]] = []
    for scope, docs in sorted(ctx.scopes().items()):
        for cfg in mesh_configs(docs):
            domain = as_str(cfg.config.get("trustDomain")) or ISTIO_DEFAULT
            per_scope.append((scope, cfg, domain))
    if not per_scope:
        raise NotAssessed("no meshConfig (IstioOperator or istio ConfigMap) found")
    owners: dict[str, str] = {}
    for scope, cfg, domain in per_scope:
        if domain == ISTIO_DEFAULT:
            yield Hit(
                Severity.HIGH,
                f"{ctx.scope_name(scope)} uses Istio's default trust domain {ISTIO_DEFAULT}"
                + ("" if cfg.config.get("trustDomain") else " (trustDomain not set)"),
                cfg.at("trustDomain"),
            )
        elif domain in owners and owners[domain] != scope:
            yield Hit(
                Severity.CRITICAL,
                f"trust domain {domain} of {ctx.scope_name(scope)} is also that of "
                f"{ctx.scope_name(owners[domain])}",
                cfg.at("trustDomain"),
            )
        owners.setdefault(domain, scope)
    for scope, cfg, _ in per_scope:
        for alias in str_list(cfg.config.get("trustDomainAliases")):
            other = owners.get(alias)
            if other is not None and other != scope:
                yield Hit(
                    Severity.CRITICAL,
                    f"{ctx.scope_name(scope)} accepts {alias}, the trust domain of "
                    f"{ctx.scope_name(other)}, as an alias of its own",
                    cfg.at("trustDomainAliases"),
                    fix="Remove the other mesh's trust domain from trustDomainAliases; federate "
                    "with it through the federation gateways instead.",
                )


@check(
    "trust-domain-unique",
    title="Each mesh has its own trust domain",
    severity=Severity.CRITICAL,
    why="Workload identities are spiffe://<trust domain>/ns/<ns>/sa/<sa>: two meshes with the "
    "same trust domain (or Istio's default cluster.local) mint identical identities, so a "
    "workload of one passes the other's authorization as its own.",
    fix="Give every mesh a unique trust domain such as <mesh>.<company>.example.",
    controls=("IA-9", "SC-7(21)"),
)
def trust_domain_unique(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.spec is not None:
        yield from _from_spec(ctx.spec)
    else:
        yield from _from_configs(ctx)
