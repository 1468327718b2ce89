"""Names meshfed keeps for itself in every mesh, and the check that a spec leaves them alone.

meshfed's gateways and its own checks run in one namespace of every mesh, under fixed service
accounts (`meshfed.plan.names` gives them out). A workload declared there would share an
identity with a gateway (which the exporting ingress trusts to vouch for callers, and which
alone may forward a caller's XFCC to a workload) or with meshfed's prober (which no policy may
admit); a principal naming one of them admits meshfed's own traffic instead of a caller's.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshfed.spec.errors import Problem
from meshfed.spec.model import Federation, Mesh
from meshfed.spec.principals import parse_principal
from meshfed.spiffe import namespace_workloads

__all__ = ["EGRESS_GATEWAY", "GATEWAY_NAMESPACE", "INGRESS_GATEWAY", "PROBER", "check_reserved"]

GATEWAY_NAMESPACE = "meshfed-system"
"""The namespace of meshfed's gateways and checks in every mesh."""
INGRESS_GATEWAY = "federation-ingress"
EGRESS_GATEWAY = "federation-egress"
PROBER = "meshfed-prober"
"""Service account of meshfed's own checks (rotation handshakes): no policy admits it, so its
requests are refused as any stranger's, and the boundary log names it."""

_ROLES = {
    PROBER: "meshfed's prober identity (its own checks present it, and no policy may admit it)",
    INGRESS_GATEWAY: "the identity of the mesh's federation ingress (the one peer a workload "
    "accepts a caller's XFCC from)",
    EGRESS_GATEWAY: "the identity of the mesh's federation egress",
}
_FIX = f"put the workload in a namespace of its own: {GATEWAY_NAMESPACE} is meshfed's"


def _workloads(mesh: Mesh, path: tuple[str | int, ...]) -> Iterator[Problem]:
    for j, w in enumerate(mesh.workloads):
        if w.namespace != GATEWAY_NAMESPACE:
            continue
        at = (*path, "workloads", j)
        role = _ROLES.get(w.service_account)
        if role is not None:
            yield Problem(
                (*at, "serviceAccount"),
                f"workload {w.ref} runs as {GATEWAY_NAMESPACE}/{w.service_account}, {role}",
                _FIX,
            )
        else:
            yield Problem(
                (*at, "namespace"),
                f"namespace {GATEWAY_NAMESPACE} is meshfed's own (its gateways and checks run "
                f"there); workload {w.ref} cannot be declared in it",
                _FIX,
            )


def _principals(fed: Federation) -> Iterator[Problem]:
    """Principals that match only meshfed's own identities of the consumer mesh."""
    meshes = {m.name: m for m in fed.spec.meshes}
    for i, export in enumerate(fed.spec.exports):
        for j, consumer in enumerate(export.consumers):
            peer = meshes.get(consumer.mesh)
            if peer is None:
                continue  # reported by the export checks
            reserved = namespace_workloads(peer.trust_domain, GATEWAY_NAMESPACE)
            for k, principal in enumerate(consumer.principals):
                try:
                    match = parse_principal(principal, peer.trust_domain)
                except ValueError:
                    continue  # reported by the export checks
                if match.within(reserved):
                    yield Problem(
                        ("spec", "exports", i, "consumers", j, "principals", k),
                        f"{principal!r} names meshfed's own identities in mesh {peer.name} "
                        f"(namespace {GATEWAY_NAMESPACE}: its gateways and prober), not a caller",
                        "name the calling workloads: ns/<namespace>/sa/<service account>",
                    )


def check_reserved(fed: Federation) -> Iterator[Problem]:
    """Workloads declared in meshfed's namespace, principals naming meshfed's identities."""
    for i, mesh in enumerate(fed.spec.meshes):
        yield from _workloads(mesh, ("spec", "meshes", i))
    yield from _principals(fed)
