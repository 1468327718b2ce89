"""Where an importing mesh's callers live: the namespaces whose sidecars need the import subsets
in a DestinationRule of their own (Istio: `MeshPlan.caller_namespaces`).

A caller of an import is a workload of the importing mesh that an exporter behind the import
admits: its identity matches a principal of one of the export's consumer rules for that mesh
(the rules the exporter's ingress enforces for the import's wire host, aliases included). The
workloads are those the plan knows (the spec's, or discovery's in the cluster), so a caller the
plan does not know (a Job with no Service, a Service discovery does not list) gets nothing here;
``meshfed audit`` still reports a rule that hides the subsets from its namespace.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshfed.plan.names import GATEWAY_NAMESPACE
from meshfed.plan.rules import Workload
from meshfed.spiffe import PrincipalMatch

__all__ = ["caller_namespaces"]


def caller_namespaces(
    workloads: Iterable[Workload], principals: Iterable[PrincipalMatch]
) -> tuple[str, ...]:
    """The namespaces (sorted, without meshfed's own) of the ``workloads`` some of the
    ``principals`` admit. ``principals``: every principal of the importing mesh's consumer rules
    of the exports its imports reach."""
    exact: set[str] = set()
    prefixes: set[str] = set()
    for p in principals:
        (prefixes if p.prefix else exact).add(p.value)
    found: set[str] = set()
    for w in workloads:
        if w.namespace in found or w.namespace == GATEWAY_NAMESPACE:
            continue
        if w.spiffe_id in exact or any(w.spiffe_id.startswith(p) for p in prefixes):
            found.add(w.namespace)
    return tuple(sorted(found))
