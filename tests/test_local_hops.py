"""A TCP import probe's connection followed hop by hop (``local/hops.py``), on log lines shaped as
the local Envoys write them (``tests/test_local_counters.py`` checks the same on real Envoy): a
line is meshfed's own only when its connection's addresses reach a released ledger record
through every hop before it, within each hop's lifetime; never by time or address alone. An
HTTP import probe's connection at the egress likewise, from the sidecar's line of its marked
request."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from meshfed.dashboard.logtail import BoundaryTail
from meshfed.local.hops import PENDING
from meshfed.local.logs import LogEntry, follow, marked
from meshfed.local.paths import RuntimePaths
from meshfed.local.probe import Probe, run_probe
from meshfed.local.prober import IMPORT_PROBE, Marks, ProbeLedger, ledger_path, load_marks
from meshfed.local.summary import MeshInfo, RuntimeSummary

SIDECAR = "127.0.0.1:27386"
EGRESS = "127.0.0.1:27387"
INGRESS = "127.0.0.1:29117"
SNI = "ledger.payments.bank.global"
CHECKOUT = "spiffe://web.bank.example/ns/shop/sa/checkout"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _conn(
    t: datetime, peer: str, local: str, upstream: str | None = None,
    upstream_local: str | None = None, duration: int = 18, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    doc = {"time": _iso(t), "kind": "connection", "sni": SNI, "peer": peer, "local": local}
    if upstream is not None:
        doc |= {"upstream": upstream, "upstream_local": upstream_local, "duration_ms": duration}
    return doc | extra


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    with path.open("a") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")


class Chain:
    """One connection from ``source`` through the sidecar, the egress and the ingress, begun
    at ``t`` (its last hop 8 ms later: made within a probe's hold, the hold lasts longer)."""

    def __init__(self, t: datetime, source: str, n: int = 0) -> None:
        self.sidecar = _conn(t, source, SIDECAR, EGRESS, f"127.0.0.1:{45700 + n}", 19)
        self.egress = _conn(
            t + timedelta(milliseconds=1), f"127.0.0.1:{45700 + n}", EGRESS, INGRESS,
            f"127.0.0.1:{51400 + n}", 18, gateway="egress",
        )  # fmt: skip
        self.ingress = _conn(
            t + timedelta(milliseconds=8), f"127.0.0.1:{51400 + n}", INGRESS,
            gateway="ingress", caller=CHECKOUT, decision="allowed",
        )  # fmt: skip


@pytest.fixture
def paths(tmp_path: Path) -> RuntimePaths:
    return RuntimePaths(tmp_path)


def _hops(tmp_path: Path, chains: list[Chain]) -> list[Path]:
    sidecar, egress = tmp_path / "sidecar.access.log", tmp_path / "egress.access.log"
    _write(sidecar, [c.sidecar for c in chains])
    _write(egress, [c.egress for c in chains])
    return [sidecar, egress]


def _final(marks: Marks, doc: dict[str, Any]) -> str | None:
    """What a reader decides about ``doc`` (a line still pending after the wait: a caller's)."""
    return marked([LogEntry("payments/ingress", "access", doc)], marks, lambda: None, 0.1)[0].probe


def _marks(paths: RuntimePaths, hops: list[Path]) -> Marks:
    marks = load_marks(paths)
    marks.read_hops(hops)
    return marks


def test_a_probe_connection_is_marked_at_every_gateway_and_nothing_else(
    tmp_path: Path, paths: RuntimePaths
) -> None:
    ledger = ProbeLedger(paths)
    with ledger.holding(IMPORT_PROBE, "web ledger", "127.0.0.1:54355", SIDECAR):
        probe = Chain(datetime.now(UTC), "127.0.0.1:54355")
        time.sleep(0.02)
    caller = Chain(datetime.now(UTC) + timedelta(seconds=1), "127.0.0.1:54356", 1)
    marks = _marks(paths, _hops(tmp_path, [probe, caller]))
    assert marks.mark(probe.egress) == IMPORT_PROBE
    assert marks.mark(probe.ingress) == IMPORT_PROBE
    # The listener's line of the same connection at the ingress (its own start, earlier).
    accepted = probe.ingress | {"time": probe.egress["time"]}
    assert marks.mark(accepted) == IMPORT_PROBE
    # A caller's connection after the probe released its socket: no probe was held then.
    assert marks.mark(caller.egress) is None and marks.mark(caller.ingress) is None
    assert _final(marks, probe.ingress) == IMPORT_PROBE


def test_a_connection_is_not_the_probes_by_time_or_address_alone(
    tmp_path: Path, paths: RuntimePaths
) -> None:
    ledger = ProbeLedger(paths)
    t = datetime.now(UTC)
    with ledger.holding(IMPORT_PROBE, "web ledger", "127.0.0.1:54355", SIDECAR):
        # While the probe is held, a caller's connection from another address.
        other = Chain(datetime.now(UTC), "127.0.0.1:60000", 2)
        # The probe's own address, but to another listener: not the recorded connection.
        elsewhere = Chain(datetime.now(UTC), "127.0.0.1:54355", 3)
        elsewhere.sidecar["local"] = "127.0.0.1:1"
        # The right egress connection's addresses, but an ingress line from after it closed.
        probe = Chain(datetime.now(UTC), "127.0.0.1:54355", 4)
        time.sleep(0.02)
    late = probe.ingress | {"time": _iso(t + timedelta(seconds=30))}
    marks = _marks(paths, _hops(tmp_path, [other, elsewhere, probe]))
    assert marks.mark(probe.ingress) == IMPORT_PROBE
    assert marks.mark(other.ingress) == PENDING  # from while the probe was held: asked again
    assert _final(marks, other.ingress) is None and _final(marks, other.egress) is None
    assert _final(marks, elsewhere.egress) is None and _final(marks, elsewhere.ingress) is None
    assert marks.mark(late) is None
    # A connection whose ingress peer matches no egress connection's upstream.
    assert _final(marks, probe.ingress | {"peer": "127.0.0.1:1"}) is None
    # Nor at another ingress (the egress connection went to INGRESS).
    assert _final(marks, probe.ingress | {"local": "127.0.0.1:2"}) is None
    assert _final(marks, probe.ingress) == IMPORT_PROBE


def test_a_socket_never_released_marks_nothing(tmp_path: Path, paths: RuntimePaths) -> None:
    """Without the release (meshfed killed mid-probe) the ledger does not say how long the
    probe held its address: nothing is marked, and once the hops are read nothing waits."""
    ledger = ProbeLedger(paths)
    held = ledger.holding(IMPORT_PROBE, "web ledger", "127.0.0.1:54355", SIDECAR)
    held.__enter__()
    probe = Chain(datetime.now(UTC), "127.0.0.1:54355")
    marks = _marks(paths, _hops(tmp_path, [probe]))
    assert marks.mark(probe.ingress) == PENDING  # may still be released
    assert _final(marks, probe.ingress) is None


def test_a_line_waits_for_its_hops_logs(tmp_path: Path, paths: RuntimePaths) -> None:
    """The ingress's line may be read before the egress's (each Envoy flushes its own file):
    the dashboard holds it, then counts it as meshfed's once the egress's line is there."""
    ledger = ProbeLedger(paths)
    with ledger.holding(IMPORT_PROBE, "web ledger", "127.0.0.1:54355", SIDECAR):
        probe = Chain(datetime.now(UTC), "127.0.0.1:54355")
        time.sleep(0.02)
    sidecar, egress = tmp_path / "sidecar.access.log", tmp_path / "egress.access.log"
    ingress = tmp_path / "ingress.access.log"
    _write(sidecar, [probe.sidecar])
    _write(ingress, [probe.ingress])
    seen: list[LogEntry] = []
    tail = BoundaryTail(keep=10, ledger=ledger.path)
    files: list[tuple[str, Any, Path]] = [("payments/ingress", "access", ingress)]
    tail.update(files, _summary(), seen.append, [sidecar, egress])
    assert seen == []  # held: its egress hop not read yet
    _write(egress, [probe.egress])
    tail.update(files, _summary(), seen.append, [sidecar, egress])
    assert [e.probe for e in seen] == [IMPORT_PROBE]
    assert [e.probe for e in tail.latest()] == [IMPORT_PROBE]


def _request(t: datetime, token: str, upstream_local: str, duration: int = 20) -> dict[str, Any]:
    """A sidecar's line of a marked request (``access_log.probe_request_log``)."""
    return {
        "time": _iso(t), "kind": "request", "mesh": "web", "sidecar": "shop/checkout",
        "probe": token, "code": 200, "flags": "-", "upstream": EGRESS,
        "upstream_local": upstream_local, "duration_ms": duration,
    }  # fmt: skip


def _egress(t: datetime, peer: str, n: int, duration: int = 15) -> dict[str, Any]:
    return _conn(t, peer, EGRESS, INGRESS, f"127.0.0.1:{51500 + n}", duration, gateway="egress")


def test_an_http_probe_is_marked_at_the_egress_through_its_own_connection(
    tmp_path: Path, paths: RuntimePaths
) -> None:
    """The egress reads no header: its line of an HTTP probe is the connection the sidecar
    opened for the marked request alone, tied by its addresses within the request's life to
    a token the ledger holds. Nothing else is: a caller's pooled connection beside it, the
    same addresses later, a mark the ledger never recorded, a mark used a second time."""
    ledger = ProbeLedger(paths)
    token = ledger.token(IMPORT_PROBE, "web tokenizer.shop.svc.cluster.local:80 as shop/checkout")
    t = datetime.now(UTC)
    ms = timedelta(milliseconds=1)
    request = _request(t, token, "127.0.0.1:45800")
    probe = _egress(t + 2 * ms, "127.0.0.1:45800", 0)
    accepted = _conn(t + 5 * ms, "127.0.0.1:51500", INGRESS, gateway="ingress")
    caller = _egress(t + 3 * ms, "127.0.0.1:45801", 1, duration=900)
    later = probe | {"time": _iso(t + timedelta(seconds=2))}
    forged = _request(t, "f" * 32, "127.0.0.1:45802")
    forged_egress = _egress(t + 2 * ms, "127.0.0.1:45802", 2)
    replayed = _request(t + 10 * ms, token, "127.0.0.1:45803")
    replayed_egress = _egress(t + 12 * ms, "127.0.0.1:45803", 3)
    sidecar, egress = tmp_path / "sidecar.access.log", tmp_path / "egress.access.log"
    _write(egress, [probe, caller, forged_egress, replayed_egress])
    marks = _marks(paths, [sidecar, egress])
    # Its sidecar's line not read yet (each Envoy flushes its own file): asked again.
    assert marks.mark(probe) == PENDING and marks.mark(caller) == PENDING
    _write(sidecar, [request, forged, replayed])
    marks.read_hops([sidecar, egress])
    assert marks.mark(probe) == IMPORT_PROBE
    # The ingress listener's line of the same connection (the request's own line there is
    # marked by its token): through the egress's.
    assert marks.mark(accepted) == IMPORT_PROBE
    assert _final(marks, caller) is None
    assert _final(marks, later) is None
    assert _final(marks, forged_egress) is None
    assert _final(marks, replayed_egress) is None
    # The ingress's request line uses the token as before (once).
    assert marks.mark({"time": _iso(t + 6 * ms), "probe": token}) == IMPORT_PROBE


def _summary() -> RuntimeSummary:
    mesh = MeshInfo("payments", "payments.bank.example", "127.0.0.1", 29117, "x", {SNI: "TCP"})
    return RuntimeSummary("bank", "bank.yaml", "SharedRoot", (mesh,), (), (), ())


def test_a_tcp_probe_records_its_socket_which_nobody_else_can_bind(
    tmp_path: Path, paths: RuntimePaths
) -> None:
    """The ledger's record names the probe's own address before it connects and its release
    after its greeting; while it is held, no other socket binds that address, not even with
    SO_REUSEADDR and SO_REUSEPORT (the kernel's word the hop tracing relies on)."""
    server = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, Any] = {}

    def serve() -> None:
        conn, peer = server.accept()
        with conn:
            seen["peer"] = "{}:{}".format(*peer)
            seen["records"] = [
                json.loads(line) for line in ledger_path(paths).read_text().splitlines()
            ]
            other = socket.socket()
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                other.bind(peer)
                seen["bound"] = True
            except OSError as exc:
                seen["bound"] = exc.errno
            finally:
                other.close()
            conn.sendall(b'{"mesh": "payments", "workload": "cards/ledger"}\n')

    thread = threading.Thread(target=serve)
    thread.start()
    probe = Probe("web", "ledger:9000", "TCP", "shop/checkout", server.getsockname()[1], "ledger")
    try:
        result = run_probe(probe, 5, ProbeLedger(paths))
    finally:
        thread.join(5)
        server.close()
    assert result.ok, result.detail
    assert seen["bound"] == errno.EADDRINUSE
    held, released = [json.loads(line) for line in ledger_path(paths).read_text().splitlines()]
    assert seen["records"] == [held]  # recorded before it connected, released only after
    assert held["source"] == seen["peer"] and held["to"] == f"127.0.0.1:{probe.port}"
    assert released == {"conn": held["conn"], "released": True, "time": released["time"]}


def test_logs_follow_yields_each_read_as_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "payments_ingress.access.log"
    path.write_text("")
    lines = follow([("payments/ingress", "access", path)], False, interval=0)
    _write(path, [{"time": "2026-01-01T00:00:02.000Z"}, {"time": "2026-01-01T00:00:01.000Z"}])
    batch = next(lines)
    assert [e.time for e in batch] == ["2026-01-01T00:00:01.000Z", "2026-01-01T00:00:02.000Z"]
