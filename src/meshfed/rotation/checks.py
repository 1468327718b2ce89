"""What a rotation step checks: chains against the plan's bundles, real handshakes with the
running local federation, and the roots its Envoys were given (SDS)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from cryptography import x509

from meshfed.pki import MeshCA, PKIMaterial
from meshfed.pki.certs import describe, issued_by, load_certs_pem
from meshfed.pki.errors import PKIError
from meshfed.pki.record import RotationRecord
from meshfed.pki.verify import verify_chain
from meshfed.plan.model import FederationPlan, TrustBundle
from meshfed.plan.names import prober_spiffe_id
from meshfed.rotation.live import LiveFederation, handshake, sds_bundles
from meshfed.workspace import Workspace

TEST_TTL = timedelta(minutes=10)
RETRIES = 4


def verify_live(
    live: LiveFederation,
    ws: Workspace,
    record: RotationRecord,
    cas: dict[str, dict[str, MeshCA]],
    accept: list[str],
    refuse: list[str],
    served: str | None,
    now: datetime,
    problems: list[str],
) -> tuple[int, int]:
    """Real handshakes with every target of the running federation, with certificates of the
    generations to ``accept`` and to ``refuse``, and the Envoys' SDS roots checked the same
    way; ``served`` names the generation every served certificate must come from. Problems go
    to ``problems``; returns (handshakes, SDS checks)."""
    shakes = 0
    for target in live.targets(ws.plan):
        if target.client_mesh in record.meshes:
            tries = [
                (g, cas[g][target.client_mesh], g in accept) for g in accept + refuse if g in cas
            ]
        else:
            tries = [("current", ws.pki.meshes[target.client_mesh], True)]
        for gen, ca, expect in tries:
            result = handshake(target, ca, now, live.ledger)
            shakes += 1
            for _ in range(RETRIES):  # a listener may be between two contexts for a moment
                if result.accepted == expect:
                    break
                time.sleep(0.2)
                result = handshake(target, ca, now, live.ledger)
                shakes += 1
            if result.accepted != expect:
                want = "accepted" if expect else "refused"
                problems.append(
                    f"{target.describe()} with a {gen}-CA certificate: expected {want}, got "
                    f"{result.detail}"
                )
            if result.served is not None:
                _check_served(ws, record, cas, target.mesh, target.process, result.served,
                                   served, now, problems)  # fmt: skip
    sds = 0
    domains = {ws.pki.meshes[m].trust_domain: m for m in record.meshes if m in ws.pki.meshes}
    for process in live.processes(ws.plan):
        for secret, bundles in sds_bundles(live.paths, process).items():
            for domain, pem in bundles.items():
                mesh = domains.get(domain)
                if mesh is None:
                    continue
                roots = load_certs_pem(pem.encode(), f"{process.name} {secret}")
                checked, wrong = _judged(cas, mesh, roots, accept, refuse, now)
                sds += checked
                problems += [
                    f"{process.name} {secret} for {domain}: a {gen}-CA certificate is {verdict}"
                    for gen, verdict in wrong
                ]
    return shakes, sds


def _check_served(
    ws: Workspace,
    record: RotationRecord,
    cas: dict[str, dict[str, MeshCA]],
    mesh: str,
    process: str,
    cert: x509.Certificate,
    served: str | None,
    now: datetime,
    problems: list[str],
) -> None:
    ca = ws.pki.meshes[mesh]
    intermediates = [ca.ca_cert] + [c[mesh].ca_cert for c in cas.values() if mesh in c]
    try:
        verify_chain(cert, intermediates, list(ws.pki.anchors(ca.root_name)), now,
                     purpose="server")  # fmt: skip
    except PKIError as exc:
        problems.append(f"{process} serves {describe(cert)}: {exc.problem}")
        return
    if (
        served is not None
        and mesh in record.meshes
        and served in cas
        and not issued_by(cert, cas[served][mesh].ca_cert)
    ):
        problems.append(
            f"{process} still serves a certificate not issued by the {served} "
            f"intermediate of {mesh} ({describe(cert)})"
        )


def _judged(
    cas: dict[str, dict[str, MeshCA]],
    mesh: str,
    roots: list[x509.Certificate],
    accept: list[str],
    refuse: list[str],
    now: datetime,
) -> tuple[int, list[tuple[str, str]]]:
    """A leaf of ``mesh`` from each generation in ``accept`` must verify against ``roots``, one
    from each in ``refuse`` must not: how many were checked, and (generation, 'accepted' or
    'refused') for each that went the other way."""
    checked, wrong = 0, []
    for gen, expect in [(g, True) for g in accept] + [(g, False) for g in refuse]:
        if gen not in cas:
            continue
        checked += 1
        ok = _leaf_verifies(cas[gen][mesh], roots, now)
        if ok != expect:
            wrong.append((gen, "accepted" if ok else "refused"))
    return checked, wrong


def _leaf_verifies(ca: MeshCA, roots: list[x509.Certificate], now: datetime) -> bool:
    spiffe_id = prober_spiffe_id(ca.trust_domain)
    _, leaf = ca.issue(spiffe_id, TEST_TTL, now)
    try:
        verify_chain(leaf, [ca.ca_cert], roots, now, spiffe_id)
    except PKIError:
        return False
    return True


def _plan_bundles(plan: FederationPlan) -> list[tuple[str, TrustBundle]]:
    out: list[tuple[str, TrustBundle]] = []
    for m in plan.meshes:
        for what, bundles in (
            ("ingress", m.ingress.trusted),
            ("workloads", m.workload_trust),
            ("local", m.local_trust),
            *((f"import {r.local_host}", r.trusted) for r in m.imports),
        ):
            out += [(f"{m.name} {what} bundle {b.name}", b) for b in bundles]
    return out


def check_bundles(
    plan: FederationPlan,
    pki: PKIMaterial,
    record: RotationRecord,
    cas: dict[str, dict[str, MeshCA]],
    accept: list[str],
    refuse: list[str],
    now: datetime,
    problems: list[str],
) -> int:
    """Every trust bundle of the plan accepts a leaf of each generation in ``accept`` and
    refuses one of each in ``refuse``, for the rotating meshes' trust domains; problems go to
    ``problems``; returns the number of chains checked."""
    domains = {pki.meshes[m].trust_domain: m for m in record.meshes if m in pki.meshes}
    count = 0
    for where, bundle in _plan_bundles(plan):
        roots = load_certs_pem(bundle.pem.encode(), where)
        for domain in bundle.trust_domains:
            mesh = domains.get(domain)
            if mesh is None:
                continue
            checked, wrong = _judged(cas, mesh, roots, accept, refuse, now)
            count += checked
            problems += [
                f"{where} ({domain}): a {gen}-CA certificate is {verdict}" for gen, verdict in wrong
            ]
    return count
