"""One probe per import: proof that the whole path works, from a consumer sidecar to the exporter.

HTTP: a request through the outbound port of a workload of the importing mesh that the first
source allows, with an allowed method and path; success is a 200 answered by an exporting
workload (its JSON names the mesh). If no workload of the mesh is allowed (principals that match
none of its declared workloads), any answer from the exporting ingress (its RBAC's 403) proves
the path instead: egress passthrough, the mTLS handshake with the workload certificate, the
ingress's decision.

TCP: a connection through the sidecar's local port for the import, by an allowed workload; success
is the exporting workload's greeting line. Without an allowed workload the TCP probe is skipped
(the ingress closes such connections without a word).

Every HTTP attempt carries a token of the probe ledger in ``x-meshfed-probe``; every TCP attempt
records its socket's address before it connects and its release before it closes (``prober.py``,
``hops.py``): the boundary log and the dashboard count both as meshfed's own, apart from the
callers'.

``probe_path`` names the processes a probe's call passes through: after a live change, ``up``
probes again only the imports whose path changed (and those that never passed).

A probe retries for its whole budget while the path may still be coming up (our own Envoys, an
exporter's ingress this federation runs). One exception: an import served only by partners'
ingresses (another organisation's, ``partner_sources``) whose every address actively refuses
connections (ECONNREFUSED: nothing listens there) for ``REFUSED_FOR`` fails at once and says so:
nothing run here can change that, and the user wants to hear it now, not after the budget. That
is checked with a bare TCP connect to each partner's address (closed at once), made only after
the probe has failed for ``REFUSAL_CHECK_AFTER`` and never again once a partner accepted one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from dataclasses import asdict, dataclass

from meshfed.local.ports import LOOPBACK
from meshfed.local.prober import IMPORT_PROBE, PROBE_HEADER, ProbeLedger
from meshfed.plan.model import FederationPlan, ImportRoute, MeshPlan, Source, Workload
from meshfed.render.envoy.layout import LocalLayout

RETRY_STATUSES = frozenset({502, 503, 504})
"""Statuses the consumer's own sidecar answers when it has no path (yet): not a proof."""
REFUSAL_CHECK_AFTER = 0.25
"""Seconds a probe to partners runs before their addresses are checked for refusal (a probe
through a healthy path passes before: a partner that is up is normally never connected to)."""
REFUSED_FOR = 1.0
"""Seconds every partner address must keep refusing before the probe stops retrying (a partner
whose ingress is just starting gets that long to listen)."""
REFUSAL_CHECK_INTERVAL = 0.25


@dataclass(frozen=True)
class Probe:
    mesh: str
    key: str
    """``<local host>:<port>`` of the import."""
    protocol: str
    workload: str | None
    """``<ns>/<name>`` the probe runs as; None: skipped."""
    port: int
    """Sidecar port: the HTTP outbound port or the TCP import's local port."""
    host: str
    method: str = "GET"
    path: str = "/"
    allowed: bool = True
    """False: the workload is not allowed; an answer from the exporting ingress is the proof."""


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    ok: bool
    detail: str
    checked: bool = True
    """False: not run again (nothing on its path changed since it passed)."""
    refused: tuple[Source, ...] = ()
    """The partners' ingresses that refused every connection, when that ended the probe."""


Hop = tuple[str, str, str | None]
"""A process on a probe's path: (mesh, role, workload of a sidecar)."""


def probe_path(plan: FederationPlan, probe: Probe) -> frozenset[Hop]:
    """The Envoys a probe's call passes through: the caller's sidecar, its mesh's egress, and
    for every source (failover included) the exporting ingress and the exported workload's
    sidecar."""
    route = _route(plan, probe)
    hops: set[Hop] = {(probe.mesh, "egress", None)}
    if probe.workload is not None:
        hops.add((probe.mesh, "sidecar", probe.workload))
    for source in route.sources:
        hops.add((source.mesh, "ingress", None))
        server = plan.ingress_of(source.mesh).server(route.wire_host)
        if server is not None:
            hops.add((source.mesh, "sidecar", server.workload.ref))
    return frozenset(hops)


def partner_sources(plan: FederationPlan, probe: Probe) -> tuple[Source, ...]:
    """The sources of the probed import when every one is a partner's mesh (run by another
    organisation, not here): its probe fails until the partner's ingress is up, which nothing
    run here can change. Empty when any source is a mesh of this federation."""
    route = _route(plan, probe)
    partners = {p.name for p in plan.partners}
    if all(s.mesh in partners for s in route.sources):
        return route.sources
    return ()


def _route(plan: FederationPlan, probe: Probe) -> ImportRoute:
    return next(r for r in plan.mesh(probe.mesh).imports if f"{r.local_host}:{r.port}" == probe.key)


