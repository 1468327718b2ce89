"""A rotation against the running local federation: SDS propagation and real handshakes.

Propagation rewrites only SDS files (validation bundles, or the ``default`` certificate when
reissuing) of the Envoys of this state directory, under the runtime lock (so ``up`` and the
renewer never interleave), and waits until each running Envoy reports the new version
(admin ``sds.<secret>.version_text``) or refuses it.

Handshakes are real TLS connections to the Envoys' mTLS listeners (every mesh's ingress, per
exported SNI; every sidecar's inbound listener), presenting a short-lived test certificate of
the caller's mesh issued by a chosen CA generation. A connection counts as accepted when an
answer comes back through it (any HTTP status, or the TCP workload's greeting): under TLS 1.3 a
client learns that its certificate was refused only when it reads.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from meshfed.local.admin import wait_for_stats
from meshfed.local.certs import kept_identity
from meshfed.local.errors import LocalError
from meshfed.local.files import read_json
from meshfed.local.layout import layout_from_json
from meshfed.local.paths import RuntimePaths
from meshfed.local.probe import ProbeResult, plan_probes, run_probe
from meshfed.local.prober import PROBE_HEADER, ROTATION_CHECK, ProbeLedger
from meshfed.local.state import load_processes
from meshfed.local.xds import EnvoyFiles, Pending, secrets_for
from meshfed.pki import MeshCA
from meshfed.pki.certs import cert_to_pem
from meshfed.pki.keys import key_to_pem
from meshfed.plan.model import FederationPlan, IngressServer
from meshfed.plan.names import prober_spiffe_id
from meshfed.render.envoy import render_local
from meshfed.render.envoy.layout import LocalLayout
from meshfed.render.envoy.process import ProcessConfig
from meshfed.spiffe import PrincipalMatch

APPLY_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 5.0
TEST_CERT_TTL = timedelta(minutes=10)
CHECK_SERVICE_ACCOUNT = "meshfed-rotation-check"
"""Completes an allowed prefix into the identity a handshake check of a TCP export presents."""


@dataclass
class PushReport:
    written: dict[str, list[str]] = field(default_factory=dict)
    """process -> secrets rewritten."""
    applied: int = 0
    """Secrets a running Envoy confirmed."""

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.written.values())

    def describe(self) -> str:
        if not self.written:
            return "nothing to change in the running Envoys"
        return (
            f"{self.count} SDS secret(s) in {len(self.written)} Envoy(s) rewritten, "
            f"{self.applied} confirmed applied"
        )


class LiveFederation:
    """The local federation running from a state directory."""

    def __init__(self, paths: RuntimePaths, layout: LocalLayout) -> None:
        self.paths = paths
        self.layout = layout
        self.ledger = ProbeLedger(paths)
        """Every check is recorded as meshfed's own (``local/prober.py``)."""

    @classmethod
    def detect(cls, state_dir: Path) -> LiveFederation | None:
        """The running federation of ``state_dir``, or None if no Envoy of it runs."""
        paths = RuntimePaths(state_dir.resolve())
        if not paths.processes.is_file():
            return None
        records = load_processes(paths)
        if not any(r.kind == "envoy" and r.alive for r in records.values()):
            return None
        layout = layout_from_json(read_json(paths.layout))
        if layout is None:
            return None
        return cls(paths, layout)

    def running(self) -> set[str]:
        return {n for n, r in load_processes(self.paths).items() if r.alive and r.kind == "envoy"}

    def processes(self, plan: FederationPlan) -> list[ProcessConfig]:
        try:
            return render_local(plan, self.layout, self.paths.root)
        except KeyError as exc:
            raise LocalError(
                f"the running local federation has no ports for {exc}: the spec changed since "
                "the last meshfed up",
                "run meshfed up first (a rotation propagates to what runs)",
            ) from None

    # --- propagation

    def push(
        self,
        plan: FederationPlan,
        reissue: dict[str, MeshCA] | None = None,
        ttl: timedelta | None = None,
    ) -> PushReport:
        """Rewrite every SDS file that differs from the plan; with ``reissue`` (mesh -> CA),
        also a new ``default`` certificate for every process of those meshes."""
        report = PushReport()
        now = datetime.now(UTC)
        with self.paths.locked():
            running = self.running()
            for process in self.processes(plan):
                files = EnvoyFiles(self.paths.root, process)
                if not files.dir.is_dir():
                    continue  # never started: ``up`` writes it
                identity = kept_identity(files.kept_default_secret())
                if process.spiffe_id is not None:
                    ca = (reissue or {}).get(process.mesh)
                    if ca is not None:
                        key, cert = ca.issue(process.spiffe_id, ttl or plan.workload_ttl, now)
                        chain = (cert_to_pem(cert) + cert_to_pem(ca.ca_cert)).decode()
                        identity = (chain, key_to_pem(key).decode())
                    if identity is None:
                        continue
                wanted = secrets_for(process, identity)
                pending = files.diff(wanted)
                if not pending.secrets:
                    continue
                files.apply_live(Pending(secrets=pending.secrets))
                report.written[process.name] = sorted(pending.secrets)
                if process.name in running:
                    for name in sorted(pending.secrets):
                        self._wait_applied(files, name)
                        report.applied += 1
        return report

    def _wait_applied(self, files: EnvoyFiles, secret: str) -> None:
        doc = read_json(files.sds_path(secret))
        version = str(doc.get("version_info")) if isinstance(doc, dict) else "?"
        name = re.escape(secret)
        pattern = rf"^sds\.{name}\.(version_text|update_rejected)$"
        before = _stats(files.process.admin_socket, pattern)
        if f"sds.{secret}.version_text" not in before:
            return  # no listener or cluster of this Envoy uses the secret: nothing to wait for
        rejected = f"sds.{secret}.update_rejected"

        def done(s: dict[str, str]) -> bool:
            return s.get(f"sds.{secret}.version_text") == version

        def failed(s: dict[str, str]) -> bool:
            return s.get(rejected, "0") != before.get(rejected, "0")

        try:
            wait_for_stats(files.process.admin_socket, pattern, done, failed, APPLY_TIMEOUT)
        except LocalError as exc:
            raise LocalError(
                f"{files.process.name}: SDS secret {secret} version {version}: {exc.problem}",
                f"see the Envoy log under {self.paths.logs}",
            ) from None

    # --- handshakes

    def targets(self, plan: FederationPlan) -> list[Target]:
        return handshake_targets(plan, self.layout)

    def probes(self, plan: FederationPlan, timeout: float = 10.0) -> list[ProbeResult]:
        return [
            run_probe(p, timeout, self.ledger, ROTATION_CHECK)
            for p in plan_probes(plan, self.layout)
        ]


