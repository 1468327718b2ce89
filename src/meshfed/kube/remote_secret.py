"""Istio remote secrets: istiod on a primary reads a remote cluster's API server with them.

The Secret is the one ``istioctl create-remote-secret`` makes: ``istio-remote-secret-<cluster>``
in the Istio namespace, label ``istio/multiCluster: "true"``, annotation
``networking.istio.io/cluster: <cluster>``, and under ``<cluster>`` a kubeconfig with the remote's
CA, server and the token of ``istio-reader-service-account``. meshfed creates that account's RBAC
(Istio's reader ClusterRole) and its token Secret on the remote; ``rotate`` issues a new token and
then revokes every other token of the account (deleting its Secret invalidates the token).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from meshfed.kube.client import Cluster, Obj
from meshfed.kube.errors import KubeError
from meshfed.plan.names import MANAGED_BY
from meshfed.render.istio.multicluster import (
    CLUSTER_ANNOTATION,
    MULTICLUSTER_LABEL,
    REMOTE_SECRET_PREFIX,
)

READER = "istio-reader-service-account"
TOKEN_PREFIX = f"{READER}-meshfed-token-"
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
TOKEN_TYPE = "kubernetes.io/service-account-token"
_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY, "app": "istio-reader"}

_READ = ["get", "list", "watch"]
READER_RULES: list[Obj] = [
    # Istio's reader ClusterRole (istio-discovery chart, reader-clusterrole.yaml).
    {
        "apiGroups": [
            "config.istio.io",
            "security.istio.io",
            "networking.istio.io",
            "authentication.istio.io",
            "rbac.istio.io",
            "telemetry.istio.io",
            "extensions.istio.io",
        ],
        "resources": ["*"],
        "verbs": _READ,
    },
    {
        "apiGroups": [""],
        "resources": [
            "endpoints",
            "pods",
            "services",
            "nodes",
            "replicationcontrollers",
            "namespaces",
            "secrets",
            "configmaps",
        ],
        "verbs": _READ,
    },
    {"apiGroups": ["networking.istio.io"], "resources": ["workloadentries"], "verbs": _READ},
    {
        "apiGroups": ["networking.x-k8s.io", "gateway.networking.k8s.io"],
        "resources": ["gateways"],
        "verbs": _READ,
    },
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": _READ,
    },
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _READ},
    {
        "apiGroups": ["multicluster.x-k8s.io"],
        "resources": ["serviceexports"],
        "verbs": [*_READ, "create", "delete"],
    },
    {"apiGroups": ["multicluster.x-k8s.io"], "resources": ["serviceimports"], "verbs": _READ},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": _READ},
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["subjectaccessreviews"],
        "verbs": ["create"],
    },
]


def reader_role_name(istio_namespace: str) -> str:
    return f"istio-reader-clusterrole-{istio_namespace}"


def reader_objects(istio_namespace: str) -> list[Obj]:
    """The reader ServiceAccount and its cluster-wide read access, as Istio defines them."""
    role = reader_role_name(istio_namespace)
    meta = {"labels": dict(_LABELS)}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {**meta, "name": READER, "namespace": istio_namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {**meta, "name": role},
            "rules": READER_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {**meta, "name": role},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": READER, "namespace": istio_namespace}],
        },
    ]


def kubeconfig_text(cluster: str, server: str, ca_pem: bytes, token: str) -> str:
    """The kubeconfig istioctl writes (keys in the order its encoder sorts them)."""
    doc = {
        "apiVersion": "v1",
        "clusters": [
            {
                "cluster": {
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    "server": server,
                },
                "name": cluster,
            }
        ],
        "contexts": [{"context": {"cluster": cluster, "user": cluster}, "name": cluster}],
        "current-context": cluster,
        "kind": "Config",
        "preferences": {},
        "users": [{"name": cluster, "user": {"token": token}}],
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def istioctl_secret(cluster: str, istio_namespace: str, kubeconfig: str) -> Obj:
    """The remote Secret exactly as ``istioctl create-remote-secret`` prints it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "annotations": {CLUSTER_ANNOTATION: cluster},
            "creationTimestamp": None,
            "labels": {MULTICLUSTER_LABEL: "true"},
            "name": f"{REMOTE_SECRET_PREFIX}{cluster}",
            "namespace": istio_namespace,
        },
        "stringData": {cluster: kubeconfig},
    }


