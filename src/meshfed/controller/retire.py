"""A deleted Federation: what it put on its clusters goes too (found by meshfed's labels, as
``apply`` prunes), then kopf lets the object go. The PKI state Secret stays: deleting a
Federation object must not destroy its certificate authorities (delete
``meshfed-state-<name>`` yourself to do that).

A cluster that does not answer keeps the object (and its finalizer) until it does, retried by
kopf; the annotation ``meshfed.dev/forget-unreachable: "true"`` gives such clusters up.
"""

from __future__ import annotations

from typing import Any

import kopf

from meshfed.controller.reconcile import Reconciler, parse_federation
from meshfed.kube.errors import KubeError
from meshfed.kube.remote_secret import token_secrets
from meshfed.kube.targets import PRUNE_KINDS, prune_set, selector
from meshfed.plan.build import mesh_clusters
from meshfed.spec.errors import SpecError

FORGET_ANNOTATION = "meshfed.dev/forget-unreachable"


def retire_federation(reconciler: Reconciler, body: dict[str, Any]) -> str:
    """Delete the federation's objects on every cluster; a summary, or kopf.TemporaryError."""
    name = str(body["metadata"]["name"])
    annotations = body["metadata"].get("annotations") or {}
    forget = str(annotations.get(FORGET_ANNOTATION, "")).lower() == "true"
    try:
        fed = parse_federation(body)
    except SpecError:
        return "the spec was never valid: nothing was applied"
    deleted, skipped = 0, []
    for mesh in fed.spec.meshes:
        for cluster in mesh_clusters(mesh):
            try:
                client = reconciler.connector(cluster)
                client.version()
                live = []
                for api_version, kind in PRUNE_KINDS:
                    if client.find(api_version, kind) is not None:
                        live += client.list(api_version, kind, labels=selector(name))
                stale = prune_set(live, [], name)
                if cluster.role == "remote":
                    stale += token_secrets(client, mesh.istio_namespace)
                for obj in stale:
                    deleted += int(client.delete(obj))
            except KubeError as exc:
                if forget:
                    skipped.append(f"{mesh.name}/{cluster.name}")
                    continue
                raise kopf.TemporaryError(
                    f"mesh {mesh.name} cluster {cluster.name}: {exc.message}; retrying (annotate "
                    f'{FORGET_ANNOTATION}: "true" to give the cluster up)',
                    delay=15,
                ) from None
    text = f"deleted {deleted} object(s) of federation {name} from its clusters"
    return text + (f"; gave up {', '.join(skipped)}" if skipped else "")
