"""Data plane cost: a direct call vs the same call through meshfed's Envoys, measured with wrk.

Starts the bank federation (``meshfed up``, ingress ports moved to free ports) in a temporary
state directory and loads the payments tokenizer (POST /v1/tokenize, a small JSON body) by three
paths, interleaved in every repetition so that they share the machine's conditions:

- ``direct``: wrk → the tokenizer's app port (the workload host, a Python process; no proxy).
- ``in-mesh``: wrk → a client Envoy → the tokenizer's server sidecar → app: 2 Envoys with mTLS,
  Istio's in-mesh path. The client Envoy is built from rendered configuration: the web checkout
  sidecar's outbound listener, and the payments ingress's mTLS cluster to the tokenizer sidecar
  with the payments vault sidecar's identity (a payments workload calling a payments workload).
- ``cross-mesh``: wrk → web checkout sidecar → web egress → payments ingress → tokenizer sidecar
  → app: the 4 Envoys of a federated call (Host tokenizer.shop.svc.cluster.local).

At fixed rates (paced by a Lua script: wrk has no rate limit) and at max throughput: p50/p90/p99,
req/s, and CPU seconds per 1000 requests of every process on the path (utime + stime from
/proc/<pid>/stat, before and after; numerically the same as vCPU per 1000 req/s).

Prints JSON; writes bench/results/data_plane.md (which bench/report.py appends).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fed_util import (
    NICE,
    CpuMeter,
    Federation,
    Load,
    admin_sockets,
    bank_spec_text,
    cpu_seconds,
    error_stats,
    extra_envoy,
    federation,
    loadavg,
    log,
    run_benchmark,
    strip_type,
    wrk,
)

from meshfed.local.ports import PortAllocator
from meshfed.local.procs import rss_bytes
from meshfed.render.envoy.files import admin as envoy_admin
from meshfed.render.envoy.files import process_dir

DURATION = int(os.environ.get("BENCH_DURATION", "10"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "200,500,1000").split(",")]
CONNECTIONS = 16
LOCAL_NAME = "tokenizer.shop.svc.cluster.local"
ANCHOR = {"p90_ms": 1.7, "p99_ms": 2.7, "vcpu_per_1000_rps_per_proxy": 0.35, "proxies": 2}

CLIENT = "web/sidecar/shop/checkout"
EGRESS = "web/egress"
INGRESS = "payments/ingress"
SERVER = "payments/sidecar/cards/tokenizer"
BACKEND = "workloads"
INMESH_CLIENT = "in-mesh client Envoy"
CALLER = "payments/sidecar/cards/vault"
"""Whose identity (SDS files) the in-mesh client Envoy presents."""


def _load_resources(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["resources"])


def inmesh_bootstrap(fed: Federation, port: int, admin_socket: str) -> dict[str, Any]:
    """A client sidecar for the in-mesh path, from the federation's own rendered files."""
    root = fed.runtime.root
    listener = next(
        r
        for r in _load_resources(process_dir(root, CLIENT) / "lds" / "lds.json")
        if r["name"] == "outbound"
    )
    listener = strip_type(listener)
    listener["address"]["socket_address"]["port_value"] = port
    route_cluster = "outbound|tokenizer.payments.global"
    cluster = next(
        r
        for r in _load_resources(process_dir(root, INGRESS) / "cds" / "cds.json")
        if r["name"] == "inbound|cards/tokenizer"
    )
    text = json.dumps(strip_type(cluster))
    # The vault's certificate and the payments root instead of the ingress's (same file names).
    text = text.replace(str(process_dir(root, INGRESS)), str(process_dir(root, CALLER)))
    cluster = json.loads(text)
    cluster["name"] = route_cluster
    cluster["load_assignment"]["cluster_name"] = route_cluster
    return {
        "node": {"id": "bench/in-mesh-client", "cluster": "payments"},
        "admin": envoy_admin(admin_socket),
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def paths_of(fed: Federation, inmesh_port: int) -> dict[str, dict[str, Any]]:
    layout = fed.layout
    app = layout.meshes["payments"].sidecars["cards/tokenizer"].app_port
    outbound = layout.meshes["web"].sidecars["shop/checkout"].outbound_port
    return {
        "direct": {
            "url": f"http://127.0.0.1:{app}/v1/tokenize",
            "envoys": [],
        },
        "in-mesh": {
            "url": f"http://127.0.0.1:{inmesh_port}/v1/tokenize",
            "envoys": [INMESH_CLIENT, SERVER],
        },
        "cross-mesh": {
            "url": f"http://127.0.0.1:{outbound}/v1/tokenize",
            "envoys": [CLIENT, EGRESS, INGRESS, SERVER],
        },
    }


def idle_cpu(pids: dict[str, int], seconds: float = 5.0) -> dict[str, float]:
    """CPU milliseconds per second each process uses with no load (timers, health checks)."""
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    time.sleep(seconds)
    return {n: 1000 * (cpu_seconds(p) - before[n]) / seconds for n, p in pids.items()}


def summarize(runs: list[dict[str, Any]], envoys: list[str]) -> dict[str, Any]:
    """Medians over the repetitions of one path at one load."""

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    cpu = {
        name: statistics.median(r["cpu_ms_per_1000_req"][name] for r in runs)
        for name in [*envoys, BACKEND]
    }
    per_proxy = [cpu[n] / 1000 for n in envoys]
    return {
        "rps": med("rps"),
        "p50_ms": med("p50_ms"),
        "p90_ms": med("p90_ms"),
        "p99_ms": med("p99_ms"),
        "p99_ms_runs": [r["p99_ms"] for r in runs],
        "errors": sum(r["errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "cpu_ms_per_1000_req": cpu,
        "vcpu_per_1000_rps_per_proxy": statistics.mean(per_proxy) if per_proxy else None,
        "vcpu_per_1000_rps_envoys_total": sum(per_proxy),
        "wrk_cpu_s_per_run": med("wrk_cpu_s"),
        "other_cpu_s_per_run": med("other_cpu_s"),
    }


def main() -> dict[str, Any]:
    loads: list[int | None] = [*RATES, None]
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-dp-") as tmp:
        state = Path(tmp) / "state"
        log("  starting the bank federation")
        with federation(bank_spec_text(), state) as fed:
            alloc = PortAllocator()
            inmesh_port = alloc.allocate()
            # The federation's own private admin directory (``tmp`` is 0700 too).
            admin_socket = str(Path(fed.layout.admin_dir) / "bench_in-mesh-client.sock")
            bootstrap = inmesh_bootstrap(fed, inmesh_port, admin_socket)
            with extra_envoy(bootstrap, Path(tmp) / "in-mesh-client", admin_socket) as client_pid:
                pids = {n: p for n, p in fed.pids().items() if n in {CLIENT, EGRESS, INGRESS}}
                pids |= {n: fed.pids()[n] for n in (SERVER, BACKEND)}
                pids[INMESH_CLIENT] = client_pid
                paths = paths_of(fed, inmesh_port)
                headers = {"Host": LOCAL_NAME}
                meter = CpuMeter(pids)
                for path in paths.values():  # warm-up: connections, TLS sessions
                    wrk(Load(path["url"], duration=2, rate=200, headers=headers))
                idle = idle_cpu(pids)
                runs: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
                load_before = loadavg()
                for rep in range(REPS):
                    for rate in loads:
                        for name, path in paths.items():
                            load = Load(
                                path["url"],
                                duration=DURATION,
                                connections=CONNECTIONS,
                                rate=rate,
                                headers=headers,
                            )
                            run = wrk(load, meter)
                            runs.setdefault((name, rate), []).append(run)
                            log(
                                f"  rep {rep + 1}/{REPS} {name:>10} @ {rate or 'max':>4}: "
                                f"{run['rps']:7.0f} req/s  p50 {run['p50_ms']:6.2f}  "
                                f"p90 {run['p90_ms']:6.2f}  p99 {run['p99_ms']:6.2f} ms  "
                                f"errors {run['errors']}  other CPU {run['other_cpu_s']:.1f} s"
                            )
                rss = {n: rss_bytes(p) / 2**20 for n, p in pids.items()}
                sockets = admin_sockets(fed.layout, [CLIENT, EGRESS, INGRESS, SERVER])
                errors = error_stats({**sockets, INMESH_CLIENT: admin_socket})
                load_after = loadavg()
    all_runs = [run for rs in runs.values() for run in rs]
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "other_cores_median": statistics.median(r["other_cpu_s"] / DURATION for r in all_runs),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "note": "2 cores shared by wrk, every Envoy and the Python workload host",
        },
        "settings": {
            "duration_s": DURATION,
            "repetitions": REPS,
            "connections": CONNECTIONS,
            "wrk_threads": 1,
            "request": "POST /v1/tokenize, 27-byte JSON body, keep-alive",
            "nice_fixed_rate": NICE,
        },
        "anchor_istio_in_mesh": ANCHOR,
        "idle_cpu_ms_per_s": idle,
        "envoy_error_counters": errors,
        "rss_mb": rss,
        "paths": {n: {"envoys": p["envoys"]} for n, p in paths.items()},
        "loads": [],
        "raw_runs": [
            {"path": name, "rate": rate, **run} for (name, rate), rs in runs.items() for run in rs
        ],
    }
    for rate in loads:
        row: dict[str, Any] = {"target_rps": rate, "paths": {}}
        for name, path in paths.items():
            row["paths"][name] = summarize(runs[(name, rate)], path["envoys"])
        if rate is not None:
            p = row["paths"]
            row["added_ms"] = {
                label: {q: p[a][f"{q}_ms"] - p[b][f"{q}_ms"] for q in ("p50", "p90", "p99")}
                for label, a, b in (
                    ("in-mesh - direct", "in-mesh", "direct"),
                    ("cross-mesh - direct", "cross-mesh", "direct"),
                    ("cross-mesh - in-mesh", "cross-mesh", "in-mesh"),
                )
            }
        results["loads"].append(row)
    return results


# --- Markdown ------------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    a = r["anchor_istio_in_mesh"]
    out = [
        "### Data plane: direct vs in-mesh (2 Envoys) vs cross-mesh (4 Envoys)",
        "",
        f"wrk, {s['connections']} connections, {s['duration_s']} s per run, "
        f"median of {s['repetitions']} interleaved runs; {s['request']}. Fixed rates are paced "
        "by a wrk Lua script (absolute send schedule). The **2 cores are shared** by wrk, every "
        "Envoy and the backend; the backend is meshfed's Python workload host, whose own cost "
        "dominates the direct path and caps max throughput. `in-mesh` is a client Envoy built "
        "from the rendered sidecar/ingress config calling the tokenizer's real server sidecar, "
        "Istio's in-mesh path measured here. Other jobs shared the machine: in fixed-rate runs "
        f"wrk and the measured processes ran at nice {s['nice_fixed_rate']} to keep their bursts "
        "out of the latencies; max-throughput runs at normal priority (others' CPU use per run "
        "is in `data_plane.json`).",
        "",
        "| load | path | Envoys | req/s | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["loads"]:
        load = f"{row['target_rps']} rps" if row["target_rps"] else "max"
        for name, p in row["paths"].items():
            out.append(
                f"| {load} | {name} | {len(r['paths'][name]['envoys'])} | {p['rps']:.0f} | "
                f"{_f(p['p50_ms'])} | {_f(p['p90_ms'])} | {_f(p['p99_ms'])} | {p['errors']} |"
            )
    out += [
        "",
        "Added latency (path - direct, same run, same rate), ms; Istio's published in-mesh "
        f"figure (2 proxies): +{a['p90_ms']} p90, +{a['p99_ms']} p99:",
        "",
        "| rate | in-mesh p50 / p90 / p99 | cross-mesh p50 / p90 / p99 "
        "| gateways only (cross - in-mesh) p90 / p99 |",
        "|---|---|---|---|",
    ]
    for row in r["loads"]:
        if row["target_rps"] is None:
            continue
        d = row["added_ms"]
        im, cm, gw = d["in-mesh - direct"], d["cross-mesh - direct"], d["cross-mesh - in-mesh"]
        out.append(
            f"| {row['target_rps']} rps | {_f(im['p50'])} / {_f(im['p90'])} / {_f(im['p99'])} | "
            f"{_f(cm['p50'])} / {_f(cm['p90'])} / {_f(cm['p99'])} | "
            f"{_f(gw['p90'])} / {_f(gw['p99'])} |"
        )
    cross_envoys = r["paths"]["cross-mesh"]["envoys"]
    out += [
        "",
        "CPU per 1000 requests, ms (= milli-vCPU per 1000 req/s): each process on the "
        "cross-mesh path, and the in-mesh path's two Envoys; Istio: "
        f"{a['vcpu_per_1000_rps_per_proxy']} vCPU per 1000 rps per proxy = 350 ms:",
        "",
        "| load | "
        + " | ".join(n.replace("/sidecar/", " sidecar ") for n in cross_envoys)
        + " | cross mean/Envoy | in-mesh client | in-mesh server sidecar | in-mesh mean/Envoy"
        " | backend via Envoy | backend direct |",
        "|---|" + "---:|" * (len(cross_envoys) + 7),
    ]
    for row in r["loads"]:
        load = f"{row['target_rps']} rps" if row["target_rps"] else "max"
        cm, im, dr = row["paths"]["cross-mesh"], row["paths"]["in-mesh"], row["paths"]["direct"]
        cells = [f"{cm['cpu_ms_per_1000_req'][n]:.0f}" for n in cross_envoys]
        out.append(
            f"| {load} | "
            + " | ".join(cells)
            + f" | {1000 * cm['vcpu_per_1000_rps_per_proxy']:.0f}"
            + f" | {im['cpu_ms_per_1000_req'][INMESH_CLIENT]:.0f}"
            + f" | {im['cpu_ms_per_1000_req'][SERVER]:.0f}"
            + f" | {1000 * im['vcpu_per_1000_rps_per_proxy']:.0f}"
            + f" | {cm['cpu_ms_per_1000_req'][BACKEND]:.0f}"
            + f" | {dr['cpu_ms_per_1000_req'][BACKEND]:.0f} |"
        )
    idle = r["idle_cpu_ms_per_s"]
    rss = r["rss_mb"]
    out += [
        "",
        "Idle CPU (ms/s) and RSS (MB) of the Envoys on the cross-mesh path: "
        + ", ".join(f"{n} {idle[n]:.1f} ms/s, {rss[n]:.0f} MB" for n in cross_envoys)
        + f". Other jobs on the machine used a median {r['machine']['other_cores_median']:.2f} "
        "of the 2 cores during the runs (per run: `other_cpu_s` in `data_plane.json`).",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    run_benchmark("data_plane", main, markdown)
