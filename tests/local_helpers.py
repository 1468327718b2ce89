"""Helpers for the local-runtime tests: free ports, spec copies, a running federation, clients."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from meshfed.examples import example_path
from meshfed.local.client import NoResponse, Response, http_call
from meshfed.local.ports import PortAllocator
from meshfed.local.procs import processes_mentioning
from meshfed.local.runtime import Runtime, UpReport
from meshfed.pki.certs import cert_to_pem
from meshfed.pki.keys import PrivateKey, key_to_pem
from meshfed.plan.model import FederationPlan
from meshfed.render.envoy.layout import LocalLayout, MeshLayout, SidecarLayout
from meshfed.workspace import Workspace, open_workspace

LOOPBACK = "127.0.0.1"
TEST_ADMIN = Path("/run/meshfed-test/admin")
"""The admin socket directory of layouts that are only rendered (no Envoy runs them)."""


def numbered_layout(plan: FederationPlan) -> LocalLayout:
    """A port layout for rendering only (nothing listens): ports handed out in order."""
    ports = iter(range(21000, 60000))
    return LocalLayout(
        {
            m.name: MeshLayout(
                m.name,
                str(TEST_ADMIN / f"{m.name}_ingress.sock"),
                next(ports),
                str(TEST_ADMIN / f"{m.name}_egress.sock"),
                {
                    w.ref: SidecarLayout(
                        w.ref,
                        next(ports),
                        next(ports),
                        next(ports),
                        str(TEST_ADMIN / f"{m.name}_sidecar_{w.ref.replace('/', '_')}.sock"),
                        {
                            f"{i.local_host}:{i.port}": next(ports)
                            for i in m.imports
                            if i.protocol == "TCP"
                        },
                    )
                    for w in m.workloads
                },
            )
            for m in plan.meshes
        },
        admin_dir=str(TEST_ADMIN),
    )


def spec_copy(name: str, directory: Path, edit: Callable[[str], str] | None = None) -> Path:
    """A copy of a bundled example with every ingress port moved to a free loopback port."""
    text = example_path(name).read_text()
    alloc = PortAllocator()
    text = re.sub(
        r"ingress: \{address: 127\.0\.0\.1, port: \d+\}",
        lambda _: f"ingress: {{address: 127.0.0.1, port: {alloc.allocate()}}}",
        text,
    )
    if edit is not None:
        text = edit(text)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def cli() -> click.Group:
    """The meshfed command group with the local commands (wired in by main, or here)."""
    from meshfed.cli.main import main

    if "up" not in main.commands:
        from meshfed.cli.local import register

        register(main)
    return main


@dataclass
class Fed:
    """A federation the tests started; always ``close()`` it."""

    spec: Path
    state: Path
    runtime: Runtime
    report: UpReport
    ws: Workspace

    @classmethod
    def start(cls, spec: Path, state: Path) -> Fed:
        ws = open_workspace(spec, state)
        runtime = Runtime(state)
        report = runtime.up(ws)
        assert report.ok, [p.detail for p in report.probes if not p.ok]
        return cls(spec, state, runtime, report, ws)

    def reup(self, spec: Path | None = None) -> UpReport:
        self.ws = open_workspace(spec or self.spec, self.state)
        self.report = self.runtime.up(self.ws)
        return self.report

    def close(self) -> None:
        self.runtime.down()
        assert_nothing_left(self.state)

    # --- addressing

    def sidecar(self, mesh: str, workload: str) -> Any:
        layout = self.runtime.layout()
        assert layout is not None
        return layout.meshes[mesh].sidecars[workload]

    def call(
        self,
        mesh: str,
        workload: str,
        url: str,
        method: str = "GET",
        data: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        port = self.sidecar(mesh, workload).outbound_port
        return http_call(port, method, url, data, headers, timeout)

    def served_by(
        self,
        exporter: str,
        mesh: str,
        workload: str,
        url: str,
        method: str = "GET",
        data: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """The answer to an allowed call as ``exporter`` gives it (the test workload names its
        mesh). On a starved machine the consumer's egress may find an exporter's ingress slow
        to answer its health check (``FailoverPolicy.probe_timeout``) and rightly fail over
        to another source for a while; a test of one exporter's path waits for it."""
        answered: list[dict[str, Any]] = []

        def from_exporter() -> bool:
            resp = self.call(mesh, workload, url, method, data, headers)
            assert resp.status == 200, resp
            answered.append(json.loads(resp.body))
            return bool(answered[-1]["mesh"] == exporter)

        poll(from_exporter, timeout, interval=0.5)
        assert answered[-1]["mesh"] == exporter, answered[-1]
        return answered[-1]

    def pids(self) -> dict[str, int]:
        return {n: r.pid for n, r in self.runtime.processes().items() if r.alive}

    def ingress(self, mesh: str) -> tuple[str, int]:
        m = self.ws.plan.mesh(mesh)
        return m.ingress.address, m.ingress.port

    def leaf(self, mesh: str, spiffe_id: str) -> tuple[PrivateKey, x509.Certificate]:
        ca = self.ws.pki.meshes[mesh]
        return ca.issue(spiffe_id, timedelta(hours=1), datetime.now(UTC))

    def root_pem(self, mesh: str) -> str:
        return cert_to_pem(self.ws.pki.meshes[mesh].root_cert).decode()


