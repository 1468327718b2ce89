"""The plan: every security decision of a federation, made once, for renderers to translate.

`build_plan` resolves a checked spec and its root PEMs (use `meshfed.workspace`, the one place
that does); `security_diff` words what a change of plan widens or narrows.
"""

from meshfed.plan.boundary import BoundaryPolicy, ClientCertPolicy, LocalReplyPolicy, PathPolicy
from meshfed.plan.build import build_plan
from meshfed.plan.diff import SecurityChange, security_diff
from meshfed.plan.guard import WorkloadGuard
from meshfed.plan.limits import FailoverPolicy, ListenerLimits, MeshLimits
from meshfed.plan.model import (
    AllowRule,
    ClusterPlan,
    Egress,
    EgressRoute,
    FederationPlan,
    ImportRoute,
    Ingress,
    IngressServer,
    MeshPlan,
    PathMatch,
    PrincipalMatch,
    Source,
    TrustBundle,
    Workload,
)
from meshfed.plan.probes import ProbeMarking
from meshfed.plan.trust import root_pems, trust_request

__all__ = [
    "AllowRule",
    "BoundaryPolicy",
    "ClientCertPolicy",
    "ClusterPlan",
    "Egress",
    "EgressRoute",
    "FailoverPolicy",
    "FederationPlan",
    "ImportRoute",
    "Ingress",
    "IngressServer",
    "ListenerLimits",
    "LocalReplyPolicy",
    "MeshLimits",
    "MeshPlan",
    "PathMatch",
    "PathPolicy",
    "PrincipalMatch",
    "ProbeMarking",
    "SecurityChange",
    "Source",
    "TrustBundle",
    "Workload",
    "WorkloadGuard",
    "build_plan",
    "root_pems",
    "security_diff",
    "trust_request",
]
