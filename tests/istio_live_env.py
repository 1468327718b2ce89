"""istiod and Istio proxies (pilot-agent + Envoy) on loopback, for ``tests/test_istio_live.py``.

Started from the binaries the environment names (`istio_live_procs.binaries`), against the
kube-apiservers of `istio_live_kube`; everything listens on 127.0.0.0/8 only.

What stands in for the parts of Kubernetes that are not here (no kubelet, no injection webhook,
no Pod network): istiod's plug-in CA volume is the ``cacerts`` Secret written to a directory;
a proxy's working directory holds what the kubelet would mount (token for audience
``istio-ca``, the namespace's ``istio-ca-root-cert``, the Downward-API labels and annotations,
the mesh config); the injector's part (every ``proxyMetadata`` entry of the mesh config and of
the pod's ``proxy.istio.io/config`` as the agent's environment) is done by the caller
(`istio_live_fed`). Istio's bootstrap template is taken from the user's Istio, its readiness
and Prometheus listeners moved from the wildcard address to loopback.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from istio_live_kube import Cluster
from istio_live_procs import Binaries, Processes, free_ports, wait_for, write_file

Obj = dict[str, Any]

ISTIOD_SAN = "istiod.istio-system.svc"
_DNS_OVERRIDE: Obj = {
    # Envoy's resolver asks only 127.0.0.1:9 (nothing listens there): no DNS leaves the machine.
    "typed_dns_resolver_config": {
        "name": "envoy.network.dns_resolver.cares",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3."
            "CaresDnsResolverConfig",
            "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": 9}}],
            "use_resolvers_as_fallback": False,
            "dns_resolver_options": {"no_default_search_domain": True},
        },
    }
}


# ----------------------------------------------------------------------------- Istio


TEMPLATE = "var/lib/istio/envoy/envoy_bootstrap_tmpl.json"
"""Where Istio's proxy image keeps the bootstrap template (relative to the working directory)."""


def loopback_template(source: Path, target: Path) -> Path:
    """Istio's bootstrap template with its readiness and Prometheus listeners on loopback."""
    text = source.read_text()
    text = text.replace("{{ .wildcard }}", "{{ .localhost }}")
    text = text.replace("{{ .additional_wildcard }}", "{{ .additional_localhost }}")
    return write_file(target, text, 0o644)


@dataclass
class Istiod:
    """istiod (pilot-discovery) for one cluster, with meshfed's plug-in CA and mesh config."""

    cluster: Cluster
    directory: Path
    bins: Binaries
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.directory / "istiod.log"

    @property
    def xds(self) -> str:
        return f"127.0.0.1:{self.ports['xds']}"

    def start(self, procs: Processes) -> None:
        # The plug-in CA as the kubelet mounts the Secret ``cacerts`` for istiod.
        secret = self.cluster.get("secret", "cacerts", "istio-system")
        cacerts = self.directory / "cacerts"
        for key, value in secret["data"].items():
            write_file(cacerts / key, base64.b64decode(value))
        names = ["http", "https", "grpc", "xds", "monitoring", "ctrlz"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory),
            "POD_NAMESPACE": "istio-system",
            "POD_NAME": f"istiod-{self.cluster.name}",
            "REVISION": "default",
            "CLUSTER_ID": self.cluster.name,
            "ROOT_CA_DIR": str(cacerts),
            "PILOT_CERT_PROVIDER": "istiod",
            "JWT_POLICY": "third-party-jwt",
            # Upstream Envoy lacks Istio's own filters (metadata exchange, ALPN override).
            "PILOT_ENABLE_METADATA_EXCHANGE": "false",
            "PILOT_ENABLE_ALPN_FILTER": "false",
            **self.env,
        }
        p = self.ports
        self.proc = procs.start(
            [
                str(self.bins.pilot_discovery),
                "discovery",
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--clusterID={self.cluster.name}",
                "--domain=cluster.local",
                # Absent: istiod watches the ConfigMap istio-system/istio, as installed.
                f"--meshConfig={self.directory / 'no-mesh-file'}",
                f"--networksConfig={self.directory / 'no-networks-file'}",
                f"--httpAddr=127.0.0.1:{p['http']}",
                f"--httpsAddr=127.0.0.1:{p['https']}",
                f"--grpcAddr=127.0.0.1:{p['grpc']}",
                f"--secureGRPCAddr=127.0.0.1:{p['xds']}",
                f"--monitoringAddr=127.0.0.1:{p['monitoring']}",
                "--ctrlz_address=127.0.0.1",
                f"--ctrlz_port={p['ctrlz']}",
                "--shutdownDuration=1s",
            ],
            self.log,
            env=env,
            cwd=self.directory,
        )
        proc = self.proc
        wait_for(
            f"istiod {self.cluster.name}",
            lambda: self.debug("/ready", raw=True) == "",
            120,
            lambda: proc.poll() is None,
        )

    def debug(self, path: str, raw: bool = False) -> Any:
        url = f"http://127.0.0.1:{self.ports['http']}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        return body if raw else json.loads(body)


