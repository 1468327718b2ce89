"""Authorization scale: latency and ingress CPU with 1, 100, 1,000 and 10,000 allowed principals.

One federation (meshes web and payments) with four HTTP exports of the same payments workload,
``tok-p1`` … ``tok-p10000``, each allowing N principals of web; web imports all four. The only
difference between the calls is the RBAC filter on the payments ingress's filter chain for that
SNI, as meshfed renders it (render/envoy/rbac.py: Envoy's unified matcher, a hash lookup on the
caller's URI SAN): same Envoys, same backend, same connections. The calling principal
(``ns/shop/sa/checkout``, web's checkout) is the **last** of the N (after ``ns/team<i>/sa/
caller<i>``): the worst case of the ``rules`` form meshfed rendered before, which tried a policy's
principals in order.

The exports are loaded in turn through the full cross-mesh path (checkout sidecar → web egress →
payments ingress → tokenizer sidecar) at fixed rates and at max throughput, interleaved and
repeated; reported as p50/p90/p99, ingress CPU per 1000 requests, and ratios to the 1-principal
case.

TCP exports ``led-p1`` … ``led-p10000`` of a TCP workload allow the same N principals; there the
ingress checks the caller twice per connection: the TLS handshake's SAN list (N entries, which
Envoy tries in order) and network RBAC on the first byte (the matcher). New connections straight
to the ingress with checkout's certificate (handshake, greeting, one echo, close) measure the
ingress's CPU per connection.
"""

from __future__ import annotations

import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fed_util import (
    NICE,
    CpuMeter,
    Federation,
    Load,
    admin_sockets,
    cpu_seconds,
    dump_spec,
    error_stats,
    loadavg,
    log,
    run_benchmark,
    wait_quiet,
    wrk,
)

from meshfed.local.client import http_call
from meshfed.local.ports import PortAllocator
from meshfed.pki.certs import cert_to_pem
from meshfed.pki.keys import key_to_pem
from meshfed.render.envoy.files import process_dir
from meshfed.workspace import open_workspace

COUNTS = [int(c) for c in os.environ.get("BENCH_PRINCIPALS", "1,100,1000,10000").split(",")]
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
RATES = [int(r) for r in os.environ.get("BENCH_AUTHZ_RATES", "50,500").split(",")]
"""50 req/s: every case kept up even with the ``rules`` form (~9 ms of ingress CPU per request at
10,000 principals); 500 req/s: the ``rules`` form could not."""
TCP_CONNECTIONS = int(os.environ.get("BENCH_TCP_CONNECTIONS", "300"))
CONNECTIONS = 16
CALLER = "ns/shop/sa/checkout"
CALLER_ID = "spiffe://web.authz.example/ns/shop/sa/checkout"
INGRESS = "payments/ingress"
CLIENT = "web/sidecar/shop/checkout"
ON_PATH = [CLIENT, "web/egress", INGRESS, "payments/sidecar/cards/tokenizer"]
RULES_FORM = {
    "source": "bench/results of commit ff4f28c (the `rules` form, same machine and settings)",
    "p99_ratio_50rps": 6.93,
    "rps_ratio_max": 0.06,
    "ingress_cpu_ms_per_1000_req_50rps": 14289,
}
"""The ``rules`` form at 10,000 principals, as measured before the renderer moved to the
matcher: kept for the comparison in the text, not measured again."""


def principals(n: int) -> list[str]:
    """N allowed principals, the caller last (the worst case for in-order matching)."""
    return [f"ns/team{i}/sa/caller{i}" for i in range(1, n)] + [CALLER]


def _workload(name: str, ns: str, port: int, protocol: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ns,
        "serviceAccount": name,
        "port": port,
        "protocol": protocol,
    }


