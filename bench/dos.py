"""Under attack: allowed calls while 10,000 stalled handshakes and a flood hold an ingress.

Starts the bank federation (``meshfed up``, the plan's real limits: a 5 s handshake bound, 8,000
connections per ingress listener, 8,192 per proxy) and calls the payments tokenizer as web's
checkout (POST /v1/tokenize through its sidecar, the egress and the exporters' ingresses) at a
fixed rate in three phases of the same length, in one run:

- ``baseline``: no attack;
- ``attack``: an attacker on its own loopback address keeps 10,000 connections to the payments
  ingress that send a complete TLS ClientHello and then nothing (each one the ingress closes is
  opened again), plus a bounded flood: at most ``BENCH_DOS_FLOOD`` new connections per second;
- ``after``: the attack stopped.

Per phase: allowed calls that succeeded, the share payments-dr answered (failover), p50/p99
latency and its ratio to the baseline; for the attack: how long the ingress held the stalled
handshakes (bounded by the handshake timeout, or closed at accept over the cap), the connections
it closed at its caps, its peak active connections, CPU seconds and RSS; after it: how long until
calls were back on payments. Open files: the attacker raises its own soft limit to its hard one;
``meshfed up`` does the same for the Envoys (see local/fdlimit.py).

Prints JSON; writes bench/results/dos.md (which bench/report.py appends).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from fed_util import (  # noqa: E402
    admin_sockets,
    bank_spec_text,
    cpu_seconds,
    federation,
    loadavg,
    log,
    run_benchmark,
)

from attack import Staller  # noqa: E402  (tests/attack.py, shared with the tests)
from meshfed.local import admin  # noqa: E402
from meshfed.local.client import NoResponse, http_call  # noqa: E402
from meshfed.local.procs import rss_bytes  # noqa: E402
from meshfed.plan.limits import MeshLimits  # noqa: E402

PHASE = float(os.environ.get("BENCH_DOS_SECONDS", "20"))
STALLED = int(os.environ.get("BENCH_DOS_STALLED", "10000"))
FLOOD = float(os.environ.get("BENCH_DOS_FLOOD", "2500"))
"""New connections per second at most: enough to keep 10,000 pending against a 5 s bound."""
RATE = float(os.environ.get("BENCH_DOS_RATE", "20"))
URL = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"
SNI = "tokenizer.payments.global"
INGRESS = "payments/ingress"


class Caller(threading.Thread):
    """Allowed calls at a fixed rate, each recorded: (start, seconds, status, answering mesh)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float, int, str | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._halt.is_set():
            t0 = time.monotonic()
            try:
                resp = http_call(self.port, "POST", URL, b"4111", timeout=20)
                mesh = json.loads(resp.body).get("mesh") if resp.status == 200 else None
                status = resp.status
            except (NoResponse, ValueError):
                status, mesh = 0, None
            self.samples.append((t0, time.monotonic() - t0, status, mesh))
            n += 1
            self._halt.wait(max(0.0, start + n / RATE - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _phase(
    samples: list[tuple[float, float, int, str | None]], t0: float, t1: float
) -> dict[str, Any]:
    chosen = [s for s in samples if t0 <= s[0] < t1]
    ok = [s for s in chosen if s[2] == 200]
    latencies = sorted(s[1] * 1000 for s in ok)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    return {
        "calls": len(chosen),
        "ok": len(ok),
        "failed": len(chosen) - len(ok),
        "dr_share": (sum(1 for s in ok if s[3] == "payments-dr") / len(ok)) if ok else 0.0,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] if latencies else 0.0,
    }


def _ingress_stats(sock: str) -> dict[str, int]:
    """The federation listener's counters (not its per-worker copies, not the admin's)."""
    pattern = (
        r"^listener\.127\.0\.0\.1_[0-9]+\.(downstream_cx_overflow|downstream_global_cx_overflow"
        r"|downstream_cx_active|downstream_cx_total)$"
    )
    return {name.rpartition(".")[2]: int(v) for name, v in admin.stats(sock, pattern).items()}


def _held_ms(sock: str) -> dict[str, float]:
    """How long the ingress held its connections, from Envoy's own histogram (accept to
    close): cumulative quantiles of the federation listener's ``downstream_cx_length_ms``."""
    pattern = r"^listener\.127\.0\.0\.1_[0-9]+\.downstream_cx_length_ms$"
    (text,) = admin.stats(sock, pattern).values()
    out = {}
    for part in text.split():
        name, _, values = part.partition("(")
        cumulative = values.rstrip(")").split(",")[-1]
        if name in ("P50", "P99", "P100") and cumulative != "nan":
            out[name.lower()] = float(cumulative)
    return out


def measure() -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limits = MeshLimits()
    with (
        tempfile.TemporaryDirectory(prefix="meshfed-bench-dos-") as tmp,
        federation(bank_spec_text(), Path(tmp) / "state") as fed,
    ):
        layout = fed.layout
        ingress_admin = admin_sockets(layout, [INGRESS])[INGRESS]
        pids = fed.pids()
        target = _payments_ingress(fed)
        caller = Caller(layout.meshes["web"].sidecars["shop/checkout"].outbound_port)
        log(f"dos: baseline {PHASE:g} s at {RATE:g} calls/s")
        caller.start()
        t_base = time.monotonic()
        time.sleep(PHASE)
        t_attack = time.monotonic()
        cpu0 = cpu_seconds(pids[INGRESS])
        log(f"dos: attack: {STALLED} stalled handshakes, flood {FLOOD:g}/s, {PHASE:g} s")
        attacker = Staller(target, STALLED, "hello", sni=SNI, keep=True, rate=FLOOD).start()
        peak_active, peak_rss = 0, 0
        attacker_peak = [0]
        while time.monotonic() < t_attack + PHASE:
            stats = _ingress_stats(ingress_admin)
            peak_active = max(peak_active, stats.get("downstream_cx_active", 0))
            attacker_peak[0] = max(attacker_peak[0], len(attacker.pending()))
            peak_rss = max(peak_rss, rss_bytes(pids[INGRESS]))
            time.sleep(0.5)
        end_stats = _ingress_stats(ingress_admin)
        held_ms = _held_ms(ingress_admin)
        cpu1 = cpu_seconds(pids[INGRESS])
        pending_peak = attacker_peak[0]
        attacker.stop()
        t_after = time.monotonic()
        back_s = None
        while time.monotonic() < t_after + PHASE:
            recent = [s for s in caller.samples if s[0] >= t_after]
            if back_s is None and recent and recent[-1][3] == "payments":
                back_s = recent[-1][0] - t_after
            time.sleep(0.1)
        t_end = time.monotonic()
        caller.stop()
        holds = sorted(attacker.hold_times())
        result = {
            "phase_s": PHASE,
            "rate_per_s": RATE,
            "stalled": STALLED,
            "flood_per_s": FLOOD,
            "open_files": {"soft_before": soft, "hard": hard},
            "limits": {
                "handshake_timeout_s": limits.ingress.handshake_timeout.total_seconds(),
                "listener_cap": limits.ingress.max_connections,
                "proxy_cap": limits.max_connections_per_proxy,
            },
            "baseline": _phase(caller.samples, t_base, t_attack),
            "attack": _phase(caller.samples, t_attack, t_after),
            "after": _phase(caller.samples, t_after, t_end),
            "back_on_primary_s": back_s,
            "attacker": {
                "connections_opened": attacker.opened,
                "closed_by_the_ingress": len(holds),
                "peak_pending": pending_peak,
                "seen_closed_after_p50_s": statistics.median(holds) if holds else None,
                "seen_closed_after_max_s": holds[-1] if holds else None,
                "still_open_at_stop": len(attacker.pending()),
            },
            "ingress": {
                "peak_active_connections": peak_active,
                "closed_over_listener_cap": end_stats.get("downstream_cx_overflow", 0),
                "closed_over_proxy_cap": end_stats.get("downstream_global_cx_overflow", 0),
                "accepted": end_stats.get("downstream_cx_total", 0),
                "held_ms": held_ms,
                "cpu_s_during_attack": round(cpu1 - cpu0, 2),
                "peak_rss_mb": peak_rss >> 20,
            },
            "loadavg": loadavg(),
        }
        base, attack = result["baseline"], result["attack"]
        result["p99_ratio"] = attack["p99_ms"] / base["p99_ms"] if base["p99_ms"] else None
        return result


def _payments_ingress(fed: Any) -> tuple[str, int]:
    import yaml

    doc = yaml.safe_load(fed.spec.read_text())
    (mesh,) = [m for m in doc["spec"]["meshes"] if m["name"] == "payments"]
    return str(mesh["ingress"]["address"]), int(mesh["ingress"]["port"])


def markdown(r: dict[str, Any]) -> str:
    a, i = r["attacker"], r["ingress"]
    lines = [
        "### Under attack: 10,000 stalled handshakes plus a flood against one ingress",
        "",
        f"The bank federation with the plan's limits (handshake bound "
        f"{r['limits']['handshake_timeout_s']:g} s, {r['limits']['listener_cap']:,} connections "
        f"per listener, {r['limits']['proxy_cap']:,} per proxy). web's checkout calls the "
        f"payments tokenizer at {r['rate_per_s']:g}/s for {r['phase_s']:g} s per phase; during "
        f"the attack, {r['stalled']:,} connections to the payments ingress each send a TLS "
        f"ClientHello and then nothing, and every one the ingress closes is opened again (at most "
        f"{r['flood_per_s']:g} new connections/s). Open files: hard limit "
        f"{r['open_files']['hard']}. Load average {r['loadavg'][0]:.1f} at the end "
        "(2 shared cores).",
        "",
        "| phase | allowed calls | succeeded | answered by payments-dr | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("baseline", "attack", "after"):
        p = r[name]
        lines.append(
            f"| {name} | {p['calls']} | {p['ok']} ({p['failed']} failed) | "
            f"{p['dr_share']:.0%} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} |"
        )
    ratio = r.get("p99_ratio")
    back = r.get("back_on_primary_s")
    lines += [
        "",
        f"p99 under attack vs baseline: x{ratio:.2f}." if ratio else "",
        f"Calls back on payments {back:.1f} s after the attack stopped."
        if back is not None
        else "Calls did not return to payments within the phase.",
        "",
        "| attacker: opened / pending at peak / closed by the ingress | attacker saw them "
        "closed after (p50 / max s) | ingress held connections (p50 / p99 / max s) | ingress peak "
        "active | closed over listener cap / proxy cap | ingress CPU s | ingress peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {a['connections_opened']:,} / {a['peak_pending']:,} / {a['closed_by_the_ingress']:,} "
        f"| {_s(a['seen_closed_after_p50_s'])} / {_s(a['seen_closed_after_max_s'])} | "
        f"{_ms(i['held_ms'], 'p50')} / {_ms(i['held_ms'], 'p99')} / {_ms(i['held_ms'], 'p100')} | "
        f"{i['peak_active_connections']:,} | "
        f"{i['closed_over_listener_cap']:,} / {i['closed_over_proxy_cap']:,} | "
        f"{i['cpu_s_during_attack']} | {i['peak_rss_mb']} |",
        "",
        "The ingress's own histogram (accept to close) is what the bound holds; the attacker "
        "sees a close later by the time its connection waited in the kernel's accept queue and "
        "its own event loop's delay on a busy machine.",
        "",
    ]
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ms(held: dict[str, float], key: str) -> str:
    return _s(held[key] / 1000) if key in held else "-"


if __name__ == "__main__":
    run_benchmark("dos", measure, markdown)
