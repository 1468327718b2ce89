"""The federation controller: meshfed in Kubernetes, reconciling continuously (a sink over
``kube/``). The decisions are pure (``ordering``, ``drift``, ``status``, ``leader.decide``,
``crd``); ``reconcile``, ``worker`` and ``operator`` (kopf) act on them."""

from meshfed.controller.crd import federation_crd, federation_schema
from meshfed.controller.manifests import ControllerOptions, management_manifests, target_manifests
from meshfed.controller.ordering import edge_changes, frozen_meshes, union_spec, waves
from meshfed.controller.reconcile import Reconciler, parse_federation
from meshfed.controller.status import federation_status

__all__ = [
    "ControllerOptions",
    "Reconciler",
    "edge_changes",
    "federation_crd",
    "federation_schema",
    "federation_status",
    "frozen_meshes",
    "management_manifests",
    "parse_federation",
    "target_manifests",
    "union_spec",
    "waves",
]