def probe_key(probe: Probe) -> str:
    """The probe in one string: a probe that passed is known again only if it is the same."""
    return json.dumps(asdict(probe), sort_keys=True)


def _allowed_request(
    route: ImportRoute, plan: FederationPlan, w: Workload
) -> tuple[str, str] | None:
    """An (method, path) the first source lets ``w`` use, if any."""
    source = route.sources[0]
    server = plan.ingress_of(source.mesh).server(route.wire_host)
    if server is None:
        return None
    for rule in server.allow:
        if rule.consumer_mesh != route.mesh:
            continue
        methods = sorted(rule.methods, key=lambda m: (m != "GET", m)) or ["GET"]
        paths = [p.value for p in rule.paths] or ["/"]
        for method in methods:
            for path in paths:
                if server.allows(w.spiffe_id, method, path):
                    return method, path
    return None


def plan_probes(plan: FederationPlan, layout: LocalLayout) -> list[Probe]:
    probes = []
    for mesh in plan.meshes:
        for route in mesh.imports:
            probes.append(_probe_for(plan, mesh, route, layout))
    return probes


def _probe_for(
    plan: FederationPlan, mesh: MeshPlan, route: ImportRoute, layout: LocalLayout
) -> Probe:
    key = f"{route.local_host}:{route.port}"
    sidecars = layout.meshes[mesh.name].sidecars
    for w in mesh.workloads:
        request = _allowed_request(route, plan, w)
        if request is None:
            continue
        sidecar = sidecars[w.ref]
        if route.protocol == "TCP":
            return Probe(mesh.name, key, "TCP", w.ref, sidecar.tcp_outbound[key], route.local_host)
        return Probe(
            mesh.name, key, "HTTP", w.ref, sidecar.outbound_port, route.local_host, *request
        )
    if route.protocol == "HTTP" and mesh.workloads:
        w = mesh.workloads[0]
        return Probe(
            mesh.name, key, "HTTP", w.ref, sidecars[w.ref].outbound_port, route.local_host,
            allowed=False,
        )  # fmt: skip
    return Probe(mesh.name, key, route.protocol, None, 0, route.local_host)


def run_probe(
    probe: Probe,
    timeout: float = 10.0,
    ledger: ProbeLedger | None = None,
    what: str = IMPORT_PROBE,
    partners: tuple[Source, ...] = (),
) -> ProbeResult:
    """Retry until the probe succeeds or ``timeout`` passes (gateways may still be warming).
    With ``ledger``, every attempt is recorded as meshfed's own (``prober.py``) under ``what``:
    ``up``'s import probes, or a rotation's end-to-end checks (``ROTATION_CHECK``).
    ``partners``: the import's sources when all are partners' (``partner_sources``): the probe
    ends early when every one of their addresses keeps refusing connections."""
    if probe.workload is None:
        return ProbeResult(probe, True, "skipped: no workload of the mesh may call it")
    deadline = time.monotonic() + timeout
    refusals = _Refusals(partners)
    # Checked beside the attempts: an attempt through the sidecar takes as long as its retries.
    watcher = threading.Thread(target=refusals.watch, daemon=True, name="probe-refusals")
    if partners:
        watcher.start()
    last = "no answer yet"
    try:
        while True:
            attempt = (
                _attempt(probe, ledger, what)
                if not partners
                else _unless(refusals, probe, ledger, what)
            )
            if attempt is None:
                return ProbeResult(probe, False, refusals.describe(last), refused=partners)
            ok, last = attempt
            if ok:
                return ProbeResult(probe, True, last)
            # While every partner refuses, wait for the verdict rather than try again.
            while refusals.refusing() and time.monotonic() < deadline:
                if refusals.established.wait(0.05):
                    return ProbeResult(probe, False, refusals.describe(last), refused=partners)
            if time.monotonic() > deadline:
                return ProbeResult(probe, False, last)
            time.sleep(0.05)
    finally:
        refusals.done.set()
        if partners:
            watcher.join()


def _unless(
    refusals: _Refusals, probe: Probe, ledger: ProbeLedger | None, what: str
) -> tuple[bool, str] | None:
    """One attempt, or None as soon as the partners' refusal is established: an attempt through
    the sidecar lasts as long as its retries (seconds), and the verdict is already known. The
    attempt left behind ends on its own (its socket's timeout) and is not waited for."""
    box: list[tuple[bool, str]] = []
    worker = threading.Thread(
        target=lambda: box.append(_attempt(probe, ledger, what)), daemon=True, name="probe"
    )
    worker.start()
    while worker.is_alive():
        if refusals.established.wait(0.05):
            return None
    worker.join()
    return box[0]