class _GoYAML(yaml.SafeDumper):
    """YAML as Go's encoder writes it: multi-line strings as literal blocks, strings that would
    read as another type in double quotes."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    try:
        plain = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        plain = None
    style = '"' if not isinstance(plain, str) or plain != value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoYAML.add_representer(str, _str)


def istioctl_output(secret: Obj) -> str:
    """istioctl's printed form: a header comment, the YAML, and a closing ``---``."""
    body = yaml.dump(secret, Dumper=_GoYAML, sort_keys=False, default_flow_style=False)
    return f"# This file is autogenerated, do not edit.\n{body}---\n"


@dataclass(frozen=True)
class Token:
    secret: str
    token: str
    ca_pem: bytes


def _populated(secret: Obj) -> bool:
    data = secret.get("data") or {}
    return bool(data.get("token")) and bool(data.get("ca.crt"))


def _token(secret: Obj) -> Token:
    data = secret["data"]
    return Token(
        secret["metadata"]["name"],
        base64.b64decode(data["token"]).decode(),
        base64.b64decode(data["ca.crt"]),
    )


def token_secrets(client: Cluster, istio_namespace: str) -> list[Obj]:
    """Every token Secret of the reader account, oldest first."""
    found = [
        s
        for s in client.list("v1", "Secret", namespace=istio_namespace)
        if s.get("type") == TOKEN_TYPE
        and (s["metadata"].get("annotations") or {}).get(SA_NAME_ANNOTATION) == READER
    ]
    return sorted(found, key=lambda s: (s["metadata"]["creationTimestamp"], s["metadata"]["name"]))


def current_token(client: Cluster, istio_namespace: str) -> Token | None:
    """The newest populated token meshfed made for the reader (read only)."""
    ours = [
        s
        for s in token_secrets(client, istio_namespace)
        if s["metadata"]["name"].startswith(TOKEN_PREFIX) and _populated(s)
    ]
    return _token(ours[-1]) if ours else None


def issue_token(client: Cluster, istio_namespace: str, timeout: float = 30.0) -> Token:
    """Create a new token Secret for the reader and wait for the token controller to fill it."""
    created = client.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": TOKEN_TYPE,
            "metadata": {
                "generateName": TOKEN_PREFIX,
                "namespace": istio_namespace,
                "labels": dict(_LABELS),
                "annotations": {SA_NAME_ANNOTATION: READER},
            },
        }
    )
    name = created["metadata"]["name"]
    try:
        secret = client.wait_for("v1", "Secret", name, istio_namespace, _populated, timeout)
    except KubeError as exc:
        raise KubeError(
            f"token Secret {istio_namespace}/{name} was not populated ({exc}); is the "
            "service-account token controller (kube-controller-manager) running?"
        ) from None
    return _token(secret)


def revoke_others(client: Cluster, istio_namespace: str, keep: str) -> list[str]:
    """Delete every other token Secret of the reader: their tokens stop working."""
    revoked = []
    for secret in token_secrets(client, istio_namespace):
        if secret["metadata"]["name"] != keep:
            client.delete(secret)
            revoked.append(secret["metadata"]["name"])
    return revoked


def ensure_reader(client: Cluster, istio_namespace: str) -> None:
    """Create the Istio namespace if missing (as istioctl does) and the reader's RBAC."""
    if not client.namespace_exists(istio_namespace):
        client.create(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": istio_namespace}}
        )
    for obj in reader_objects(istio_namespace):
        client.apply(obj, force=True)


@dataclass(frozen=True)
class RemoteSecretResult:
    secret: Obj
    """The istioctl-form Secret."""
    token_secret: str
    issued: bool
    revoked: tuple[str, ...]


def remote_secret(
    client: Cluster,
    cluster: str,
    istio_namespace: str = "istio-system",
    *,
    rotate: bool = False,
    server: str | None = None,
    publish: Callable[[Obj], None] | None = None,
) -> RemoteSecretResult:
    """Make (or, with ``rotate``, renew) the remote secret for the cluster ``client`` reaches.

    ``publish`` runs with the new Secret after the new token exists and before the old ones are
    revoked (e.g. to apply it to the primary), so istiod is never left without a valid token.
    """
    ensure_reader(client, istio_namespace)
    token = None if rotate else current_token(client, istio_namespace)
    issued = token is None
    if token is None:
        token = issue_token(client, istio_namespace)
    kubeconfig = kubeconfig_text(cluster, server or client.server, token.ca_pem, token.token)
    secret = istioctl_secret(cluster, istio_namespace, kubeconfig)
    if publish is not None:
        publish(secret)
    revoked: tuple[str, ...] = ()
    if rotate:
        revoked = tuple(revoke_others(client, istio_namespace, keep=token.secret))
    return RemoteSecretResult(secret, token.secret, issued, revoked)
