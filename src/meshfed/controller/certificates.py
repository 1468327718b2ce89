"""The meshes' certificates in the status: when each is renewed, and which intermediates
expire soon (a warning: an intermediate is replaced by a rotation, which a person starts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from meshfed.controller.status import MeshReport
from meshfed.kube.workspace import KubeWorkspace
from meshfed.pki.leaves import kept_leaf
from meshfed.plan.names import INGRESS_GATEWAY


def certificates(
    kws: KubeWorkspace, reports: Mapping[str, MeshReport], now: datetime
) -> datetime | None:
    """Each mesh's intermediate and ingress certificate in its report, with when they are
    renewed; returns the soonest renewal of an ingress certificate."""
    soonest: datetime | None = None
    for mesh, ca in kws.ws.pki.meshes.items():
        report = reports.get(mesh)
        if report is None:
            continue
        entries = []
        leaf = kept_leaf(kws.ws.state_dir, mesh, INGRESS_GATEWAY)
        for label, cert in (("intermediate", ca.ca_cert), ("ingress", leaf)):
            if cert is None:
                continue
            start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
            renew = start + (end - start) * 2 / 3
            entries.append({"name": label, "notAfter": _stamp(end), "renewAt": _stamp(renew)})
            if label == "ingress":
                soonest = renew if soonest is None else min(soonest, renew)
        report.certificates = entries
    return soonest


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def expiring(meshes: Iterable[MeshReport], now: datetime, within: timedelta) -> list[str]:
    """Intermediates that expire within ``within`` (reported as warnings: an intermediate is
    replaced by a rotation, which a person starts)."""
    out = []
    for report in meshes:
        for cert in report.certificates:
            if cert["name"] != "intermediate":
                continue
            end = datetime.strptime(cert["notAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if end - now < within:
                out.append(f"mesh {report.name}: intermediate CA expires {cert['notAfter']}")
    return out


__all__ = ["certificates", "expiring"]