def spec(counts: list[int]) -> str:
    """The federation: per N an HTTP export ``tok-p<N>`` (web imports it), a TCP ``led-p<N>``."""
    http = [
        {
            "name": f"tok-p{n}",
            "mesh": "payments",
            "workload": "cards/tokenizer",
            "host": f"tok-p{n}.payments.global",
            "consumers": [
                {
                    "mesh": "web",
                    "principals": principals(n),
                    "methods": ["POST"],
                    "paths": ["/v1/tokenize"],
                }
            ],
        }
        for n in counts
    ]
    tcp = [
        {
            "name": f"led-p{n}",
            "mesh": "payments",
            "workload": "cards/ledger",
            "host": f"led-p{n}.payments.global",
            "consumers": [{"mesh": "web", "principals": principals(n)}],
        }
        for n in counts
    ]
    doc: dict[str, Any] = {
        "apiVersion": "meshfed.dev/v1alpha1",
        "kind": "Federation",
        "metadata": {"name": "authz"},
        "spec": {
            "trust": {"mode": "SharedRoot", "keyAlgorithm": "ECDSA_P256"},
            "meshes": [
                {
                    "name": "payments",
                    "trustDomain": "payments.authz.example",
                    "ingress": {"address": "127.0.0.1", "port": 0},
                    "workloads": [
                        _workload("tokenizer", "cards", 8080, "HTTP"),
                        _workload("ledger", "cards", 9000, "TCP"),
                    ],
                },
                {
                    "name": "web",
                    "trustDomain": "web.authz.example",
                    "ingress": {"address": "127.0.0.1", "port": 0},
                    "workloads": [_workload("checkout", "shop", 8080, "HTTP")],
                },
            ],
            "exports": http + tcp,
            "imports": [
                {
                    "mesh": "web",
                    "host": f"tok-p{n}.shop.svc.cluster.local",
                    "port": 80,
                    "from": [f"payments/tok-p{n}"],
                }
                for n in counts
            ],
        },
    }
    alloc = PortAllocator()
    for mesh in doc["spec"]["meshes"]:
        mesh["ingress"]["port"] = alloc.allocate()
    return dump_spec(doc)


# --- TCP: new connections straight to the ingress -------------------------------------------------


def caller_context(fed: Federation, folder: Path) -> tuple[ssl.SSLContext, str, int]:
    """An mTLS client context with a fresh certificate of web's checkout; payments' ingress."""
    ws = open_workspace(fed.spec, fed.state)
    ingress = ws.plan.mesh("payments").ingress
    ca = ws.pki.meshes["web"]
    key, cert = ca.issue(CALLER_ID, timedelta(hours=1), datetime.now(UTC))
    pem = folder / "caller.pem"
    pem.write_bytes(cert_to_pem(cert) + cert_to_pem(ca.ca_cert) + key_to_pem(key))
    pem.chmod(0o600)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the client's view of the server is not measured here
    ctx.load_cert_chain(pem)
    return ctx, ingress.address, ingress.port


def tcp_connection(ctx: ssl.SSLContext, address: str, port: int, sni: str) -> float:
    """Handshake, greeting, one echo, close; seconds from connect to the greeting."""
    t0 = time.perf_counter()
    with socket.create_connection((address, port), timeout=5) as raw:
        conn = ctx.wrap_socket(raw, server_hostname=sni)
        f = conn.makefile("rwb")
        if not f.readline():
            raise RuntimeError(f"{sni}: no greeting")
        greeted = time.perf_counter() - t0
        f.write(b"ping\n")
        f.flush()
        if f.readline() != b"ping\n":
            raise RuntimeError(f"{sni}: no echo")
        conn.close()
    return greeted


