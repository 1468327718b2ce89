"""How the controller reaches each mesh's cluster.

The spec names clusters by kubeconfig context (``meshes[].kubernetes.context``,
``meshes[].clusters[].context``). In the controller, a context name is looked up:

1. in the remote secrets of the controller's namespace: Secrets labelled
   ``istio/multiCluster: "true"`` (Istio's format, as ``meshfed remote-secret`` and
   ``meshfed controller install`` write them), one kubeconfig per key, the key being the
   cluster's name;
2. the ``--in-cluster-context`` name: the management cluster itself, with the controller's own
   ServiceAccount;
3. with ``--kubeconfig`` (a controller run from a laptop): that file's contexts.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import yaml
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError

from meshfed.kube.client import KubeClient
from meshfed.kube.config import resolve_context
from meshfed.kube.errors import KubeError
from meshfed.plan.model import ClusterPlan
from meshfed.render.istio.multicluster import MULTICLUSTER_LABEL

REQUEST_TIMEOUT = 5.0
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_DIR_ENV = "MESHFED_SERVICE_ACCOUNT_DIR"
"""Overrides where the in-cluster ServiceAccount's token, ca.crt and namespace are read (as
kubernetes clients let a caller pass the directory); the API server is, as in every
in-cluster client, ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``."""


def in_cluster_config() -> SingleConfig | None:
    """The controller's own ServiceAccount, when it runs in a cluster (None otherwise). The
    token is read from its file at each use, so the kubelet's rotations are followed."""
    import os

    if not (
        os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("KUBERNETES_SERVICE_PORT")
    ):
        return None
    directory = os.environ.get(SERVICE_ACCOUNT_DIR_ENV) or SERVICE_ACCOUNT_DIR
    try:
        config = KubeConfig.from_service_account(directory).get()
    except ConfigError:
        return None
    assert config is not None
    return config


"""A cluster that does not answer within this is unreachable for this reconcile."""


def remote_kubeconfigs(secrets: list[dict[str, Any]]) -> dict[str, str]:
    """Cluster name -> kubeconfig text, from Istio-format remote secrets (data or stringData)."""
    import base64

    out: dict[str, str] = {}
    for secret in secrets:
        for key, value in (secret.get("data") or {}).items():
            out.setdefault(key, base64.b64decode(value).decode())
        for key, value in (secret.get("stringData") or {}).items():
            out.setdefault(key, str(value))
    return out


def _single(text: str, cluster: str) -> SingleConfig:
    try:
        doc = yaml.safe_load(text)
        config = (
            KubeConfig.from_dict(doc).get(context_name=cluster) or KubeConfig.from_dict(doc).get()
        )
    except (ConfigError, KeyError, yaml.YAMLError, AttributeError) as exc:
        raise KubeError(
            f"remote secret for cluster {cluster}: unusable kubeconfig ({exc})"
        ) from None
    if config is None:
        raise KubeError(f"remote secret for cluster {cluster}: kubeconfig has no context")
    return config


class Connector:
    """Connections to mesh clusters by context name, kept between reconciles."""

    def __init__(
        self,
        management: KubeClient | None,
        namespace: str,
        kubeconfig: Path | None = None,
        in_cluster_context: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.management = management
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.in_cluster_context = in_cluster_context
        self.timeout = timeout
        self._clients: dict[str, KubeClient] = {}
        self._sources: dict[str, str] = {}
        self._lock = threading.Lock()

    def _remote_configs(self) -> dict[str, str]:
        if self.management is None:
            return {}
        secrets = self.management.list(
            "v1", "Secret", namespace=self.namespace, labels=f"{MULTICLUSTER_LABEL}=true"
        )
        return remote_kubeconfigs(secrets)

    def config_for(self, context: str | None) -> tuple[SingleConfig, str]:
        """The connection settings for ``context``, and where they came from."""
        if context is not None:
            remote = self._remote_configs().get(context)
            if remote is not None:
                return _single(remote, context), f"remote secret {context}"
            if context == self.in_cluster_context:
                config = in_cluster_config()
                if config is None:
                    raise KubeError(
                        f"in-cluster context {context}: not running in a cluster (no "
                        "KUBERNETES_SERVICE_HOST/PORT, or no ServiceAccount token)"
                    )
                return config, "the controller's ServiceAccount"
        if self.kubeconfig is not None or self.management is None:
            return resolve_context(context, self.kubeconfig), "kubeconfig"
        raise KubeError(
            f"no remote secret for cluster (context) {context!r} in namespace {self.namespace}: "
            f"run `meshfed controller install --target-context {context}` (or create one with "
            "`meshfed remote-secret` and a writer token) and label it istio/multiCluster=true"
        )

    def client(self, context: str | None) -> KubeClient:
        key = context or ""
        with self._lock:
            found = self._clients.get(key)
        if found is not None:
            return found
        config, source = self.config_for(context)
        client = KubeClient(context or config.context_name, config, timeout=self.timeout)
        with self._lock:
            raced = self._clients.get(key)  # another thread connected meanwhile: keep one
            if raced is None:
                self._clients[key] = client
                self._sources[key] = source
        if raced is not None:
            client.close()
            return raced
        return client

    def fresh(self, context: str | None) -> KubeClient:
        """A new connection (for a watch: long requests get their own)."""
        config, _ = self.config_for(context)
        return KubeClient(context or config.context_name, config, timeout=self.timeout)

    def forget(self, context: str | None) -> None:
        """Drop a cached connection (its remote secret may have changed)."""
        with self._lock:
            client = self._clients.pop(context or "", None)
        if client is not None:
            client.close()

    def __call__(self, cluster: ClusterPlan) -> KubeClient:
        client = self.client(cluster.context)
        client.name = cluster.name
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