def _stats(sock: str, pattern: str) -> dict[str, str]:
    from meshfed.local import admin

    try:
        return admin.stats(sock, pattern)
    except admin.AdminError:
        return {}


@dataclass(frozen=True)
class Target:
    """An mTLS listener of a running Envoy and a caller identity it admits."""

    process: str
    mesh: str
    """The server's mesh."""
    address: str
    port: int
    sni: str
    protocol: str
    client_mesh: str
    client_id: str

    def describe(self) -> str:
        return f"{self.process} ({self.sni}) as {self.client_id}"


def _client_id(
    plan: FederationPlan, server: IngressServer, consumer_mesh: str, matches: list[PrincipalMatch]
) -> str | None:
    """Who a check of ``server`` presents itself as. An HTTP listener verifies the chain at the
    handshake and decides on the identity after it: meshfed's own prober identity serves (it is
    refused with 403, which proves the handshake passed, and the log names it). A TCP export
    admits only its allowed identities to the handshake: one of them."""
    if server.protocol == "HTTP":
        return prober_spiffe_id(plan.mesh(consumer_mesh).trust_domain)
    exact = [p.value for p in matches if not p.prefix]
    if exact:
        return exact[0]
    for w in plan.mesh(consumer_mesh).workloads:
        if any(p.matches(w.spiffe_id) for p in matches):
            return w.spiffe_id
    for p in matches:
        for cand in p.completions(CHECK_SERVICE_ACCOUNT):
            if server.allows(cand, "GET", "/") or server.protocol == "TCP":
                return cand
    return None


