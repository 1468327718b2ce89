"""Every intermediate CA is name-constrained to its mesh's trust domain (URI NameConstraints),
so one mesh's CA cannot mint another mesh's identities."""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.install import mesh_configs
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.yamlsrc import as_str
from meshfed.pki.certs import is_cross_certificate, permitted_uri_domains


def _expected_domains(ctx: AuditContext) -> dict[str, str]:
    """scope (mesh) -> trust domain, where known."""
    if ctx.spec is not None:
        return ctx.spec.trust_domains()
    out: dict[str, str] = {}
    for scope, docs in ctx.scopes().items():
        domains = {as_str(c.config.get("trustDomain")) for c in mesh_configs(docs)} - {None}
        if len(domains) == 1:
            out[scope] = str(domains.pop())
    return out


@check(
    "intermediate-name-constraints",
    title="Intermediate CAs are limited to their trust domain",
    severity=Severity.HIGH,
    why="An intermediate CA without a URI name constraint can sign any SPIFFE identity: whoever "
    "obtains it (or the mesh it serves) can impersonate workloads of every mesh that trusts "
    "the same root.",
    fix="Re-issue the intermediate with NameConstraints permitting exactly the URI host of its "
    "mesh's trust domain (meshfed's PKI does this), and roll out the new cacerts.",
    controls=("SC-17", "SC-7(21)", "IA-9"),
)
def intermediate_name_constraints(ctx: AuditContext) -> Iterator[Hit]:
    intermediates = [r for r in ctx.certificates if r.role == "intermediate"]
    if not intermediates:
        raise NotAssessed(
            ctx.certificate_source() if not ctx.certificates else "no intermediate CA found"
        )
    expected = _expected_domains(ctx)
    for record in intermediates:
        permitted = permitted_uri_domains(record.cert)
        if not permitted:
            yield Hit(
                Severity.HIGH,
                f"intermediate CA {record.subject} has no URI name constraint: it can issue "
                "identities of any trust domain",
                record.location,
            )
            continue
        if is_cross_certificate(record.cert):
            # A federation anchor's cross-certificate of a partner root (Federated ingress
            # ca.crt): limited to that partner's trust domain, not to this mesh's.
            foreign = sorted(set(permitted) - set(expected.values()))
            if expected and foreign:
                yield Hit(
                    Severity.HIGH,
                    f"cross-certificate {record.subject} is constrained to {', '.join(foreign)}, "
                    "not to a trust domain of the federation",
                    record.location,
                )
            continue
        domain = expected.get(record.scope)
        if domain is not None and domain not in permitted:
            yield Hit(
                Severity.HIGH,
                f"intermediate CA {record.subject} is constrained to {', '.join(permitted)}, "
                f"not to the mesh's trust domain {domain}",
                record.location,
            )
