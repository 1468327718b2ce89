"""Authorization scale: latency and ingress CPU with 1, 100, 1,000 and 10,000 allowed principals.

One federation (meshes web and payments) with four exports of the same payments workload,
``tok-p1`` … ``tok-p10000``, each allowing N principals of web; web imports all four. The only
difference between the calls is the RBAC policy on the payments ingress's filter chain for
that SNI: same Envoys, same backend, same connections. Worst case: the calling principal
(``ns/shop/sa/checkout``, web's checkout) is the **last** of the N in the list, after N-1 others
(``ns/team<i>/sa/caller<i>``); Envoy's RBAC tries a policy's principals in order.

The exports are loaded in turn through the full cross-mesh path (checkout sidecar → web egress →
payments ingress → tokenizer sidecar) at fixed rates and at max throughput, interleaved and
repeated; reported as p50/p90/p99, ingress CPU per 1000 requests, and ratios to the 1-principal
case. A fifth export with the largest N is rewritten on the running ingress into the proposed
render (a hash lookup on the caller's URI SAN) and measured alongside.
"""

from __future__ import annotations

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
    admin_ports,
    dump_spec,
    error_stats,
    loadavg,
    log,
    run_benchmark,
    wrk,
)

from meshfed.local import admin
from meshfed.local.client import http_call
from meshfed.local.files import read_json, write_json
from meshfed.local.ports import PortAllocator
from meshfed.render.envoy.files import process_dir

COUNTS = [int(c) for c in os.environ.get("BENCH_PRINCIPALS", "1,100,1000,10000").split(",")]
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
RATES = [int(r) for r in os.environ.get("BENCH_AUTHZ_RATES", "50,500").split(",")]
"""50 req/s: every case keeps up (10,000 listed principals cost ~9 ms of ingress CPU each)."""
CONNECTIONS = 16
CALLER = "ns/shop/sa/checkout"
INGRESS = "payments/ingress"
CLIENT = "web/sidecar/shop/checkout"
ON_PATH = [CLIENT, "web/egress", INGRESS, "payments/sidecar/cards/tokenizer"]


def principals(n: int) -> list[str]:
    """N allowed principals, the caller last (the worst case for in-order matching)."""
    return [f"ns/team{i}/sa/caller{i}" for i in range(1, n)] + [CALLER]


def spec(counts: list[int], prototype: bool = True) -> str:
    """The federation; with ``prototype``, one more export ``tok-p<max>m`` for the exact map."""
    exported = [(f"tok-p{n}", n) for n in counts]
    if prototype:
        exported.append((f"tok-p{max(counts)}m", max(counts)))
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
                        {
                            "name": "tokenizer",
                            "namespace": "cards",
                            "serviceAccount": "tokenizer",
                            "port": 8080,
                            "protocol": "HTTP",
                        }
                    ],
                },
                {
                    "name": "web",
                    "trustDomain": "web.authz.example",
                    "ingress": {"address": "127.0.0.1", "port": 0},
                    "workloads": [
                        {
                            "name": "checkout",
                            "namespace": "shop",
                            "serviceAccount": "checkout",
                            "port": 8080,
                            "protocol": "HTTP",
                        }
                    ],
                },
            ],
            "exports": [
                {
                    "name": name,
                    "mesh": "payments",
                    "workload": "cards/tokenizer",
                    "host": f"{name}.payments.global",
                    "consumers": [
                        {
                            "mesh": "web",
                            "principals": principals(n),
                            "methods": ["POST"],
                            "paths": ["/v1/tokenize"],
                        }
                    ],
                }
                for name, n in exported
            ],
            "imports": [
                {
                    "mesh": "web",
                    "host": f"{name}.shop.svc.cluster.local",
                    "port": 80,
                    "from": [f"payments/{name}"],
                }
                for name, _ in exported
            ],
        },
    }
    alloc = PortAllocator()
    for mesh in doc["spec"]["meshes"]:
        mesh["ingress"]["port"] = alloc.allocate()
    return dump_spec(doc)


# --- the proposed render, prototyped on the running ingress ---------------------------------------

ACTION = "type.googleapis.com/envoy.config.rbac.v3.Action"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
URI_SAN_INPUT = "type.googleapis.com/envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput"


def _action(kind: str) -> dict[str, Any]:
    name = kind.lower()
    config = {"@type": ACTION, "name": name, "action": kind}
    return {"action": {"name": name, "typed_config": config}}


def _header(name: str, match: dict[str, Any]) -> dict[str, Any]:
    return {
        "single_predicate": {
            "input": {"name": name, "typed_config": {"@type": HEADER_INPUT, "header_name": name}},
            "value_match": match,
        }
    }


