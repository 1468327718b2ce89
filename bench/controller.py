"""The federation controller on real kube-apiservers: 10 clusters, 1,000 exports.

Needs a script that starts N kube-apiservers on loopback and prints a kubeconfig with contexts
c1..cN (``MESHFED_KUBE_START``, default ``/work/tools/kube/start.sh --dir DIR --clusters N``,
and ``MESHFED_KUBE_STOP`` to stop them), and Istio's CRD bundle (``MESHFED_ISTIO_CRDS``, default
../shared/istio/crd-all.gen.yaml). Without them it prints a skip record saying so.

Measured, each against a baseline of the same run:
- initial reconcile (Federation applied with kubectl until Ready) vs ``meshfed apply`` (the
  CLI, same plan/render/apply code) of the same spec to the same, emptied clusters;
- a Service port change until the exporter's route follows, a load-balancer address change
  until every importer's ServiceEntry follows, a deleted AuthorizationPolicy until restored:
  each vs one server-side apply round trip of one object to one cluster (the floor);
- idle CPU and RSS of the controller process over 60 s with nothing changing (run as its
  image and Deployment run it: ``MEMORY_ENV``, and jemalloc preloaded when this machine has
  it, ``libjemalloc.so.2``; the record says which allocator ran); the machine's load average
  over the run.

The controller's log line of each reconcile (where its time went, ``controller/timing.py``)
is copied to stderr. For working on the controller: ``MESHFED_BENCH_QUICK=1`` skips the CLI's
baseline and the idle measurement, and ``MESHFED_BENCH_REPEAT=N`` (default 1) measures the
Service and address changes N times each (the figures are then the medians); run it as
``.venv/bin/python bench/controller.py`` so that such a run is not taken for the full one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from mirror import Mirror, Objects  # noqa: E402
from synth import synthetic_spec  # noqa: E402

from meshfed.controller.manifests import JEMALLOC, MEMORY_ENV  # noqa: E402
from meshfed.kube.client import KubeClient  # noqa: E402
from meshfed.kube.errors import KubeError  # noqa: E402
from meshfed.kube.targets import PRUNE_KINDS  # noqa: E402

CLUSTERS = 10
EXPORTS = 1000
NS = "meshfed-system"
FED = "bench"
MESHFED = str(Path(sys.executable).parent / "meshfed")
START = os.environ.get("MESHFED_KUBE_START", "/work/tools/kube/start.sh")
STOP = os.environ.get("MESHFED_KUBE_STOP", "/work/tools/kube/stop.sh")
CRDS = Path(os.environ.get("MESHFED_ISTIO_CRDS", ROOT.parent / "shared/istio/crd-all.gen.yaml"))
QUICK = os.environ.get("MESHFED_BENCH_QUICK", "") not in ("", "0")
REPEAT = max(int(os.environ.get("MESHFED_BENCH_REPEAT", "1")), 1)


def wait(check: Callable[[], Any], timeout: float = 600.0, step: float = 0.05) -> float:
    """Seconds until ``check()`` holds (a request that times out on a loaded machine is a
    "not yet", not the end of the run)."""
    t0 = time.monotonic()
    while not _holds(check):
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("timed out")
        time.sleep(step)
    return time.monotonic() - t0


def _holds(check: Callable[[], Any]) -> bool:
    try:
        return bool(check())
    except KubeError as exc:
        print(f"check failed, trying again: {exc}", file=sys.stderr)
        return False


def spec(contexts: list[str]) -> dict[str, Any]:
    doc = synthetic_spec(CLUSTERS, EXPORTS, workloads_per_mesh=20)
    doc["metadata"]["name"] = FED
    for mesh, ctx in zip(doc["spec"]["meshes"], contexts, strict=True):
        mesh["kubernetes"] = {"context": ctx}
    del doc["spec"]["meshes"][0]["workloads"]  # m00: discovered from its Services
    del doc["spec"]["meshes"][1]["ingress"]["address"]  # m01: from its load balancer
    return doc


def services(client: KubeClient, names: list[str], port: int = 8080) -> None:
    for name in names:
        client.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "svc"},
                "spec": {"ports": [{"name": "http", "port": port}], "selector": {"app": name}},
            },
            force=True,
        )


def set_lb(client: KubeClient, ip: str) -> None:
    res = client.resource("v1", "Service")
    client.request(
        "PATCH",
        res.path(NS, "federation-ingress") + "/status",
        body={"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
        content_type="application/merge-patch+json",
    )


def prepare(kubeconfig: str, contexts: list[str]) -> dict[str, KubeClient]:
    clients = {c: KubeClient.for_context(c, kubeconfig, name=c) for c in contexts}
    crds = [d for d in yaml.safe_load_all(CRDS.read_text()) if d]
    for client in clients.values():
        for crd in crds:
            client.apply(crd, force=True)
        for ns in ("istio-system", "svc", "app"):
            if not client.namespace_exists(ns):
                client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for client in clients.values():
        wait(lambda c=client: _served(c, "networking.istio.io/v1", "Gateway"), 120)
    return clients


def _served(client: KubeClient, api_version: str, kind: str) -> bool:
    client.rediscover()
    return client.find(api_version, kind) is not None


def _ready(client: KubeClient) -> bool:
    fed = client.get("meshfed.dev/v1alpha1", "Federation", FED) or {}
    gen = (fed.get("metadata") or {}).get("generation")
    return any(
        c["type"] == "Ready" and c["status"] == "True" and c.get("observedGeneration") == gen
        for c in (fed.get("status") or {}).get("conditions") or []
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _objects(client: KubeClient, federation: str) -> int:
    total = 0
    for api_version, kind in (
        ("networking.istio.io/v1", "VirtualService"),
        ("security.istio.io/v1", "AuthorizationPolicy"),
        ("networking.istio.io/v1", "ServiceEntry"),
        ("networking.istio.io/v1", "DestinationRule"),
    ):
        total += len(client.list(api_version, kind, labels=f"meshfed.dev/federation={federation}"))
    return total


def measure(kubeconfig: str, contexts: list[str], work: Path) -> dict[str, Any]:
    clients = prepare(kubeconfig, contexts)
    first = clients[contexts[0]]
    doc = spec(contexts)
    m00 = [f"w{k}" for k in range(20)]
    services(first, m00)
    first.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "client", "namespace": "app"},
            "spec": {"ports": [{"name": "http", "port": 8080}], "selector": {"app": "client"}},
        },
        force=True,
    )
    subprocess.run(
        [MESHFED, "controller", "install", "--kubeconfig", kubeconfig, "--context", contexts[0],
         "--no-controller", *[a for c in contexts for a in ("--target-context", c)]],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    manifests = subprocess.run(
        [MESHFED, "controller", "manifests"], check=True, capture_output=True, text=True
    )
    crd = next(
        d
        for d in yaml.safe_load_all(manifests.stdout)
        if d and d["kind"] == "CustomResourceDefinition"
    )
    first.apply(crd, force=True)
    wait(lambda: _served(first, "meshfed.dev/v1alpha1", "Federation"), 60)
    # Baseline: the CLI's apply of the same spec (addresses and workloads filled in).
    cli_doc = json.loads(json.dumps(doc))
    cli_doc["metadata"]["name"] = "cli"
    cli_doc["spec"]["meshes"][1]["ingress"]["address"] = "127.0.0.31"
    cli_doc["spec"]["meshes"][0]["workloads"] = [
        {"name": n, "namespace": "svc", "serviceAccount": n, "port": 8080} for n in m00
    ] + [{"name": "client", "namespace": "app", "serviceAccount": "client", "port": 8080}]
    cli_spec = work / "cli.yaml"
    cli_spec.write_text(yaml.safe_dump(cli_doc, sort_keys=False))
    cli_seconds: float | None = None
    objects: int | None = None
    if not QUICK:
        cli_seconds, objects = cli_baseline(kubeconfig, cli_spec, work, clients)
    cleaned = 0 if QUICK else clean(clients)
    print(f"emptied the clusters of the CLI's {cleaned} objects", file=sys.stderr)
    # The controller.
    log = (work / "controller.log").open("wb")
    proc = subprocess.Popen(
        [MESHFED, "controller", "run", "--kubeconfig", kubeconfig, "--context", contexts[0],
         "--health-port", "0", "--resync", "3600", "--work-dir", str(work / "ctl")],
        stdout=log, stderr=subprocess.STDOUT, env=deployed_env(),
    )  # fmt: skip
    try:
        path = work / "bench.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        t0 = time.monotonic()
        # Server-side: a client-side apply keeps the whole object in an annotation, and
        # annotations hold at most 256 KiB (this spec is larger).
        created = subprocess.run(
            ["kubectl", "--kubeconfig", kubeconfig, "--context", contexts[0], "apply",
             "--server-side", "-f", str(path)],
            capture_output=True, text=True,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(created.stderr[-2000:])
        m01 = clients[contexts[1]]
        wait(lambda: m01.get("v1", "Service", "federation-ingress", NS) is not None, 3600, 0.2)
        set_lb(m01, "127.0.0.41")  # as a cloud's load-balancer controller would, at once
        wait(lambda: _ready(first), 3600, 0.2)
        initial = time.monotonic() - t0
        print(f"controller initial reconcile: {initial:.1f} s", file=sys.stderr)
        # Floor: one server-side apply round trip of one object.
        probe = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "bench-probe", "namespace": "svc"},
            "data": {"t": str(time.time())},
        }
        floor = []
        for _ in range(5):
            t1 = time.monotonic()
            first.apply({**probe, "data": {"t": str(time.time())}}, force=True)
            floor.append(time.monotonic() - t1)
        floor_s = sorted(floor)[2]
        time.sleep(5)

        # A Service port change: the exporter's route follows (seen by a watch: polling ten
        # clusters' lists loaded the machine during the seconds measured, ``mirror.py``).
        def route_port(objects: Objects) -> int | None:
            for vs in objects.values():
                if (vs["metadata"].get("labels") or {}).get("meshfed.dev/federation") != FED:
                    continue
                for http in (vs.get("spec") or {}).get("http") or []:
                    dest = http["route"][0]["destination"]
                    if dest["host"].startswith("w0.svc."):
                        return int(dest["port"]["number"])
            return None

        def watching(kind: str, on: list[str]) -> Mirror:
            own = {c: KubeClient.for_context(c, kubeconfig, name=c) for c in on}
            return Mirror(own, "networking.istio.io/v1", kind, NS)

        loads = [os.getloadavg()[0]]
        routes = watching("VirtualService", contexts[:1])
        service_samples = []
        for k in range(REPEAT):
            port = 8081 + k
            t1 = time.monotonic()
            services(first, ["w0"], port=port)
            seen = routes.until(lambda o, p=port: route_port(o) == p)
            service_samples.append(seen - t1)
            time.sleep(3)
        routes.close()
        service_s = median(service_samples)

        # A load-balancer address change: every importer's ServiceEntry follows.
        def followed(objects: Objects, old: str) -> bool:
            return not any(
                ep.get("address") == old
                for se in objects.values()
                for ep in (se.get("spec") or {}).get("endpoints") or []
            )

        loads.append(os.getloadavg()[0])
        entries = watching("ServiceEntry", contexts)
        address_samples = []
        for k in range(REPEAT):
            old, new = f"127.0.0.{41 + k}", f"127.0.0.{42 + k}"
            entries.until(lambda o, a=old: not followed(o, a))  # the old one is in use
            t1 = time.monotonic()
            set_lb(m01, new)
            seen = entries.until(lambda o, a=old: followed(o, a))
            address_samples.append(seen - t1)
            time.sleep(3)
        entries.close()
        address_s = median(address_samples)

        # A deleted AuthorizationPolicy.
        policies = first.list(
            "security.istio.io/v1", "AuthorizationPolicy", namespace=NS,
            labels=f"meshfed.dev/federation={FED}",
        )  # fmt: skip
        victim = next(p for p in policies if p["metadata"]["name"].startswith("allow-"))
        name = victim["metadata"]["name"]
        t1 = time.monotonic()
        first.delete(victim)
        wait(lambda: first.get("security.istio.io/v1", "AuthorizationPolicy", name, NS), 600)
        restore_s = time.monotonic() - t1

        # Idle.
        idle_cpu = rss = None
        if not QUICK:
            time.sleep(10)
            cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
            time.sleep(60)
            idle_cpu = round((_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0), 4)
            rss = round(_rss_mb(proc.pid), 1)
        loads.append(os.getloadavg()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for line in (work / "controller.log").read_text(errors="replace").splitlines():
            if ": reconciled (" in line:
                print(line, file=sys.stderr)
    return {
        "clusters": CLUSTERS,
        "exports_spec": EXPORTS,
        "exports": len(doc["spec"]["exports"]),
        "objects_on_clusters": objects,
        "cli_apply_s": None if cli_seconds is None else round(cli_seconds, 2),
        "initial_reconcile_s": round(initial, 2),
        "initial_vs_cli": None if cli_seconds is None else round(initial / cli_seconds, 2),
        "apply_round_trip_s": round(floor_s, 4),
        "service_change_s": round(service_s, 2),
        "address_change_s": round(address_s, 2),
        "service_change_samples_s": [round(x, 2) for x in service_samples],
        "address_change_samples_s": [round(x, 2) for x in address_samples],
        "policy_restore_s": round(restore_s, 2),
        "service_change_vs_round_trip": round(service_s / floor_s, 1),
        "address_change_vs_round_trip": round(address_s / floor_s, 1),
        "policy_restore_vs_round_trip": round(restore_s / floor_s, 1),
        "idle_cpu_core_fraction": idle_cpu,
        "idle_rss_mb": rss,
        "allocator": allocator_of(deployed_env()),
        "load_average_1m": [round(x, 1) for x in loads],
        "cpu_count": os.cpu_count(),
        "quick": QUICK,
    }


JEMALLOC_PATHS = (JEMALLOC, "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")  # fmt: skip


def deployed_env() -> dict[str, str]:
    """The controller's environment as its image and Deployment set it (``MEMORY_ENV``;
    jemalloc preloaded where this machine has it, as the image does)."""
    env = {**os.environ, **MEMORY_ENV}
    found = next((p for p in JEMALLOC_PATHS if Path(p).is_file()), None)
    if found is not None:
        env["LD_PRELOAD"] = found
    return env


def allocator_of(env: dict[str, str]) -> str:
    preloaded = env.get("LD_PRELOAD")
    return (
        f"jemalloc ({preloaded}, MALLOC_CONF={env['MALLOC_CONF']})" if preloaded else "glibc malloc"
    )


def median(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2]


def cli_baseline(
    kubeconfig: str, cli_spec: Path, work: Path, clients: dict[str, KubeClient]
) -> tuple[float, int]:
    """``meshfed apply`` of the CLI's spec: seconds, and the objects it put on the clusters."""
    t0 = time.monotonic()
    applied = subprocess.run(
        [MESHFED, "apply", str(cli_spec), "--kubeconfig", kubeconfig, "--state", str(work / "cli")],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    cli_seconds = time.monotonic() - t0
    print(f"meshfed apply (baseline): {cli_seconds:.1f} s", file=sys.stderr)
    if applied.returncode != 0:
        raise RuntimeError(applied.stderr[-2000:])
    return cli_seconds, sum(_objects(c, "cli") for c in clients.values())


def clean(clients: dict[str, KubeClient]) -> int:
    """Empty the clusters of the CLI's federation (the controller's is another one; one mesh
    per federation: the CLI's objects would make it refuse). Returns how many were deleted."""
    deleted = 0
    for client in clients.values():
        for api_version, kind in PRUNE_KINDS:  # every kind meshfed renders (EnvoyFilters too)
            for obj in client.list(api_version, kind, labels="meshfed.dev/federation=cli"):
                deleted += bool(client.delete(obj))
        client.request(
            "PATCH",
            f"/api/v1/namespaces/{NS}",
            body={"metadata": {"labels": {"meshfed.dev/federation": None}}},
            content_type="application/merge-patch+json",
        )
    return deleted


def main() -> dict[str, Any]:
    if not Path(START).is_file() or not CRDS.is_file():
        return {"skipped": f"needs {START} (real kube-apiservers) and Istio's CRDs at {CRDS}"}
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-kube-") as tmp:
        work = Path(tmp)
        kube_dir = work / "kube"
        started = subprocess.run(
            [START, "--dir", str(kube_dir), "--clusters", str(CLUSTERS)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if started.returncode != 0:
            return {"skipped": f"the API servers did not start: {started.stderr[-500:]}"}
        kubeconfig = started.stdout.strip().splitlines()[-1]
        try:
            return measure(kubeconfig, [f"c{i + 1}" for i in range(CLUSTERS)], work)
        finally:
            subprocess.run([STOP, "--dir", str(kube_dir)], capture_output=True, timeout=120)


if __name__ == "__main__":
    json.dump(main(), sys.stdout, indent=2)
    print()
