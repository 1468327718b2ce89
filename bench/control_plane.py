"""Control plane cost: spec → plan → Istio manifests, for growing federations.

Each case runs in a fresh subprocess (so peak RSS is its own) after the PKI exists; reported as
seconds, peak RSS and the ratio to the smallest case measured in the same run.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CASES = [(2, 10), (2, 100), (10, 10), (10, 100), (10, 1000), (50, 100), (50, 1000)]


def run_case(meshes: int, exports: int, state: Path) -> dict[str, float]:
    """In this process: load, plan and render everything; return timings."""
    sys.path.insert(0, str(HERE))
    from synth import synthetic_spec

    from meshfed.sinks.yaml_out import dump_all
    from meshfed.workspace import open_workspace

    spec = state / "spec.yaml"
    spec.write_text(yaml.safe_dump(synthetic_spec(meshes, exports), sort_keys=False))
    open_workspace(spec, state)  # PKI and gateway certificates exist before timing
    open_workspace(spec, state).credentials()
    start = time.perf_counter()
    ws = open_workspace(spec, state)
    planned = time.perf_counter()
    objects = 0
    size = 0
    for rendered in ws.istio():
        for docs in rendered.files.values():
            objects += len(docs)
            size += len(dump_all(docs))
    done = time.perf_counter()
    return {
        "plan_s": planned - start,
        "render_s": done - planned,
        "total_s": done - start,
        "objects": objects,
        "yaml_bytes": size,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> list[dict[str, float]]:
    results = []
    for meshes, exports in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [sys.executable, __file__, "--case", str(meshes), str(exports), tmp],
                capture_output=True,
                text=True,
                check=True,
            )
        row = {"meshes": meshes, "exports": exports, **json.loads(out.stdout)}
        results.append(row)
        print(
            f"  {meshes:>3} meshes x {exports:>5} exports: {row['total_s']:.3f} s, "
            f"{row['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )
    base = results[0]["total_s"]
    for row in results:
        row["ratio_to_smallest"] = row["total_s"] / base
        row["seconds_per_export"] = row["total_s"] / row["exports"]
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:
        print(json.dumps(run_case(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))))
    else:
        print(json.dumps(main(), indent=2))
