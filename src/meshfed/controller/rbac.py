"""What the controller may do, verb by verb: on the management cluster, and on each mesh
cluster it reconciles (through the remote secret ``meshfed controller install`` makes there).

Nothing here is a wildcard. Every rule is there because a named part of the controller needs
it (the comments say which); ``tests/test_controller_manifests.py`` checks that each kind
meshfed renders is covered, and the integration suite runs the controller with exactly these
rules.
"""

from __future__ import annotations

from typing import Any

from meshfed.controller.crd import GROUP, PLURAL
from meshfed.kube.remote_secret import reader_role_name
from meshfed.kube.targets import PRUNE_KINDS
from meshfed.plan.names import EGRESS_GATEWAY, INGRESS_GATEWAY
from meshfed.render.istio.multicluster import EASTWEST_GATEWAY

Rule = dict[str, Any]

# -- management cluster ----------------------------------------------------------------------

MANAGEMENT_CLUSTER_RULES: list[Rule] = [
    # kopf watches Federations cluster-wide and keeps its progress in their annotations
    # (patch); the finalizer lets a deleted Federation's clusters be cleaned up first.
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    # Status: conditions, per mesh, per import.
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
    # kopf follows which resources the cluster serves through the CRDs (read only).
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    },
]

MANAGEMENT_NAMESPACE_RULES: list[Rule] = [
    # PKI state (one Secret per federation) and the remote secrets reaching mesh clusters.
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get", "list", "watch", "create", "update", "patch"],
    },
    # Leader election.
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["meshfed-controller"],
        "verbs": ["update"],
    },
    # Events about Federations (cluster-scoped objects: kopf posts them in its own namespace).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]

# -- each mesh cluster -----------------------------------------------------------------------

GATEWAY_ROLES = frozenset({INGRESS_GATEWAY, EGRESS_GATEWAY, EASTWEST_GATEWAY})
"""The Roles ``render/istio`` gives the gateways' ServiceAccounts."""
_WRITE = ["get", "list", "watch", "create", "patch", "delete"]
"""Server-side apply creates what is missing (``create``) and updates (``patch``)."""


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def plural_of(kind: str) -> str:
    """The resource name of a kind meshfed renders (English plural, lower case)."""
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    return lower + ("es" if lower.endswith("s") else "s")


def target_cluster_rules(istio_namespaces: tuple[str, ...] = ("istio-system",)) -> list[Rule]:
    """The ClusterRole meshfed's controller holds on a mesh cluster."""
    by_group: dict[str, list[str]] = {}
    for api_version, kind in PRUNE_KINDS:
        plural = plural_of(kind)
        by_group.setdefault(_group(api_version), []).append(plural)
    rules: list[Rule] = [
        # Server-side apply (create, patch), drift watches (watch), prune by labels (list,
        # delete). Secrets: also the reader tokens for remote secrets (generateName).
        {"apiGroups": [group], "resources": sorted(resources), "verbs": _WRITE}
        for group, resources in sorted(by_group.items())
    ]
    reader_roles = sorted(reader_role_name(ns) for ns in istio_namespaces)
    rules += [
        # The gateway namespace (and an Istio namespace on a bare remote) are applied;
        # namespaces are never deleted.
        {
            "apiGroups": [""],
            "resources": ["namespaces"],
            "verbs": ["get", "list", "create", "patch"],
        },
        # Discovery: the pods behind a Service give its service account (watched, by label
        # selector, so that a rollout to a new ServiceAccount is seen: controller/discovery.py).
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        # Discovery where the MCS API is installed.
        {
            "apiGroups": ["multicluster.x-k8s.io"],
            "resources": ["serviceexports"],
            "verbs": ["list", "watch"],
        },
        # On a remote: Istio's reader ClusterRole and its binding, by name only. ``escalate``
        # and ``bind`` let the controller grant istiod's reader what the controller itself
        # does not hold (cluster-wide reads), for that one role and nothing else.
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "resourceNames": reader_roles,
            "verbs": ["get", "create", "patch", "delete", "escalate", "bind"],
        },
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterrolebindings"],
            "resourceNames": reader_roles,
            "verbs": ["get", "create", "patch", "delete"],
        },
        # The gateways' Roles (secret reading for SDS) are bound by RoleBindings meshfed
        # applies: ``bind`` on those Roles only, so the binding is allowed before the Role
        # exists (a dry-run) and whatever the Role grants.
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["roles"],
            "resourceNames": sorted(GATEWAY_ROLES),
            "verbs": ["bind", "escalate"],
        },
        # The dry-run of an object in a namespace that does not exist yet asks the authorizer.
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["selfsubjectaccessreviews"],
            "verbs": ["create"],
        },
    ]
    return rules
