"""The mesh trusts other roots and trust domains only as far as it names them.

- ``meshConfig.trustDomainAliases``: identities of each alias are "treated the same" as the
  mesh's own (Istio's mesh config reference): every AuthorizationPolicy principal of the mesh's
  trust domain (and ``cluster.local/...``, Istio's pointer to it) also matches the alias's
  workloads. (An alias that is another audited mesh's domain is reported, critical, by
  ``trust-domain-unique``.)
- ``meshConfig.caCertificates``: a root with neither ``trustDomains`` nor ``certSigners`` is
  used "for all trust domains and all signers": its holder can mint identities of this mesh too.
- istiod's ``PILOT_SKIP_VALIDATE_TRUST_DOMAIN=true`` turns off the check that a peer's
  certificate belongs to the mesh's trust domain, its aliases or a ``caCertificates`` domain.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.install import mesh_configs, pilot_env
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.yamlsrc import as_dict, as_list, as_str, str_list

SKIP_VALIDATE = "PILOT_SKIP_VALIDATE_TRUST_DOMAIN"


def _other_domains(ctx: AuditContext, scope: str) -> set[str]:
    """Trust domains of the other audited meshes (trust-domain-unique reports aliases of them)."""
    out: set[str] = set()
    for other, docs in ctx.scopes().items():
        if other != scope:
            out |= {as_str(c.config.get("trustDomain")) or "" for c in mesh_configs(docs)}
    return out - {""}


@check(
    "mesh-trust-settings",
    title="Trust reaches only the roots and trust domains it names",
    severity=Severity.HIGH,
    why="A trust domain alias makes another domain's workloads pass every policy written for "
    "this mesh's identities; an extra root without trustDomains may vouch for any identity, "
    "this mesh's own included; skipping trust-domain validation accepts any identity a "
    "trusted root signed.",
    fix="Remove trustDomainAliases (keep one only during a trust-domain migration), give every "
    "meshConfig.caCertificates entry its trustDomains, and leave "
    f"{SKIP_VALIDATE} unset.",
    controls=("IA-9", "IA-5(2)", "SC-17", "SC-7(21)"),
)
def mesh_trust_settings(ctx: AuditContext) -> Iterator[Hit]:
    assessed = False
    for scope, docs in sorted(ctx.scopes().items()):
        others = _other_domains(ctx, scope)
        for cfg in mesh_configs(docs):
            assessed = True
            own = as_str(cfg.config.get("trustDomain")) or "cluster.local"
            for j, alias in enumerate(str_list(cfg.config.get("trustDomainAliases"))):
                if alias in others or alias == own:
                    continue
                yield Hit(
                    Severity.HIGH,
                    f"{cfg.source} accepts trust domain {alias} as an alias of {own}: its "
                    f"workloads match every policy that names an identity of {own}",
                    cfg.at("trustDomainAliases", j),
                )
            for k, entry in enumerate(as_list(cfg.config.get("caCertificates"))):
                entry = as_dict(entry)
                if str_list(entry.get("trustDomains")):
                    continue
                signers = str_list(entry.get("certSigners"))
                yield Hit(
                    Severity.MEDIUM if signers else Severity.HIGH,
                    f"caCertificates[{k}] in {cfg.source} names no trustDomains: the root is "
                    f"trusted for every trust domain{' of its signers' if signers else ''}, "
                    f"{own} included, so it can vouch for this mesh's own identities",
                    cfg.at("caCertificates", k),
                    fix="Add trustDomains: [<the domain this root vouches for>] to the entry.",
                )
        for env in pilot_env(docs):
            assessed = True
            if env.name == SKIP_VALIDATE and env.value.strip().lower() in ("true", "1"):
                yield Hit(
                    Severity.HIGH,
                    f"{SKIP_VALIDATE}={env.value} in {env.source}: sidecars accept a peer of any "
                    "trust domain a trusted root signed, not only their own, its aliases and the "
                    "caCertificates domains",
                    env.at(),
                )
    if not assessed:
        raise NotAssessed("no meshConfig or istiod settings (IstioOperator, Helm values, Sail)")