def handshake_targets(plan: FederationPlan, layout: LocalLayout) -> list[Target]:
    """Every mTLS listener of the local federation, once per caller mesh it admits."""
    out: list[Target] = []
    local = {m.name for m in plan.meshes}
    for mesh in plan.meshes:
        ing = mesh.ingress
        seen: set[tuple[str, str]] = set()
        for server in ing.servers:
            for rule in server.allow:
                key = (rule.consumer_mesh, server.protocol)
                if key in seen or rule.consumer_mesh not in local:
                    continue  # a partner's callers: no CA here to issue a test certificate
                cid = _client_id(plan, server, rule.consumer_mesh, list(rule.principals))
                if cid is None:
                    continue
                seen.add(key)
                out.append(
                    Target(
                        f"{mesh.name}/ingress",
                        mesh.name,
                        ing.address,
                        ing.port,
                        server.sni,
                        server.protocol,
                        rule.consumer_mesh,
                        cid,
                    )
                )
        for w in mesh.workloads:
            sidecar = layout.meshes[mesh.name].sidecars[w.ref]
            out.append(
                Target(
                    f"{mesh.name}/sidecar/{w.ref}",
                    mesh.name,
                    layout.address,
                    sidecar.inbound_port,
                    w.fqdn,
                    w.protocol,
                    mesh.name,
                    ing.spiffe_id,
                )
            )
    return out


@dataclass(frozen=True)
class Handshake:
    target: Target
    accepted: bool
    served: x509.Certificate | None
    detail: str


@contextmanager
def _private_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="meshfed-rotate-"))
    try:
        os.chmod(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def handshake(
    target: Target, ca: MeshCA, now: datetime | None = None, ledger: ProbeLedger | None = None
) -> Handshake:
    """Connect to ``target`` presenting a fresh certificate for its caller issued by ``ca``;
    with ``ledger``, the certificate (and an HTTP request's token) are recorded first, so the
    boundary log counts the check as meshfed's own."""
    now = now or datetime.now(UTC)
    key, cert = ca.issue(target.client_id, TEST_CERT_TTL, now)
    token = None
    if ledger is not None:
        ledger.certificate(ROTATION_CHECK, target.describe(), cert)
        if target.protocol == "HTTP":
            token = ledger.token(ROTATION_CHECK, target.describe())
    with _private_dir() as tmp:
        pem = tmp / "client.pem"
        fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert_to_pem(cert) + cert_to_pem(ca.ca_cert) + key_to_pem(key))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the served chain is checked by the caller, in-process
        ctx.load_cert_chain(str(pem))
    if target.protocol == "HTTP":
        ctx.set_alpn_protocols(["http/1.1"])
    return _connect(target, ctx, token)


def _connect(target: Target, ctx: ssl.SSLContext, token: str | None = None) -> Handshake:
    try:
        raw = socket.create_connection((target.address, target.port), timeout=HANDSHAKE_TIMEOUT)
    except OSError as exc:
        return Handshake(target, False, None, f"connect: {exc}")
    served = None
    try:
        tls = ctx.wrap_socket(raw, server_hostname=target.sni)
        der = tls.getpeercert(binary_form=True)
        served = x509.load_der_x509_certificate(der) if der else None
        if target.protocol == "HTTP":
            conn = http.client.HTTPConnection(
                target.address, target.port, timeout=HANDSHAKE_TIMEOUT
            )
            conn.sock = tls
            headers = {"Host": target.sni, "Connection": "close"}
            if token is not None:
                headers[PROBE_HEADER] = token
            conn.request("GET", "/", headers=headers)
            resp = conn.getresponse()
            resp.read()
            return Handshake(target, True, served, f"HTTP {resp.status}")
        data = tls.recv(256)
        if data:
            return Handshake(target, True, served, "greeting")
        return Handshake(target, False, served, "closed without a greeting")
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return Handshake(target, False, served, f"{type(exc).__name__}: {exc}")
    finally:
        raw.close()


def sds_bundles(paths: RuntimePaths, process: ProcessConfig) -> dict[str, dict[str, str]]:
    """What a process's validation secrets on disk trust: secret -> trust domain -> PEM."""
    out: dict[str, dict[str, str]] = {}
    files = EnvoyFiles(paths.root, process)
    for name in process.trust:
        doc: Any = read_json(files.sds_path(name))
        try:
            validator = doc["resources"][0]["validation_context"]["custom_validator_config"]
            domains = validator["typed_config"]["trust_domains"]
        except (KeyError, IndexError, TypeError):
            continue
        out[name] = {d["name"]: d["trust_bundle"]["inline_string"] for d in domains}
    return out