def _predicate(permission: dict[str, Any]) -> dict[str, Any] | None:
    """The rendered permission (any, or methods AND paths) as a matcher predicate; None: any."""
    if permission.get("any"):
        return None
    parts = []
    for rule in permission["and_rules"]["rules"]:
        alternatives = []
        for alt in rule["or_rules"]["rules"]:
            if "header" in alt:  # :method
                alternatives.append(_header(":method", alt["header"]["string_match"]))
            else:  # url_path; the prototype matches :path (a query string would not match)
                alternatives.append(_header(":path", alt["url_path"]["path"]))
        if len(alternatives) == 1:
            parts.append(alternatives[0])
        else:
            parts.append({"or_matcher": {"predicate": alternatives}})
    return parts[0] if len(parts) == 1 else {"and_matcher": {"predicate": parts}}


def _san_map(table: dict[str, Any]) -> dict[str, Any]:
    return {
        "matcher_tree": {
            "input": {"name": "uri_san", "typed_config": {"@type": URI_SAN_INPUT}},
            "exact_match_map": {"map": table},
        },
        "on_no_match": _action("DENY"),
    }


def exact_map_matcher(rules: dict[str, Any]) -> dict[str, Any]:
    """RBAC ``rules`` (ALLOW policies of exact principals) as a hash lookup on the URI SAN;
    everything else denied.

    One rule (the usual case): its methods/paths first, then one flat map of its principals (a
    small config: one action per principal). Several rules: the map first, each principal
    leading to the permissions of the rules that name it (OR), which is general but repeats
    them per principal (Envoy takes longer to build it).
    """
    policies = list(rules["policies"].values())
    if len(policies) == 1:
        (policy,) = policies
        principals = [p["authenticated"]["principal_name"]["exact"] for p in policy["principals"]]
        inner = _san_map({p: _action("ALLOW") for p in principals})
        predicate = _predicate(policy["permissions"][0])
        if predicate is None:
            return inner
        entry = {"predicate": predicate, "on_match": {"matcher": inner}}
        return {"matcher_list": {"matchers": [entry]}, "on_no_match": _action("DENY")}
    per_principal: dict[str, list[dict[str, Any] | None]] = {}
    for policy in rules["policies"].values():
        predicate = _predicate(policy["permissions"][0])
        for principal in policy["principals"]:
            exact = principal["authenticated"]["principal_name"]["exact"]
            per_principal.setdefault(exact, []).append(predicate)
    table = {}
    for principal, predicates in per_principal.items():
        if any(p is None for p in predicates):
            table[principal] = _action("ALLOW")
            continue
        table[principal] = {
            "matcher": {
                "matcher_list": {
                    "matchers": [{"predicate": p, "on_match": _action("ALLOW")} for p in predicates]
                },
                "on_no_match": _action("DENY"),
            }
        }
    return _san_map(table)


def apply_prototype(fed: Federation, sni: str) -> float:
    """Rewrite the RBAC filter of ``sni``'s chain in the ingress's LDS; seconds until applied."""
    path = process_dir(fed.runtime.root, INGRESS) / "lds" / "lds.json"
    doc = read_json(path)
    for chain in doc["resources"][0]["filter_chains"]:
        if chain["name"] != sni:
            continue
        for f in chain["filters"][0]["typed_config"]["http_filters"]:
            if f["name"] == "envoy.filters.http.rbac" and "rules" in f["typed_config"]:
                f["typed_config"]["matcher"] = exact_map_matcher(f["typed_config"].pop("rules"))
    version = str(int(doc["version_info"]) + 1)
    doc["version_info"] = version
    t0 = time.monotonic()
    write_json(path, doc)  # temporary file + rename: Envoy reloads
    port = fed.layout.meshes["payments"].ingress_admin_port
    pattern = r"^listener_manager\.lds\.(version_text|update_rejected)$"
    while time.monotonic() - t0 < 60:
        try:
            got = admin.stats(port, pattern, timeout=5)
        except admin.AdminError:  # busy parsing the listener
            continue
        if got.get("listener_manager.lds.version_text") == version:
            return time.monotonic() - t0
        time.sleep(0.01)
    raise RuntimeError(f"the prototype listener was not applied: {got}")


# --- the benchmark -------------------------------------------------------------------------------


