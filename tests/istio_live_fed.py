"""A meshfed federation installed on live istiods (``tests/istio_live_env.py``) as the README says.

Per mesh, on its own cluster: ``kubectl create namespace istio-system``, ``kubectl apply -f
namespace.yaml``, ``kubectl apply -f secrets/``, Istio installed with ``istiod-values.yaml``
(its ``meshConfig`` as the chart's ConfigMap ``istio``, its ``pilot.env`` as istiod's
environment), the application namespaces, then ``kubectl apply -k <mesh dir>``.

What the loopback harness adds, because there is no Pod network, kubelet or injector (none of it
is meshfed's output): each Gateway server gets ``bind: <the mesh's ingress address>`` (egress:
its proxy's address), so listeners stay on loopback; the user's application Services and, in
place of Pods, WorkloadEntries with the proxy's address and the injector's label
``security.istio.io/tlsMode: istio``; a ``Sidecar`` per workload binding its listeners to the
proxy's own 127.x address (no iptables); each proxy on its own 127.x address.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from istio_live_apps import Backends, Leaf, Reply, TCPServer, http_call, issue_leaf
from istio_live_env import Istiod, Proxy
from istio_live_kube import Cluster, Kube
from istio_live_procs import Binaries, LiveError, Processes

Obj = dict[str, Any]

GATEWAY_NS = "meshfed-system"
EGRESS_HOST = "federation-egress.meshfed-system.svc.cluster.local"
HARNESS_LABEL = {"meshfed.dev/live-harness": "true"}


def meshfed(*args: str, cwd: Path) -> str:
    """Run the meshfed CLI as a user would."""
    result = subprocess.run(
        [sys.executable, "-c", "from meshfed.cli.entry import run; run()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode:
        raise LiveError(f"meshfed {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


def loopback_block() -> str:
    """A 127.x.y prefix few other programs use (each proxy gets its own address in it)."""
    rng = random.Random()
    for _ in range(50):
        prefix = f"127.{rng.randrange(60, 250)}.{rng.randrange(1, 250)}"
        try:
            with socket.socket() as s:
                s.bind((f"{prefix}.1", 0))
        except OSError:
            continue
        return prefix
    raise LiveError("no loopback block")


# ----------------------------------------------------------------------------- the federation


@dataclass
class Workload:
    name: str
    namespace: str
    port: int
    protocol: str = "HTTP"
    service_account: str = ""
    exported: bool = False
    imports: list[tuple[int, str]] = field(default_factory=list)
    """(port, protocol) of the imports this workload calls through its sidecar."""


@dataclass
class LiveMesh:
    name: str
    cluster: Cluster
    out: Path
    ip_prefix: str
    ingress_ip: str
    egress_ip: str
    workloads: dict[str, Workload]
    istiod: Istiod | None = None
    proxies: dict[str, Proxy] = field(default_factory=dict)
    ips: dict[str, str] = field(default_factory=dict)

    def docs(self, name: str) -> list[Obj]:
        return [d for d in yaml.safe_load_all((self.out / name).read_text()) if d]


@dataclass
class LiveFederation:
    root: Path
    bins: Binaries
    procs: Processes
    kube: Kube
    spec: Obj
    workloads: dict[str, dict[str, Workload]]
    backends: Backends = field(default_factory=Backends)
    meshes: dict[str, LiveMesh] = field(default_factory=dict)
    tcp_servers: dict[str, TCPServer] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def render(self) -> None:
        spec_path = self.root / "federation.yaml"
        spec_path.write_text(yaml.safe_dump(self.spec, sort_keys=False))
        meshfed("pki", "init", str(spec_path), "--state", str(self.state), cwd=self.root)
        meshfed(
            "render",
            str(spec_path),
            "--state",
            str(self.state),
            "--out",
            str(self.out),
            cwd=self.root,
        )

    def start(self, crds: list[Obj]) -> None:
        names = [m["name"] for m in self.spec["spec"]["meshes"]]
        clusters = self.kube.start([f"{self.spec['metadata']['name']}-{n}" for n in names], crds)
        for mesh_spec, cluster in zip(self.spec["spec"]["meshes"], clusters, strict=True):
            name = mesh_spec["name"]
            ingress_ip = mesh_spec["ingress"]["address"]
            prefix = ingress_ip.rsplit(".", 1)[0]
            self.meshes[name] = LiveMesh(
                name,
                cluster,
                self.out / name,
                prefix,
                ingress_ip,
                f"{prefix}.{int(ingress_ip.rsplit('.', 1)[1]) + 1}",
                self.workloads.get(name, {}),
            )
        for mesh in self.meshes.values():
            self._install(mesh)
        for mesh in self.meshes.values():
            self._harness(mesh)
        for mesh in self.meshes.values():
            self._start_proxies(mesh)
        for mesh in self.meshes.values():
            for proxy in mesh.proxies.values():
                proxy.wait_ready()

    # --- the README's install order -------------------------------------------------------

    def _install(self, mesh: LiveMesh) -> None:
        c = mesh.cluster
        c.kubectl("create", "namespace", "istio-system")
        c.kubectl("apply", "-f", str(mesh.out / "namespace.yaml"))
        c.kubectl("apply", "-f", str(mesh.out / "secrets"))
        values = yaml.safe_load((mesh.out / "istiod-values.yaml").read_text())
        mesh_config = dict(values["meshConfig"])
        mesh_config.setdefault("enableTracing", False)  # harness: no tracing backend here
        c.kubectl(
            "-n",
            "istio-system",
            "create",
            "configmap",
            "istio",
            f"--from-literal=mesh={yaml.safe_dump(mesh_config)}",
        )
        env = {k: str(v) for k, v in (values.get("pilot") or {}).get("env", {}).items()}
        env.update({k: str(v) for k, v in (values.get("env") or {}).items()})
        mesh.istiod = Istiod(c, self.root / "istiod" / mesh.name, self.bins, env)
        mesh.istiod.start(self.procs)
        for namespace in sorted({w.namespace for w in mesh.workloads.values()}):
            c.kubectl("create", "namespace", namespace)
        c.kubectl("apply", "-k", str(mesh.out))

    # --- what stands in for Pods, the Pod network and the injector ----------------------------

    def _ip(self, mesh: LiveMesh, name: str) -> str:
        if name not in mesh.ips:
            mesh.ips[name] = f"{mesh.ip_prefix}.{100 + len(mesh.ips)}"
        return mesh.ips[name]

    def _harness(self, mesh: LiveMesh) -> None:
        c = mesh.cluster
        docs: list[Obj] = []
        for gateway, ip in (
            ("federation-ingress", mesh.ingress_ip),
            ("federation-egress", mesh.egress_ip),
        ):
            try:
                gw = c.get("gateway", gateway, GATEWAY_NS)
            except LiveError:
                continue
            patch = [
                {"op": "add", "path": f"/spec/servers/{i}/bind", "value": ip}
                for i in range(len(gw["spec"]["servers"]))
            ]
            c.kubectl(
                "-n",
                GATEWAY_NS,
                "patch",
                "gateway",
                gateway,
                "--type=json",
                f"-p={json.dumps(patch)}",
            )
        docs.append(
            self._entry(
                GATEWAY_NS,
                "federation-egress",
                mesh.egress_ip,
                {"istio": "federation-egress", "app": "federation-egress"},
                "federation-egress",
            )
        )
        for w in mesh.workloads.values():
            sa = w.service_account or w.name
            ip = self._ip(mesh, w.name)
            c.kubectl("-n", w.namespace, "create", "serviceaccount", sa, check=False)
            protocol = "http" if w.protocol == "HTTP" else "tcp"
            if w.exported:
                docs.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "metadata": {"name": w.name, "namespace": w.namespace},
                        "spec": {
                            "selector": {"app": w.name},
                            "ports": [{"name": protocol, "port": w.port, "targetPort": w.port}],
                        },
                    }
                )
                docs.append(self._entry(w.namespace, w.name, ip, {"app": w.name}, sa))
            sidecar: Obj = {
                "workloadSelector": {"labels": {"app": w.name}},
                "egress": [{"hosts": ["./nothing.invalid"]}],
            }
            if w.exported:
                port = self._backend(mesh, w)
                sidecar["ingress"] = [
                    {
                        "port": {"number": w.port, "protocol": w.protocol, "name": protocol},
                        "bind": ip,
                        "defaultEndpoint": f"127.0.0.1:{port}",
                    }
                ]
            if w.imports:
                sidecar["egress"] = [
                    {
                        "port": {"number": p, "protocol": proto, "name": f"{proto.lower()}-{p}"},
                        "bind": ip,
                        "hosts": [f"{GATEWAY_NS}/*", f"{w.namespace}/*"],
                    }
                    for p, proto in w.imports
                ]
                # A listener with a port sees only services on that port (Istio's
                # serviceMatchingListenerPort); the egress gateway's Service is on another.
                sidecar["egress"].append({"bind": ip, "hosts": [f"{GATEWAY_NS}/{EGRESS_HOST}"]})
            docs.append(
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "Sidecar",
                    "metadata": {"name": w.name, "namespace": w.namespace, "labels": HARNESS_LABEL},
                    "spec": sidecar,
                }
            )
        c.apply(docs)

    def _entry(self, namespace: str, name: str, ip: str, labels: dict[str, str], sa: str) -> Obj:
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": name, "namespace": namespace, "labels": HARNESS_LABEL},
            "spec": {
                "address": ip,
                "labels": {**labels, "security.istio.io/tlsMode": "istio"},
                "serviceAccount": sa,
            },
        }

    def _backend(self, mesh: LiveMesh, w: Workload) -> int:
        if w.protocol == "HTTP":
            return self.backends.http(f"{mesh.name}/{w.namespace}/{w.name}")
        port, server = self.backends.tcp()
        self.tcp_servers[f"{mesh.name}/{w.name}"] = server
        return port

    def _injected_env(self, mesh: LiveMesh, annotations: dict[str, str]) -> dict[str, str]:
        """What the injector puts in the proxy's environment: every proxyMetadata entry of the
        mesh's defaultConfig, then of the pod's ``proxy.istio.io/config``."""
        config = yaml.safe_load(
            mesh.cluster.get("configmap", "istio", "istio-system")["data"]["mesh"]
        )
        env = dict((config.get("defaultConfig") or {}).get("proxyMetadata") or {})
        annotation = annotations.get("proxy.istio.io/config")
        if annotation:
            env.update((yaml.safe_load(annotation) or {}).get("proxyMetadata") or {})
        return {k: str(v) for k, v in env.items()}

    def gateway_proxy(self, mesh: LiveMesh, gateway: str) -> Proxy:
        deployment = next(
            d
            for d in mesh.docs(f"{gateway.split('-')[1]}-gateway.yaml")
            if d["kind"] == "Deployment"
        )
        template = deployment["spec"]["template"]
        labels = {
            k: v
            for k, v in template["metadata"]["labels"].items()
            if k != "sidecar.istio.io/inject"
        }
        annotations = dict(template["metadata"].get("annotations") or {})
        ip = mesh.ingress_ip if gateway == "federation-ingress" else mesh.egress_ip
        assert mesh.istiod is not None
        return Proxy(
            mesh.istiod,
            gateway,
            GATEWAY_NS,
            template["spec"]["serviceAccountName"],
            True,
            labels,
            annotations,
            ip,
            self._injected_env(mesh, annotations),
            self.root / "proxies" / mesh.name / gateway,
        )

    def _start_proxies(self, mesh: LiveMesh) -> None:
        assert mesh.istiod is not None
        names = {
            d["metadata"]["name"]
            for d in mesh.docs("ingress-gateway.yaml") + mesh.docs("egress-gateway.yaml")
            if d["kind"] == "Gateway"
        }
        for gateway in sorted(names):
            proxy = self.gateway_proxy(mesh, gateway)
            mesh.proxies[gateway] = proxy
            proxy.start(self.procs, wait=False)
        for w in mesh.workloads.values():
            labels = {"app": w.name}
            proxy = Proxy(
                mesh.istiod,
                w.name,
                w.namespace,
                w.service_account or w.name,
                False,
                labels,
                {},
                self._ip(mesh, w.name),
                self._injected_env(mesh, {}),
                self.root / "proxies" / mesh.name / w.name,
            )
            mesh.proxies[w.name] = proxy
            proxy.start(self.procs, wait=False)

    # --- what the checks use ------------------------------------------------------------------

    def ingress(self, mesh: str) -> tuple[str, int]:
        spec = next(m for m in self.spec["spec"]["meshes"] if m["name"] == mesh)
        return spec["ingress"]["address"], int(spec["ingress"]["port"])

    def leaf(self, mesh: str, name: str, uris: list[str]) -> Leaf:
        """A client certificate signed by ``mesh``'s intermediate (its CA in the state)."""
        ca = self.state / "pki" / mesh
        return issue_leaf(
            self.root / "callers",
            f"{mesh}-{name}",
            uris,
            ca / "ca-cert.pem",
            ca / "ca-key.pem",
            [ca / "cert-chain.pem"],
        )

    def call(
        self,
        mesh: str,
        workload: str,
        port: int,
        host: str,
        method: str = "GET",
        path: str = "/",
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Reply:
        """An application's call through its own sidecar (its outbound listener)."""
        proxy = self.meshes[mesh].proxies[workload]
        return http_call(proxy.ip, port, host, method, path, headers, timeout=timeout)

    def proxy(self, mesh: str, name: str) -> Proxy:
        return self.meshes[mesh].proxies[name]

    def access_log(self, mesh: str, proxy: str) -> list[Obj]:
        """The JSON lines (access logs) of a proxy's log."""
        lines = []
        for line in self.proxy(mesh, proxy).log_text().splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines

    def unacked(self) -> list[str]:
        """Every (proxy, xDS type) istiod sent and the proxy did not ACK, and every config a
        proxy rejected."""
        problems = []
        for mesh in self.meshes.values():
            assert mesh.istiod is not None
            for entry in mesh.istiod.debug("/debug/syncz"):
                for kind, state in (entry.get("resources") or {}).items():
                    if state.get("sent") != state.get("acked"):
                        problems.append(f"{mesh.name}: {entry['proxy']} {kind}")
            if "ACK ERROR" in mesh.istiod.log.read_text(errors="replace"):
                problems.append(f"{mesh.name}: istiod logged ACK ERROR")
            for name, proxy in mesh.proxies.items():
                if "rejected" in proxy.log_text():
                    problems.append(f"{mesh.name}/{name} rejected a config")
        return problems

    def restart(self, mesh: str, proxy: str) -> float:
        """Start a stopped proxy again; the seconds until it was ready."""
        p = self.meshes[mesh].proxies[proxy]
        t0 = time.monotonic()
        p.start(self.procs)
        return time.monotonic() - t0

    def stop(self) -> None:
        self.backends.stop()
