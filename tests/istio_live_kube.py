"""kube-apiservers for the live Istio tests: one etcd, one apiserver per cluster (its own CA,
ServiceAccount signer and etcd key prefix), on 127.0.0.1 and free ports, an admin kubeconfig each.
No kubelet, scheduler or controller-manager: nothing runs in the clusters; tokens come from
TokenRequest, which the apiserver serves itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from istio_live_procs import (
    Binaries,
    LiveError,
    Processes,
    free_ports,
    proc_alive,
    wait_for,
    write_file,
)

Obj = dict[str, Any]

# ----------------------------------------------------------------------------- Kubernetes


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(server), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@dataclass
class Cluster:
    """One kube-apiserver (its own CA and ServiceAccount signer) and an admin kubeconfig."""

    name: str
    directory: Path
    bins: Binaries
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def prepare(self) -> None:
        pki = self.directory / "pki"
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _issue(_name(f"meshfed-live-{self.name}-ca"), ca_key, None, ca=True)
        names: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
            *(
                x509.DNSName(n)
                for n in (
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                )
            ),
        ]
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _issue(_name("kube-apiserver"), server_key, (ca, ca_key), server=names)
        admin_key = ec.generate_private_key(ec.SECP256R1())
        admin = _issue(_name("meshfed-live-admin", "system:masters"), admin_key, (ca, ca_key))
        sa_key = rsa.generate_private_key(65537, 2048)
        pem = serialization.Encoding.PEM
        write_file(pki / "ca.crt", ca.public_bytes(pem), 0o644)
        write_file(pki / "apiserver.crt", server.public_bytes(pem), 0o644)
        write_file(pki / "apiserver.key", _pem_key(server_key))
        write_file(pki / "admin.crt", admin.public_bytes(pem), 0o644)
        write_file(pki / "admin.key", _pem_key(admin_key))
        write_file(pki / "sa.key", _pem_key(sa_key))
        write_file(
            pki / "sa.pub",
            sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
            0o644,
        )

    def start(self, procs: Processes, etcd_port: int) -> None:
        pki = self.directory / "pki"
        self.port = free_ports(1)[0]
        issuer = "https://kubernetes.default.svc.cluster.local"
        self.proc = procs.start(
            [
                str(self.bins.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--etcd-prefix=/meshfed-live-{self.name}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={issuer}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--api-audiences={issuer}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--endpoint-reconciler-type=none",
                "--enable-aggregator-routing=true",
                "--profiling=false",
                f"--cert-dir={pki / 'generated'}",
                "--v=1",
            ],
            self.directory / "apiserver.log",
        )
        ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
        cert = base64.b64encode((pki / "admin.crt").read_bytes()).decode()
        key = base64.b64encode((pki / "admin.key").read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.name,
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.port}",
                        "certificate-authority-data": ca,
                    },
                }
            ],
            "users": [
                {
                    "name": f"{self.name}-admin",
                    "user": {"client-certificate-data": cert, "client-key-data": key},
                }
            ],
            "contexts": [
                {"name": self.name, "context": {"cluster": self.name, "user": f"{self.name}-admin"}}
            ],
            "current-context": self.name,
        }
        write_file(self.kubeconfig, yaml.safe_dump(config))

    def ready(self) -> bool:
        pki = self.directory / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        url = f"https://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, context=context, timeout=3) as response:
                return bool(response.read() == b"ok")
        except urllib.error.URLError:
            return False

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [str(self.bins.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode:
            raise LiveError(f"kubectl {' '.join(args)} on {self.name}: {result.stderr.strip()}")
        return result.stdout

    def apply(self, docs: list[Obj]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args[1:1] = ["-n", namespace]
        doc: Obj = json.loads(self.kubectl(*args))
        return doc


@dataclass
class Kube:
    """One etcd and a kube-apiserver per named cluster."""

    directory: Path
    bins: Binaries
    procs: Processes
    clusters: dict[str, Cluster] = field(default_factory=dict)
    etcd_port: int = 0

    def start_etcd(self) -> None:
        client, peer = free_ports(2)
        data = self.directory / "etcd"
        shutil.rmtree(data, ignore_errors=True)  # a kept directory of an earlier run
        proc = self.procs.start(
            [
                str(self.bins.etcd),
                "--name=meshfed-live",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=meshfed-live=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                "--enable-pprof=false",
                "--quota-backend-bytes=4294967296",
            ],
            self.directory / "etcd.log",
        )

        def healthy() -> bool:
            url = f"http://127.0.0.1:{client}/health"
            with urllib.request.urlopen(url, timeout=2) as response:
                return b'"health":"true"' in response.read()

        wait_for("etcd", healthy, 60, lambda: proc.poll() is None)
        self.etcd_port = client

    def start(self, names: list[str], crds: list[Obj]) -> list[Cluster]:
        if not self.etcd_port:
            self.start_etcd()
        new = []
        for name in names:
            cluster = Cluster(name, self.directory / name, self.bins)
            cluster.prepare()
            cluster.start(self.procs, self.etcd_port)
            self.clusters[name] = cluster
            new.append(cluster)
        for cluster in new:
            proc = cluster.proc
            assert proc is not None
            wait_for(f"kube-apiserver {cluster.name}", cluster.ready, 180, proc_alive(proc))
        for cluster in new:
            # Server-side: Istio's CRDs are too large for the last-applied annotation.
            cluster.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(crds))
        for cluster in new:
            cluster.kubectl("wait", "--for=condition=established", "crd", "--all", "--timeout=120s")
        return new

    def stop(self, names: Iterable[str]) -> None:
        for name in list(names):
            cluster = self.clusters.pop(name)
            if cluster.proc is not None:
                self.procs.stop(cluster.proc)