def tcp_run(
    ctx: ssl.SSLContext, address: str, port: int, sni: str, ingress_pid: int
) -> dict[str, Any]:
    _, others = wait_quiet({INGRESS: ingress_pid})
    cpu0 = cpu_seconds(ingress_pid)
    latencies = [tcp_connection(ctx, address, port, sni) for _ in range(TCP_CONNECTIONS)]
    cpu = cpu_seconds(ingress_pid) - cpu0
    latencies.sort()
    return {
        "connections": TCP_CONNECTIONS,
        "ingress_cpu_ms_per_connection": 1000 * cpu / TCP_CONNECTIONS,
        "greeting_p50_ms": 1000 * latencies[len(latencies) // 2],
        "greeting_p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
        "other_cores_before": others,
    }


# --- the benchmark -------------------------------------------------------------------------------


def main() -> dict[str, Any]:
    loads: list[int | None] = [*RATES, None]
    top = max(COUNTS)
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-authz-") as tmp:
        fed = Federation(spec(COUNTS), Path(tmp) / "state")
        try:
            t0 = time.monotonic()
            fed.up()
            up_s = time.monotonic() - t0
            lds = process_dir(fed.runtime.root, INGRESS) / "lds" / "lds.json"
            lds_bytes = lds.stat().st_size
            log(f"  federation up in {up_s:.2f} s; ingress LDS {lds_bytes / 1e6:.1f} MB")
            outbound = fed.layout.meshes["web"].sidecars["shop/checkout"].outbound_port
            base = f"http://tok-p{top}.shop.svc.cluster.local"
            checks = {
                f"{method} {path}": http_call(outbound, method, base + path).status
                for method, path in (
                    ("POST", "/v1/tokenize"),
                    ("POST", "/v1/tokenize?card=1"),
                    ("GET", "/v1/tokenize"),
                    ("POST", "/v1/tokenizer"),
                )
            }
            expected = [200, 200, 403, 403]
            if list(checks.values()) != expected:
                raise RuntimeError(f"tok-p{top} does not decide as planned: {checks}")
            pids = {n: p for n, p in fed.pids().items() if n in ON_PATH}
            meter = CpuMeter(pids)
            url = f"http://127.0.0.1:{outbound}/v1/tokenize"

            def load(n: int, rate: int | None, duration: int) -> Load:
                host = f"tok-p{n}.shop.svc.cluster.local"
                return Load(url, duration, CONNECTIONS, rate=rate, headers={"Host": host})

            for n in COUNTS:  # warm-up, and a check that every call is allowed
                warm = wrk(load(n, 50, 2))
                if warm["errors"]:
                    raise RuntimeError(f"tok-p{n}: {warm['errors']} errors in warm-up")
            runs: dict[tuple[int, int | None], list[dict[str, Any]]] = {}
            load_before = loadavg()
            for rep in range(REPS):
                for rate in loads:
                    for n in COUNTS:
                        run = wrk(load(n, rate, DURATION), meter)
                        runs.setdefault((n, rate), []).append(run)
                        log(
                            f"  rep {rep + 1}/{REPS} tok-p{n:<6} @ {rate or 'max':>4}: "
                            f"{run['rps']:7.0f} req/s  p50 {run['p50_ms']:6.2f}  "
                            f"p99 {run['p99_ms']:6.2f} ms  ingress "
                            f"{run['cpu_ms_per_1000_req'][INGRESS]:.0f} ms/1000 req  "
                            f"errors {run['errors']}  other CPU {run['other_cpu_s']:.1f} s"
                        )
            ctx, address, port = caller_context(fed, Path(tmp))
            ingress_pid = fed.pids()[INGRESS]
            tcp_runs: dict[int, list[dict[str, Any]]] = {}
            for n in COUNTS:  # warm-up
                tcp_connection(ctx, address, port, f"led-p{n}.payments.global")
            for rep in range(REPS):
                for n in COUNTS:
                    got = tcp_run(ctx, address, port, f"led-p{n}.payments.global", ingress_pid)
                    tcp_runs.setdefault(n, []).append(got)
                    log(
                        f"  rep {rep + 1}/{REPS} led-p{n:<6}: "
                        f"{got['ingress_cpu_ms_per_connection']:.2f} ms ingress CPU/connection  "
                        f"greeting p50 {got['greeting_p50_ms']:.2f} p99 "
                        f"{got['greeting_p99_ms']:.2f} ms"
                    )
            load_after = loadavg()
            errors = error_stats(admin_sockets(fed.layout, ON_PATH))
        finally:
            fed.close()

    rows = []
    for rate in loads:
        first: dict[str, float] = {}
        for n in COUNTS:
            rs = runs[(n, rate)]
            row = {
                "export": f"tok-p{n}",
                "principals": n,
                "target_rps": rate,
                "rps": statistics.median(r["rps"] for r in rs),
                **{
                    f"{q}_ms": statistics.median(r[f"{q}_ms"] for r in rs)
                    for q in ("p50", "p90", "p99")
                },
                "p99_ms_runs": [r["p99_ms"] for r in rs],
                "ingress_cpu_ms_per_1000_req": statistics.median(
                    r["cpu_ms_per_1000_req"][INGRESS] for r in rs
                ),
                "errors": sum(r["errors"] for r in rs),
                "other_cpu_s_per_run": statistics.median(r["other_cpu_s"] for r in rs),
            }
            if not first:
                first = dict(row)
            row["p99_ratio"] = row["p99_ms"] / first["p99_ms"]
            row["rps_ratio"] = row["rps"] / first["rps"]
            row["ingress_cpu_ratio"] = (
                row["ingress_cpu_ms_per_1000_req"] / first["ingress_cpu_ms_per_1000_req"]
            )
            rows.append(row)
    tcp_rows = []
    for n in COUNTS:
        rs = tcp_runs[n]
        tcp_rows.append(
            {
                "export": f"led-p{n}",
                "principals": n,
                **{
                    key: statistics.median(r[key] for r in rs)
                    for key in (
                        "ingress_cpu_ms_per_connection",
                        "greeting_p50_ms",
                        "greeting_p99_ms",
                    )
                },
            }
        )
    for row in tcp_rows:
        row["cpu_ratio"] = (
            row["ingress_cpu_ms_per_connection"] / tcp_rows[0]["ingress_cpu_ms_per_connection"]
        )
    others = [r["other_cpu_s"] / DURATION for rs in runs.values() for r in rs]
    return {
        "other_cores_median": statistics.median(others),
        "worst_case": f"caller {CALLER} is the last of the N principals of one consumer rule",
        "path": "checkout sidecar -> web egress -> payments ingress -> tokenizer sidecar",
        "settings": {
            "duration_s": DURATION,
            "repetitions": REPS,
            "connections": CONNECTIONS,
            "tcp_connections_per_run": TCP_CONNECTIONS,
            "nice_fixed_rate": NICE,
        },
        "up_s": up_s,
        "ingress_lds_bytes": lds_bytes,
        "checks": checks,
        "rules_form_before": RULES_FORM,
        "envoy_error_counters": errors,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "rows": rows,
        "tcp_rows": tcp_rows,
    }


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    before = r["rules_form_before"]
    top = max(row["principals"] for row in r["rows"])
    out = [
        "### Authorization scale: allowed principals on one export",
        "",
        f"Cross-mesh path (4 Envoys), worst case for in-order matching: the {r['worst_case']}. "
        "All exports are served by the same Envoys and backend in one federation; only the "
        "payments ingress's RBAC filter for each SNI differs, as meshfed renders it: Envoy's "
        "unified matcher, the caller's URI SAN looked up in a hash map after the method and "
        f"path. wrk, {s['connections']} connections, {s['duration_s']} s, median of "
        f"{s['repetitions']} interleaved runs; 2 cores shared with other jobs (fixed rates at "
        f"nice {s['nice_fixed_rate']}). Ingress listener with all policies (HTTP and TCP): "
        f"{r['ingress_lds_bytes'] / 1e6:.1f} MB; `meshfed up` of this federation from scratch: "
        f"{r['up_s']:.1f} s. Checked on tok-p{top:,}: "
        + ", ".join(f"{k} {v}" for k, v in r["checks"].items())
        + f". Other jobs used a median {r['other_cores_median']:.2f} of the 2 cores during the "
        "runs. For comparison, the `rules` form meshfed rendered before (principals tried in "
        f"order; {before['source']}): at 10,000 principals p99 x{before['p99_ratio_50rps']} at "
        f"50 rps and x{before['rps_ratio_max']} the throughput at max.",
        "",
        "| load | principals | req/s | p50 ms | p90 ms | p99 ms | p99 vs 1 "
        "| req/s vs 1 | ingress CPU ms/1000 req | vs 1 | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        load = f"{row['target_rps']} rps" if row["target_rps"] else "max"
        out.append(
            f"| {load} | {row['principals']:,} | {row['rps']:.0f} | "
            f"{row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['p99_ratio']:.2f} | {row['rps_ratio']:.2f} | "
            f"{row['ingress_cpu_ms_per_1000_req']:.0f} | {row['ingress_cpu_ratio']:.2f} | "
            f"{row['errors']} |"
        )
    out += [
        "",
        "TCP exports, the same N principals: each new connection passes the TLS handshake's SAN "
        "list (N entries, tried in order by Envoy) and network RBAC (the matcher). "
        f"{s['tcp_connections_per_run']} sequential connections straight to the ingress per run "
        "(handshake, greeting, one echo, close; Python client), median of "
        f"{s['repetitions']} runs.",
        "",
        "| principals | ingress CPU ms/connection | vs 1 | connect to greeting p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in r["tcp_rows"]:
        out.append(
            f"| {row['principals']:,} | {row['ingress_cpu_ms_per_connection']:.2f} | "
            f"{row['cpu_ratio']:.2f} | {row['greeting_p50_ms']:.2f} | "
            f"{row['greeting_p99_ms']:.2f} |"
        )
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    run_benchmark("authz_scale", main, markdown)
