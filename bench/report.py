"""Turn bench/results/*.json into the Markdown tables the README shows."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any


def _load(folder: Path, name: str) -> Any:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def control_plane(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "### Control plane: spec → plan → Istio manifests",
        "",
        "| meshes | exports | objects | plan s | render s | total s | vs smallest | ms/export"
        " | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['meshes']} | {r['exports']} | {r['objects']} | {r['plan_s']:.3f} | "
            f"{r['render_s']:.3f} | {r['total_s']:.3f} | {r['ratio_to_smallest']:.1f} | "
            f"{r['seconds_per_export'] * 1000:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    return out


def pki_speed(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "### PKI: leaf certificates per second vs `openssl speed` signatures per second",
        "",
        "| algorithm | meshfed certs/s (keygen + sign + encode) | openssl signs/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['algorithm']} | {r['meshfed_certs_per_s']:.0f} | "
            f"{r['openssl_signs_per_s']:.0f} | {r['ratio']:.3f} |"
        )
    return out


def controller(data: dict[str, Any]) -> list[str]:
    out = [
        "### Federation controller on real kube-apiservers",
        "",
    ]
    if "skipped" in data:
        return [*out, f"Not measured: {data['skipped']}"]
    out += [
        f"{data['clusters']} clusters, {data['exports']} exports ({data['exports_spec']} "
        f"services, some with a failover twin), {data['objects_on_clusters']} routing and "
        "policy objects on the clusters.",
        "",
        "| what | measured | baseline (same run) | ratio |",
        "|---|---:|---:|---:|",
        f"| initial reconcile (kubectl apply to Ready) | {data['initial_reconcile_s']} s | "
        f"`meshfed apply`: {data['cli_apply_s']} s | {data['initial_vs_cli']} |",
    ]
    floor = f"one server-side apply: {data['apply_round_trip_s']} s"
    for key, label in (
        ("service_change", "Service port change to the exporter's route"),
        ("address_change", "load-balancer address change to every importer"),
        ("policy_restore", "deleted AuthorizationPolicy restored"),
    ):
        out.append(f"| {label} | {data[key + '_s']} s | {floor} | {data[key + '_vs_round_trip']} |")
    out.append(
        f"| controller idle | {data['idle_cpu_core_fraction'] * 100:.2f}% of a core, "
        f"{data['idle_rss_mb']} MB RSS | | |"
    )
    if data.get("allocator"):
        out += ["", f"The controller ran as its image runs it, on {data['allocator']}."]
    if "load_average_1m" in data:
        loads = ", ".join(str(x) for x in data["load_average_1m"])
        out += [
            "",
            f"The machine's 1-minute load average at the Service change, the address change "
            f"and the end of the idle minute: {loads} on {data.get('cpu_count')} cores (the "
            "machine is shared; the API servers run at nice 10).",
        ]
    return out


def main(folder: Path) -> str:
    lines = [
        "## Benchmark results",
        "",
        f"Measured by `bench/run` on {platform.machine()} with {platform.python_version()}; "
        "every figure is compared with a baseline measured in the same run.",
        "",
    ]
    for name, render in (("control_plane", control_plane), ("pki_speed", pki_speed)):
        data = _load(folder, name)
        if data:
            lines += [*render(data), ""]
    data = _load(folder, "controller")
    if data:
        lines += [*controller(data), ""]
    for name in ("data_plane", "authz_scale", "edit_latency", "dos"):  # each writes its own
        part = folder / f"{name}.md"
        if part.exists():
            lines.append(part.read_text())
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