@dataclass
class Proxy:
    """pilot-agent + Envoy for one gateway or workload; its working directory holds what the
    kubelet would mount."""

    istiod: Istiod
    name: str
    namespace: str
    service_account: str
    router: bool
    labels: dict[str, str]
    annotations: dict[str, str]
    ip: str
    env: dict[str, str]
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.directory / "proxy.log"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def _mounts(self) -> None:
        cluster = self.istiod.cluster
        d = self.directory
        token = cluster.kubectl(
            "-n",
            self.namespace,
            "create",
            "token",
            self.service_account,
            "--audience=istio-ca",
            "--duration=24h",
        )
        write_file(d / "var/run/secrets/tokens/istio-token", token.strip())
        root: list[str] = []

        def published() -> bool:
            root[:] = [
                cluster.kubectl(
                    "-n",
                    self.namespace,
                    "get",
                    "configmap",
                    "istio-ca-root-cert",
                    "-o",
                    "jsonpath={.data.root-cert\\.pem}",
                    check=False,
                )
            ]
            return bool(root[0].strip())

        wait_for(f"istio-ca-root-cert in {self.namespace}", published, 60)
        write_file(d / "var/run/secrets/istio/root-cert.pem", root[0], 0o644)
        mesh = cluster.get("configmap", "istio", "istio-system")["data"]["mesh"]
        write_file(d / "etc/istio/config/mesh", mesh, 0o644)

        def downward(values: dict[str, str]) -> str:
            return "".join(f"{k}={json.dumps(v)}\n" for k, v in sorted(values.items()))

        write_file(d / "etc/istio/pod/labels", downward(self.labels), 0o644)
        annotations = dict(self.annotations)
        # Report only the loopback address (not the machine's other interfaces).
        others = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
        if others:
            annotations["traffic.sidecar.istio.io/excludeInterfaces"] = ",".join(others)
        write_file(d / "etc/istio/pod/annotations", downward(annotations), 0o644)
        loopback_template(self.istiod.bins.bootstrap, d / TEMPLATE)
        write_file(d / "bootstrap-override.yaml", yaml.safe_dump(_DNS_OVERRIDE), 0o644)

    def start(self, procs: Processes, wait: bool = True) -> None:
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        self._mounts()
        names = ["admin", "status", "ready", "prometheus", "dns"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        p = self.ports
        proxy_config = {
            "discoveryAddress": self.istiod.xds,
            "proxyAdminPort": p["admin"],
            "statusPort": p["status"],
            "binaryPath": str(self.istiod.bins.envoy),
            "concurrency": 1,
            "drainDuration": "5s",
            "terminationDrainDuration": "1s",
        }
        mesh = yaml.safe_load((self.directory / "etc/istio/config/mesh").read_text()) or {}
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory),
            "POD_NAME": self.name,
            "POD_NAMESPACE": self.namespace,
            "INSTANCE_IP": self.ip,
            "HOST_IP": self.ip,
            "SERVICE_ACCOUNT": self.service_account,
            "ISTIO_META_CLUSTER_ID": self.istiod.cluster.name,
            "ISTIO_META_WORKLOAD_NAME": self.labels.get("app", self.name),
            "ISTIO_META_OWNER": f"kubernetes://apis/apps/v1/namespaces/{self.namespace}"
            f"/deployments/{self.labels.get('app', self.name)}",
            "TRUST_DOMAIN": mesh.get("trustDomain") or "cluster.local",
            "CLOUD_PLATFORM": "none",
            "ISTIOD_SAN": ISTIOD_SAN,
            "JWT_POLICY": "third-party-jwt",
            "ENVOY_STATUS_PORT": str(p["ready"]),
            "ENVOY_PROMETHEUS_PORT": str(p["prometheus"]),
            "DNS_PROXY_ADDR": f"127.0.0.1:{p['dns']}",
            "ISTIO_BOOTSTRAP_OVERRIDE": str(self.directory / "bootstrap-override.yaml"),
            "PROXY_CONFIG": json.dumps(proxy_config),
            **self.env,
        }
        if not self.router:
            env["ISTIO_META_INTERCEPTION_MODE"] = "NONE"
        self.proc = procs.start(
            [
                str(self.istiod.bins.pilot_agent),
                "proxy",
                "router" if self.router else "sidecar",
                f"--templateFile={self.directory / TEMPLATE}",
                "--proxyLogLevel=warning",
                "--log_output_level=default:info",
            ],
            self.log,
            env=env,
            cwd=self.directory,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 90) -> None:
        proc = self.proc
        assert proc is not None
        url = f"http://127.0.0.1:{self.ports['ready']}/healthz/ready"

        def ready() -> bool:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)

        wait_for(f"proxy {self.name}.{self.namespace}", ready, timeout, lambda: proc.poll() is None)

    def stop(self, procs: Processes) -> None:
        if self.proc is not None:
            procs.stop(self.proc, grace=15)
            self.proc = None

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(self.admin_url + path, timeout=10) as response:
            return str(response.read().decode())

    def config_dump(self, query: str = "") -> Obj:
        doc: Obj = json.loads(self.admin("/config_dump" + query))
        return doc

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