class _Refusals:
    """Whether every partner address has kept refusing connections, and since when
    (``run_probe``)."""

    def __init__(self, partners: tuple[Source, ...]) -> None:
        self.partners = partners
        self.listening = not partners
        """A partner accepted a connection: checked no more (the probe retries to the end)."""
        self.since: float | None = None
        self.checked = 0.0
        self.refusals = 0
        """Checks in a row at which every address refused."""
        self.done = threading.Event()
        """Set when the probe ended: no more checks."""
        self.established = threading.Event()
        """Set when every address kept refusing for ``REFUSED_FOR``."""

    def refused_for(self, now: float) -> float:
        """Seconds every partner address has kept refusing (0: not so, or not checked)."""
        if self.listening:
            return 0.0
        if now - self.checked >= REFUSAL_CHECK_INTERVAL:
            self.checked = now
            answers = [refuses(s.address, s.port) for s in self.partners]
            self.listening = any(a is False for a in answers)
            if all(answers):
                self.since = now if self.since is None else self.since
                self.refusals += 1
            else:
                self.since, self.refusals = None, 0
        return 0.0 if self.since is None else now - self.since

    def refusing(self) -> bool:
        """Every partner address refused at the last check (the verdict may be coming)."""
        return self.since is not None and not self.listening

    def watch(self) -> None:
        """Check every ``REFUSAL_CHECK_INTERVAL`` from ``REFUSAL_CHECK_AFTER`` on, until the
        probe is done (``done``), a partner listens, or the refusal is ``established``."""
        if self.done.wait(REFUSAL_CHECK_AFTER):
            return
        while not self.listening:
            if self.refused_for(time.monotonic()) >= REFUSED_FOR:
                self.established.set()
                return
            if self.done.wait(REFUSAL_CHECK_INTERVAL):
                return

    def describe(self, last: str) -> str:
        where = ", ".join(f"{s.mesh}'s ingress {s.address}:{s.port}" for s in self.partners)
        span = self.checked - (self.since or self.checked)
        return (
            f"{where} refuses connections (ECONNREFUSED {self.refusals} times in {span:.1f} s: "
            f"nothing listens there); the probe: {last}"
        )


def refuses(address: str, port: int, timeout: float = 0.5) -> bool | None:
    """Whether ``address:port`` actively refuses a TCP connection (True), accepts it (False: it
    is closed at once, nothing sent), or neither within ``timeout`` (None: unreachable, filtered,
    slow; not a refusal)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return None


def _attempt(probe: Probe, ledger: ProbeLedger | None, what: str) -> tuple[bool, str]:
    target = f"{probe.mesh} {probe.key} as {probe.workload}"
    if probe.protocol == "TCP":
        return _attempt_tcp(probe, ledger, target, what)
    headers = {"Host": probe.host}
    if ledger is not None:
        headers[PROBE_HEADER] = ledger.token(what, target)
    conn = http.client.HTTPConnection(LOOPBACK, probe.port, timeout=3)
    try:
        conn.request(probe.method, probe.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return False, f"no HTTP response ({type(exc).__name__})"
    finally:
        conn.close()
    if probe.allowed:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if resp.status == 200 and isinstance(doc, dict) and "mesh" in doc:
            return True, f"200 from {doc['mesh']}/{doc.get('workload')}"
        return False, f"{probe.method} {probe.path} as {probe.workload}: HTTP {resp.status}"
    if resp.status not in RETRY_STATUSES:
        return True, f"as {probe.workload} (not allowed): HTTP {resp.status} from the exporter"
    return False, f"HTTP {resp.status}"


def _attempt_tcp(
    probe: Probe, ledger: ProbeLedger | None, target: str, what: str
) -> tuple[bool, str]:
    # Bound first (no SO_REUSEADDR: nobody else can bind the address while it is held), so the
    # ledger can say which connection is the probe's before it is made.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.bind((LOOPBACK, 0))
        except OSError as exc:
            return False, f"no connection ({type(exc).__name__})"
        source = "{}:{}".format(*s.getsockname())
        held = (
            ledger.holding(what, target, source, f"{LOOPBACK}:{probe.port}")
            if ledger is not None
            else contextlib.nullcontext()
        )
        with held:
            try:
                s.connect((LOOPBACK, probe.port))
                greeting = s.makefile("rb").readline()
            except OSError as exc:
                return False, f"no connection ({type(exc).__name__})"
    try:
        doc = json.loads(greeting)
    except ValueError:
        return False, "no greeting"
    if not isinstance(doc, dict):
        return False, "no greeting"
    return True, f"greeting from {doc.get('mesh')}/{doc.get('workload')}"
