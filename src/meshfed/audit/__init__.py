"""Compliance audit of a federation: a spec (with its PKI state) or any tree of Istio manifests.

Each check (``audit/checks/``, one concept per module) reports findings with severity, object,
why and fix, and names the NIST SP 800-53 / PCI DSS controls it evidences (``controls.py``).
"""

from meshfed.audit.context import AuditOptions
from meshfed.audit.model import Finding, Location, Report, Severity
from meshfed.audit.run import audit_manifests, audit_spec

__all__ = [
    "AuditOptions",
    "Finding",
    "Location",
    "Report",
    "Severity",
    "audit_manifests",
    "audit_spec",
]