def main() -> dict[str, Any]:
    loads: list[int | None] = [*RATES, None]
    top = max(COUNTS)
    cases = [(f"tok-p{n}", n, "in-order list (meshfed today)") for n in COUNTS]
    cases.append((f"tok-p{top}m", top, "exact map (proposed, prototype)"))
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-authz-") as tmp:
        fed = Federation(spec(COUNTS), Path(tmp) / "state")
        try:
            t0 = time.monotonic()
            fed.up()
            up_s = time.monotonic() - t0
            lds = process_dir(fed.runtime.root, INGRESS) / "lds" / "lds.json"
            lds_bytes = lds.stat().st_size
            log(f"  federation up in {up_s:.2f} s; ingress LDS {lds_bytes / 1e6:.1f} MB")
            prototype_apply_s = apply_prototype(fed, f"tok-p{top}m.payments.global")
            log(f"  prototype listener applied in {prototype_apply_s:.2f} s")
            outbound = fed.layout.meshes["web"].sidecars["shop/checkout"].outbound_port
            checks = {
                method: http_call(
                    outbound, method, f"http://tok-p{top}m.shop.svc.cluster.local/v1/tokenize"
                ).status
                for method in ("POST", "GET")
            }
            if checks != {"POST": 200, "GET": 403}:
                raise RuntimeError(f"prototype policy does not decide as the list: {checks}")
            pids = {n: p for n, p in fed.pids().items() if n in ON_PATH}
            meter = CpuMeter(pids)
            url = f"http://127.0.0.1:{outbound}/v1/tokenize"

            def load(name: str, rate: int | None, duration: int) -> Load:
                host = f"{name}.shop.svc.cluster.local"
                return Load(url, duration, CONNECTIONS, rate=rate, headers={"Host": host})

            for name, _n, _ in cases:  # warm-up, and a check that every call is allowed
                warm = wrk(load(name, 50, 2))
                if warm["errors"]:
                    raise RuntimeError(f"{name}: {warm['errors']} errors in warm-up")
            runs: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
            load_before = loadavg()
            for rep in range(REPS):
                for rate in loads:
                    for name, _n, _ in cases:
                        run = wrk(load(name, rate, DURATION), meter)
                        runs.setdefault((name, rate), []).append(run)
                        log(
                            f"  rep {rep + 1}/{REPS} {name:>12} @ {rate or 'max':>4}: "
                            f"{run['rps']:7.0f} req/s  p50 {run['p50_ms']:6.2f}  "
                            f"p99 {run['p99_ms']:6.2f} ms  ingress "
                            f"{run['cpu_ms_per_1000_req'][INGRESS]:.0f} ms/1000 req  "
                            f"errors {run['errors']}  other CPU {run['other_cpu_s']:.1f} s"
                        )
            load_after = loadavg()
            errors = error_stats(admin_ports(fed.layout, ON_PATH))
        finally:
            fed.close()

    rows = []
    for rate in loads:
        base: dict[str, float] = {}
        for name, n, matching in cases:
            rs = runs[(name, rate)]
            row = {
                "export": name,
                "principals": n,
                "matching": matching,
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
            if not base:
                base = dict(row)
            row["p99_ratio"] = row["p99_ms"] / base["p99_ms"]
            row["rps_ratio"] = row["rps"] / base["rps"]
            row["ingress_cpu_ratio"] = (
                row["ingress_cpu_ms_per_1000_req"] / base["ingress_cpu_ms_per_1000_req"]
            )
            rows.append(row)
    others = [r["other_cpu_s"] / DURATION for rs in runs.values() for r in rs]
    return {
        "other_cores_median": statistics.median(others),
        "worst_case": f"caller {CALLER} is the last of the N principals of one consumer rule",
        "path": "checkout sidecar -> web egress -> payments ingress -> tokenizer sidecar",
        "settings": {
            "duration_s": DURATION,
            "repetitions": REPS,
            "connections": CONNECTIONS,
            "nice_fixed_rate": NICE,
        },
        "up_s": up_s,
        "ingress_lds_bytes": lds_bytes,
        "prototype_lds_apply_s": prototype_apply_s,
        "prototype_checks": checks,
        "envoy_error_counters": errors,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "rows": rows,
    }


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    out = [
        "### Authorization scale: allowed principals on one export",
        "",
        f"Cross-mesh path (4 Envoys), worst case: the {r['worst_case']}. All exports are served "
        "by the same Envoys and backend in one federation; only the payments ingress's RBAC "
        f"policy for each SNI differs. wrk, {s['connections']} connections, {s['duration_s']} s, "
        f"median of {s['repetitions']} interleaved runs; 2 cores shared with other jobs (fixed "
        f"rates at nice {s['nice_fixed_rate']}). Ingress listener with "
        f"all policies: {r['ingress_lds_bytes'] / 1e6:.1f} MB; `meshfed up` of this federation "
        f"from scratch: {r['up_s']:.1f} s. `exact map`: the same policy rendered as a hash "
        "lookup on the caller's URI SAN (Envoy's unified matcher in the RBAC filter), applied by "
        "the benchmark to the running ingress as a prototype of the proposed render (checked: "
        f"POST {r['prototype_checks']['POST']}, GET {r['prototype_checks']['GET']}; Envoy took "
        f"{r['prototype_lds_apply_s']:.1f} s to apply that listener update). Other jobs used a "
        f"median {r['other_cores_median']:.2f} of the 2 cores during the runs.",
        "",
        "| load | principals | matching | req/s | p50 ms | p90 ms | p99 ms | p99 vs 1 "
        "| req/s vs 1 | ingress CPU ms/1000 req | vs 1 | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        load = f"{row['target_rps']} rps" if row["target_rps"] else "max"
        out.append(
            f"| {load} | {row['principals']:,} | {row['matching']} | {row['rps']:.0f} | "
            f"{row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['p99_ratio']:.2f} | {row['rps_ratio']:.2f} | "
            f"{row['ingress_cpu_ms_per_1000_req']:.0f} | {row['ingress_cpu_ratio']:.2f} | "
            f"{row['errors']} |"
        )
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    run_benchmark("authz_scale", main, markdown)
