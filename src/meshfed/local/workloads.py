"""The workload host: one process serving every workload of the local federation.

    python -m meshfed.local.workloads STATE/local/workloads.json

Each workload listens (plain, loopback) on its app port behind its sidecar:

- HTTP: every request, any method and path, is answered with JSON
  ``{"mesh", "workload": "<ns>/<name>", "caller", "method", "path", "headers"}``, where
  ``caller`` is the verified identity derived from the ``x-forwarded-client-cert`` header its
  sidecar passes on (see ``meshfed.local.xfcc``), or null, and ``headers`` every request header
  that reached the workload (what crossed the boundary).
- TCP: sends one JSON greeting line ``{"mesh", "workload"}``, then echoes every line it receives.

SIGHUP re-reads the configuration: new workloads start, removed ones stop, the others keep their
sockets (a live ``meshfed up`` never drops a connection). SIGTERM stops the host.
"""

from __future__ import annotations

import json
import signal
import socket
import socketserver
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from meshfed.local.xfcc import caller_from_xfcc

ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class WorkloadSpec:
    mesh: str
    workload: str
    """``<namespace>/<name>``."""
    protocol: str
    port: int
    spiffe_id: str
    ingress_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "mesh": self.mesh,
            "workload": self.workload,
            "protocol": self.protocol,
            "port": self.port,
            "spiffe_id": self.spiffe_id,
            "ingress_id": self.ingress_id,
        }


def load_config(path: Path) -> list[WorkloadSpec]:
    doc = json.loads(path.read_text())
    return [
        WorkloadSpec(
            mesh=w["mesh"],
            workload=w["workload"],
            protocol=w["protocol"],
            port=int(w["port"]),
            spiffe_id=w["spiffe_id"],
            ingress_id=w["ingress_id"],
        )
        for w in doc["workloads"]
    ]


def answer(
    spec: WorkloadSpec,
    method: str,
    path: str,
    xfcc: str | None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What an HTTP workload answers to a request: who it is, who called, and what arrived
    (``headers``: every request header it received, by lower-case name)."""
    return {
        "mesh": spec.mesh,
        "workload": spec.workload,
        "caller": caller_from_xfcc(xfcc, spec.spiffe_id, spec.ingress_id),
        "method": method,
        "path": path,
        "headers": dict(sorted((headers or {}).items())),
    }


class _HTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response: headers and body leave together. Without it, Nagle plus the
    # peer's delayed ACK cost about 40 ms per request behind Envoy.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: _HTTPServer

    def __getattr__(self, name: str) -> Any:
        # Every method is the workload's: do_GET, do_POST, do_BREW, ...
        if name.startswith("do_"):
            return self._reply
        raise AttributeError(name)

    def _read_body(self) -> None:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                self.rfile.read(size + 2)
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)

    def _reply(self) -> None:
        self._read_body()
        received = {name.lower(): value for name, value in self.headers.items()}
        doc = answer(
            self.server.spec,
            self.command,
            self.path,
            self.headers.get("x-forwarded-client-cert"),
            received,
        )
        body = (json.dumps(doc) + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # socketserver's default backlog of 5 dropped bursts (bench)

    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        super().__init__((ADDRESS, spec.port), _HTTPHandler)


class _TCPHandler(socketserver.StreamRequestHandler):
    server: _TCPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        spec = self.server.spec
        greeting = {"mesh": spec.mesh, "workload": spec.workload}
        self.wfile.write((json.dumps(greeting) + "\n").encode())
        self.wfile.flush()
        for line in self.rfile:
            self.wfile.write(line)
            self.wfile.flush()


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        super().__init__((ADDRESS, spec.port), _TCPHandler)


Server = _HTTPServer | _TCPServer


class Host:
    """The running servers, one per workload, keyed by the workload's configuration."""

    def __init__(self) -> None:
        self.servers: dict[WorkloadSpec, Server] = {}

    def apply(self, specs: list[WorkloadSpec]) -> None:
        wanted = set(specs)
        for spec in [s for s in self.servers if s not in wanted]:
            old = self.servers.pop(spec)
            old.shutdown()
            old.server_close()
        for spec in specs:
            if spec in self.servers:
                continue
            try:
                server: Server = _HTTPServer(spec) if spec.protocol == "HTTP" else _TCPServer(spec)
            except OSError as exc:
                print(f"workload {spec.mesh}/{spec.workload}: port {spec.port}: {exc}", flush=True)
                continue
            threading.Thread(
                target=server.serve_forever,
                args=(0.1,),  # how soon a removed workload's server notices shutdown()
                name=f"{spec.mesh}/{spec.workload}",
                daemon=True,
            ).start()
            self.servers[spec] = server

    def close(self) -> None:
        self.apply([])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m meshfed.local.workloads CONFIG.json", file=sys.stderr)
        return 2
    config = Path(argv[0])
    host = Host()
    reload = threading.Event()
    stop = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    reload.set()
    _start_renewer(config, stop)
    while not stop.is_set():
        if reload.is_set():
            reload.clear()
            try:
                host.apply(load_config(config))
            except (OSError, ValueError, KeyError) as exc:
                print(f"cannot read {config}: {exc}", flush=True)
        stop.wait(0.05)
    host.close()
    return 0


def _start_renewer(config: Path, stop: threading.Event) -> None:
    """Renew the Envoys' certificates while the federation runs (``STATE/local/`` holds the
    config; see ``meshfed.local.certs.Renewer``)."""
    from meshfed.local.certs import Renewer

    state_dir = config.resolve().parent.parent
    renewer = Renewer(state_dir, lambda line: print(line, flush=True))
    threading.Thread(target=renewer.run_forever, args=(stop,), name="renewer", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
