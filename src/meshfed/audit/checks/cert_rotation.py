"""CA and gateway/workload certificates are rotated before they expire.

A certificate is due once it is inside its rotation window before expiry: ``--window``, or by
default the last third of its lifetime (when meshfed renews gateway certificates).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.0f} days" if abs(days) >= 2 else f"{delta.total_seconds() / 3600:.0f} hours"


@check(
    "certificate-rotation",
    title="Certificates are inside their validity and rotation window",
    severity=Severity.CRITICAL,
    why="An expired CA or gateway certificate breaks every federated call at once; one close "
    "to expiry leaves no time to roll a new chain out to every peer that trusts it.",
    fix="Rotate the certificate: re-issue it (for meshfed's PKI: renew the CA and re-run "
    "`meshfed render`), distribute the new chain, and watch expiry dates.",
    controls=("SC-12", "SC-17", "IA-5(2)", "PCI 4.2.1"),
)
def certificate_rotation(ctx: AuditContext) -> Iterator[Hit]:
    records = ctx.certificates
    if not records:
        raise NotAssessed(ctx.certificate_source())
    now = ctx.options.now
    for record in records:
        cert = record.cert
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        window = ctx.options.window or (end - start) / 3
        what = f"{record.role} certificate {record.subject}"
        if now >= end:
            yield Hit(
                Severity.CRITICAL,
                f"{what} expired on {end:%Y-%m-%d %H:%M} UTC",
                record.location,
            )
        elif now < start:
            yield Hit(
                Severity.MEDIUM,
                f"{what} is not valid before {start:%Y-%m-%d %H:%M} UTC (clock skew?)",
                record.location,
                fix="Check the issuing machine's clock and re-issue the certificate.",
            )
        elif now >= end - window:
            yield Hit(
                Severity.HIGH if record.role != "leaf" else Severity.MEDIUM,
                f"{what} expires on {end:%Y-%m-%d} (in {_days(end - now)}), inside its "
                f"rotation window of {_days(window)}",
                record.location,
            )