def assert_nothing_left(state: Path) -> None:
    deadline = time.monotonic() + 5
    left = processes_mentioning(state / "local")
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_mentioning(state / "local")
    assert not left, f"processes left behind: {left}"


# --- direct TLS clients --------------------------------------------------------------------------


def client_context(
    tmp: Path,
    chain: list[x509.Certificate] | None,
    key: PrivateKey | None,
    trust_pem: str | None,
) -> ssl.SSLContext:
    """An mTLS client context presenting ``chain`` (leaf first) and trusting ``trust_pem``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # servers have URI SANs only
    if trust_pem is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=trust_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    if chain is not None and key is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        fd, name = _private_file(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(cert_to_pem(c) for c in chain) + key_to_pem(key))
        ctx.load_cert_chain(name)
        os.unlink(name)
    return ctx


def _private_file(tmp: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(dir=tmp, suffix=".pem")


@dataclass
class TLSResult:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None
    """Why no HTTP response came."""

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


def tls_request(
    address: str,
    port: int,
    sni: str,
    ctx: ssl.SSLContext,
    host: str,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
) -> TLSResult:
    """One HTTP/1.1 request over TLS straight to a gateway; ``status`` None if no response."""
    try:
        raw = socket.create_connection((address, port), timeout=5)
    except OSError as exc:
        return TLSResult(None, error=f"connect: {exc}")
    try:
        tls = ctx.wrap_socket(raw, server_hostname=sni)
        conn = http.client.HTTPConnection(address, port, timeout=5)
        conn.sock = tls
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return TLSResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return TLSResult(None, error=f"{type(exc).__name__}: {exc}")
    finally:
        raw.close()


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    status: int
    """0: no HTTP response."""
    mesh: str | None


class Loop(threading.Thread):
    """Calls ``call()`` every ``interval`` seconds until stopped; records every outcome."""

    def __init__(self, call: Callable[[], Response], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.fn = call
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            t = time.monotonic()
            try:
                resp = self.fn()
                mesh = json.loads(resp.body).get("mesh") if resp.status == 200 else None
                self.samples.append(Sample(t, resp.status, mesh))
            except (NoResponse, ValueError):
                self.samples.append(Sample(t, 0, None))
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def stop(self) -> list[Sample]:
        self._stop_event.set()
        self.join()
        return self.samples

    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]


def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Seconds until ``condition()`` held, or None if it did not within ``timeout``."""
    t0 = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


def read_log_lines(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def tcp_greeting_and_echo(port: int) -> dict[str, Any]:
    """Through a TCP import on ``port``: the exporting workload's greeting (it speaks first),
    after checking that one line sent comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rwb")
        greeting: dict[str, Any] = json.loads(f.readline())
        f.write(b"ping\n")
        f.flush()
        assert f.readline() == b"ping\n"
    return greeting


# --- meshfed as a user runs it -------------------------------------------------------------------

ENTRY = "import sys\nfrom meshfed.cli.entry import run\nsys.argv[0] = 'meshfed'\nrun()\n"
"""``python -c ENTRY ARGS...`` runs the ``meshfed`` console script's entry point."""


class MeshfedProcess:
    """``meshfed ARGS`` in a subprocess (through the console script's entry point), its output
    lines as they come; ``hold`` parks it at a ``meshfed.holds`` point (``reached()`` then)."""

    def __init__(self, *args: str, hold: str | None = None, marker: Path | None = None) -> None:
        import queue
        import signal
        import subprocess
        import sys

        env = dict(os.environ)
        self.marker = marker
        if hold is not None:
            assert marker is not None
            env.update({"MESHFED_TEST_HOLD": hold, "MESHFED_TEST_HOLD_FILE": str(marker)})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ENTRY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            # A child of a non-interactive shell may inherit an ignored SIGINT: give it back.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.seen: list[tuple[str, str]] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.readers = [
            threading.Thread(target=self._read, args=(stream, name), daemon=True)
            for stream, name in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: Any, name: str) -> None:
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))

    def reached(self, timeout: float = 60) -> None:
        """Until the process is parked at its hold point."""
        assert self.marker is not None
        found = poll(lambda: self.marker is not None and self.marker.exists(), timeout, 0.005)
        assert found is not None, f"never reached the hold point; output: {self.drain()}"

    def release(self) -> None:
        """Let a parked process go on."""
        assert self.marker is not None
        self.marker.unlink()

    def expect(self, stream: str, matches: Callable[[str], bool], timeout: float = 60) -> str:
        """The next line of ``stream`` that ``matches`` (earlier lines are kept in ``seen``)."""
        import queue

        while True:
            try:
                name, line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no such line; output so far: {self.seen}") from None
            self.seen.append((name, line))
            if name == stream and matches(line):
                return line

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=5)  # its output ends with it
        self.drain()
        return code

    def drain(self) -> list[tuple[str, str]]:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen

    def output(self, stream: str) -> list[str]:
        return [line for name, line in self.seen if name == stream]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
