"""What is valid but probably not meant: warnings, reported by ``validate`` (and by ``audit`` as
findings), fatal with ``--strict``."""

from __future__ import annotations

import difflib
from collections.abc import Iterator

from meshfed.spec.errors import Problem
from meshfed.spec.model import Federation
from meshfed.spec.principals import parse_principal
from meshfed.spiffe import relative_to, workload_id

__all__ = ["unmatched_principals", "warn_federation"]


def unmatched_principals(fed: Federation) -> Iterator[Problem]:
    """Principals that match no workload the consumer mesh declares (a typo, most likely).

    A warning, not an error: the mesh may run workloads the spec does not list. Meshes whose
    workloads are discovered from their clusters are not judged here.
    """
    meshes = {m.name: m for m in fed.spec.meshes}
    for i, export in enumerate(fed.spec.exports):
        for j, consumer in enumerate(export.consumers):
            mesh = meshes.get(consumer.mesh)
            if mesh is None or mesh.workloads_omitted:
                continue
            ids = {
                workload_id(mesh.trust_domain, w.namespace, w.service_account)
                for w in mesh.workloads
            }
            for k, principal in enumerate(consumer.principals):
                try:
                    match = parse_principal(principal, mesh.trust_domain)
                except ValueError:
                    continue  # an error already
                if any(match.matches(identity) for identity in ids):
                    continue
                known = sorted(relative_to(identity, mesh.trust_domain) for identity in ids)
                close = difflib.get_close_matches(
                    relative_to(principal, mesh.trust_domain), known, 1
                )
                listed = ", ".join(known) if known else "none"
                yield Problem(
                    ("spec", "exports", i, "consumers", j, "principals", k),
                    f"{principal!r} matches no workload mesh {mesh.name!r} declares (its "
                    f"service accounts: {listed})",
                    (f"did you mean {close[0]!r}? " if close else "")
                    + "name a declared workload's ns/<namespace>/sa/<service account>, or add "
                    "the workload to the mesh",
                )


def warn_federation(fed: Federation) -> list[Problem]:
    """What is valid but probably not meant: reported by validate, fatal with --strict."""
    return list(unmatched_principals(fed))
