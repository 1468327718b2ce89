"""What ``meshfed controller manifests`` prints and ``meshfed controller install`` applies.

Management cluster: the controller's namespace, the ``Federation`` CRD, a ServiceAccount, the
RBAC of ``rbac.py`` and a Deployment of two replicas (one leads, through a Lease). Each mesh
cluster: a ServiceAccount ``meshfed-controller`` in ``meshfed-system`` with the target rules,
whose token reaches the controller as an Istio-format remote secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from meshfed.controller.crd import federation_crd
from meshfed.controller.rbac import (
    MANAGEMENT_CLUSTER_RULES,
    MANAGEMENT_NAMESPACE_RULES,
    target_cluster_rules,
)
from meshfed.plan.names import GATEWAY_NAMESPACE

Obj = dict[str, Any]
NAME = "meshfed-controller"
DEFAULT_NAMESPACE = GATEWAY_NAMESPACE
DEFAULT_IMAGE = "meshfed:0.1.0"
WORK_DIR = "/var/run/meshfed"
HEALTH_PORT = 8080
BUNDLES_SERVICE = "meshfed-bundles"
_LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "meshfed"}


@dataclass(frozen=True)
class ControllerOptions:
    namespace: str = DEFAULT_NAMESPACE
    image: str = DEFAULT_IMAGE
    replicas: int = 2
    image_pull_policy: str = "IfNotPresent"
    in_cluster_context: str | None = None
    """The kubeconfig context name under which specs refer to the management cluster itself
    (it is then reached with the controller's own ServiceAccount)."""
    bundle_port: int | None = None
    """Serve the local meshes' SPIFFE bundles on this container port, behind the Service
    ``meshfed-bundles`` (port 443; expose it to partners with a LoadBalancer or an Ingress
    passing TLS through). None: no bundle endpoint, no Service."""


def _meta(name: str, namespace: str | None = None) -> Obj:
    meta: Obj = {"name": name, "labels": dict(_LABELS)}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _rbac(
    kind: str, name: str, rules: list[Obj], subject_namespace: str, namespace: str | None = None
) -> list[Obj]:
    binding = "RoleBinding" if kind == "Role" else "ClusterRoleBinding"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": _meta(name, namespace),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": binding,
            "metadata": _meta(name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": subject_namespace}],
        },
    ]


JEMALLOC = "/usr/local/lib/libjemalloc.so.2"
"""Where the controller image puts jemalloc, which it preloads (``LD_PRELOAD``, Dockerfile)."""
JEMALLOC_CONF = "narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0"
"""jemalloc as the controller runs it: one arena and no per-thread caches (its ~160 threads,
mostly watch streams, would each keep freed blocks), and pages given back as soon as they are
free (no decay)."""
MEMORY_ENV = {"PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": "2", "MALLOC_CONF": JEMALLOC_CONF}
"""How the controller's Python allocates: with the C allocator (Python's own small-object
allocator keeps whole arenas for a few objects that outlive a reconcile: about 280 MB idle at
ten clusters), which in the image is jemalloc (``JEMALLOC_CONF``; ``MALLOC_CONF`` is read only
by jemalloc, ``MALLOC_ARENA_MAX`` only by glibc's malloc where jemalloc is not preloaded).
Measured idle after the ten-cluster benchmark (bench/controller.py): glibc's malloc 200-235 MB
(a reconcile of a thousand exports frees far more than it keeps, and its free memory stays
in pages a few live objects pin, even after ``malloc_trim``), jemalloc with its defaults
215-220 MB, jemalloc as configured here 146-149 MB."""


def allocator() -> str:
    """Which C allocator this process runs on: what ``controller run`` says at start (the
    idle memory measured is jemalloc's, as in the image)."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            if any("libjemalloc" in line for line in maps):
                return f"jemalloc (MALLOC_CONF={os.environ.get('MALLOC_CONF', '')})"
    except OSError:
        pass
    return "the C library's malloc (the image preloads jemalloc: less idle memory, README)"


def _deployment(opts: ControllerOptions) -> Obj:
    args = ["controller", "run", "--namespace", opts.namespace, "--work-dir", WORK_DIR]
    if opts.in_cluster_context:
        args += ["--in-cluster-context", opts.in_cluster_context]
    ports: list[Obj] = [{"name": "health", "containerPort": HEALTH_PORT}]
    if opts.bundle_port:
        args += ["--bundle-listen", f"0.0.0.0:{opts.bundle_port}"]
        ports.append({"name": "bundles", "containerPort": opts.bundle_port})
    probe = {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10}
    container = {
        "name": "controller",
        "image": opts.image,
        "imagePullPolicy": opts.image_pull_policy,
        "args": args,
        "env": [
            {
                "name": "POD_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            *({"name": k, "value": v} for k, v in MEMORY_ENV.items()),
        ],
        "ports": ports,
        "livenessProbe": {**probe, "initialDelaySeconds": 10},
        "readinessProbe": probe,
        "resources": {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"memory": "384Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # The PKI state is materialised here from its Secret for each reconcile (keys 0600,
        # in memory: never on a node's disk).
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(NAME, opts.namespace),
        "spec": {
            "replicas": opts.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": dict(_LABELS)},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "work", "emptyDir": {"medium": "Memory"}}],
                },
            },
        },
    }


def _bundles_service(opts: ControllerOptions) -> list[Obj]:
    """Every replica serves the bundles (the same bytes), so the Service selects them all."""
    if not opts.bundle_port:
        return []
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(BUNDLES_SERVICE, opts.namespace),
            "spec": {
                "selector": {"app.kubernetes.io/name": NAME},
                "ports": [
                    {
                        "name": "https",
                        "port": 443,
                        "targetPort": "bundles",
                        "protocol": "TCP",
                        "appProtocol": "https",
                    }
                ],
            },
        }
    ]


def management_manifests(opts: ControllerOptions | None = None) -> list[Obj]:
    """Everything the management cluster needs, in apply order."""
    opts = opts or ControllerOptions()
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(opts.namespace)},
        federation_crd(),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, opts.namespace)},
        *_rbac("ClusterRole", NAME, MANAGEMENT_CLUSTER_RULES, opts.namespace),
        *_rbac("Role", NAME, MANAGEMENT_NAMESPACE_RULES, opts.namespace, opts.namespace),
        _deployment(opts),
        *_bundles_service(opts),
    ]


TOKEN_SECRET = f"{NAME}-token"
TARGET_ROLE = f"{NAME}-mesh-cluster"
"""The ClusterRole on mesh clusters: a name of its own, since the management cluster may be a
mesh's cluster too, and its own ClusterRole must not be overwritten."""


def target_manifests(istio_namespaces: tuple[str, ...] = ("istio-system",)) -> list[Obj]:
    """What each mesh cluster needs so the controller can reconcile it: an identity, its
    rules, and a long-lived token for the remote secret (filled by the token controller)."""
    ns = GATEWAY_NAMESPACE
    binding_subject = {"kind": "ServiceAccount", "name": NAME, "namespace": ns}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(ns)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, ns)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(TARGET_ROLE),
            "rules": target_cluster_rules(istio_namespaces),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(TARGET_ROLE),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": TARGET_ROLE,
            },
            "subjects": [binding_subject],
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                **_meta(TOKEN_SECRET, ns),
                "annotations": {"kubernetes.io/service-account.name": NAME},
            },
        },
    ]
