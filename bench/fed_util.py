"""Helpers for the data-plane benchmarks: a local federation on free ports, wrk, CPU meters.

Everything here runs on loopback only; every load run is bounded in time, and every process the
benchmarks start is stopped again (``Federation`` and ``ExtraEnvoy`` are context managers).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshfed.examples import example_path
from meshfed.local.ports import PortAllocator
from meshfed.local.procs import find_envoy, processes_mentioning
from meshfed.local.runtime import Runtime, UpReport
from meshfed.local.supervisor import envoy_argv as runtime_envoy_argv
from meshfed.render.envoy.layout import LocalLayout
from meshfed.workspace import open_workspace

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PACE_LUA = r"""
-- Fixed-rate load for wrk (wrk has no rate limit): each thread keeps an absolute schedule of
-- send times, one slot every threads/rate seconds, and delay() makes the next request on a free
-- connection wait for its slot. Latency is measured by wrk from the actual send.
local ffi = require("ffi")
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *tp);
]])
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = nil
local slot = nil

function init(args)
  local rate = tonumber(args[1])
  local threads = tonumber(args[2])
  if rate and rate > 0 then interval = 1000 * threads / rate end
end

function delay()
  if interval == nil then return 0 end
  local now = now_ms()
  if slot == nil then slot = now end
  slot = slot + interval
  -- never build up more than 50 ms of backlog: past that the run is not at this rate anyway
  if slot < now - 50 then slot = now - 50 end
  local d = slot - now
  if d < 0 then return 0 end
  return math.floor(d)
end
"""

REPORT_LUA = r"""
function done(summary, latency, requests)
  local p = {}
  for _, q in ipairs({50, 75, 90, 99, 99.9}) do
    p[#p + 1] = string.format('"%s": %d', tostring(q), latency:percentile(q))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, "mean_us": %f, "max_us": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
    .. '"percentiles_us": {%s}}\n',
    summary.requests, summary.duration, summary.bytes, latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(p, ", ")))
end
"""


NICE = int(os.environ.get("BENCH_NICE", "-10"))
"""Scheduling priority of the measured processes (and wrk) during fixed-rate runs: 2 cores shared
with other jobs; a higher priority keeps their bursts out of the measured latencies. 0: off."""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_benchmark(name: str, measure: Callable[[], Any], markdown: Callable[[Any], str]) -> None:
    """The command line of a data-plane benchmark: measure, write ``results/<name>.md`` and
    print the JSON (``bench/run`` stores it); ``--markdown FILE`` re-renders stored JSON."""
    handle_signals()
    if sys.argv[1:2] == ["--markdown"]:
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        return
    result = measure()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(json.dumps(result, indent=2))


def handle_signals() -> None:
    """SIGTERM and SIGINT (ignored in background jobs) end the run through its cleanup."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def set_nice(pids: list[int], nice: int) -> None:
    """Nice value of every thread of ``pids`` and of their autogroups.

    On Linux, nice is per thread, and with autogroup scheduling (on here) it ranks threads only
    within their session's group, while the CPU is shared between groups by the group's nice
    (``/proc/<pid>/autogroup``): Envoys and the workload host run in sessions of their own.
    """
    for pid in pids:
        with suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(ProcessLookupError, PermissionError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


# --- CPU accounting ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, also those that exited), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    parts = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return (sum(parts[:8]) - idle) / CLK_TCK


def wait_quiet(
    own: Mapping[str, int], threshold: float = 0.5, max_wait: float = 10.0
) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until the rest of the machine uses under ``threshold`` cores.

    Other users of this 2-core machine (test suites, builds) come in bursts; starting a run in a
    lull keeps them out of most of it. Returns (seconds waited, cores the others used last).
    """
    t0 = time.monotonic()
    while True:
        mine = sum(cpu_seconds(p) for p in own.values())
        busy = machine_busy_seconds()
        time.sleep(1.0)
        others = (machine_busy_seconds() - busy) - (
            sum(cpu_seconds(p) for p in own.values()) - mine
        )
        waited = time.monotonic() - t0
        if others < threshold or waited >= max_wait:
            return waited, others


class CpuMeter:
    """CPU seconds each named process used between ``start()`` and ``stop()``; plus the machine."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}
        self._busy = 0.0
        self._t = 0.0

    def start(self) -> None:
        self._before = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self._busy = machine_busy_seconds()
        self._t = time.monotonic()

    def stop(self) -> dict[str, Any]:
        used = {n: cpu_seconds(p) - self._before[n] for n, p in self.pids.items()}
        return {
            "cpu_s": used,
            "machine_busy_s": machine_busy_seconds() - self._busy,
            "wall_s": time.monotonic() - self._t,
        }


# --- wrk -----------------------------------------------------------------------------------------


@dataclass
class Load:
    """One bounded wrk run."""

    url: str
    duration: int = 10
    connections: int = 16
    threads: int = 1
    rate: int | None = None
    """Requests per second (paced by PACE_LUA); None: as fast as it goes."""
    method: str = "POST"
    body: str = '{"pan": "4111111111111111"}'
    headers: dict[str, str] = field(default_factory=dict)


def _script(load: Load, folder: Path) -> Path:
    lines = [PACE_LUA, REPORT_LUA, f"wrk.method = {json.dumps(load.method)}"]
    if load.body:
        lines.append(f"wrk.body = {json.dumps(load.body)}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    for k, v in load.headers.items():
        lines.append(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}")
    path = folder / "load.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(load: Load, meter: CpuMeter | None = None) -> dict[str, Any]:
    """Run wrk once; latency percentiles (ms), req/s, errors, and CPU of wrk and ``meter``."""
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (bench/run does it)")
    with tempfile.TemporaryDirectory(prefix="meshfed-wrk-") as tmp:
        script = _script(load, Path(tmp))
        argv = [
            exe,
            f"-t{load.threads}",
            f"-c{load.connections}",
            f"-d{load.duration}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            load.url,
            "--",
            str(load.rate or 0),
            str(load.threads),
        ]
        quiet = wait_quiet(meter.pids) if meter else (0.0, 0.0)
        boost = NICE if meter and load.rate is not None else 0
        if boost:
            set_nice([*(meter.pids.values() if meter else []), os.getpid()], boost)
            argv = ["nice", "-n", str(boost), *argv]
        if meter:
            meter.start()
        _children_cpu_delta()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=load.duration + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        usage = _children_cpu_delta()  # wrk's own CPU: the only child reaped meanwhile
        cpu = meter.stop() if meter else None
        if boost and meter:
            set_nice([*meter.pids.values(), os.getpid()], 0)
    found = [line for line in out.splitlines() if line.startswith("BENCHJSON ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}\n{err}")
    raw = json.loads(found[-1].removeprefix("BENCHJSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    result: dict[str, Any] = {
        "target_rps": load.rate,
        "connections": load.connections,
        "requests": raw["requests"],
        "rps": raw["requests"] / seconds,
        "errors": errors,
        "error_detail": raw["errors"],
        "mean_ms": raw["mean_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        **{f"p{k.replace('.0', '')}_ms": v / 1000 for k, v in raw["percentiles_us"].items()},
        "wrk_cpu_s": usage,
        "nice": boost,
        "waited_for_quiet_s": quiet[0],
        "other_cores_before": quiet[1],
    }
    if cpu is not None:
        result["cpu_s"] = cpu["cpu_s"]
        result["cpu_ms_per_1000_req"] = {
            n: 1000 * 1000 * s / max(1, raw["requests"]) for n, s in cpu["cpu_s"].items()
        }
        ours = sum(cpu["cpu_s"].values()) + usage
        result["machine_busy_s"] = cpu["machine_busy_s"]
        result["other_cpu_s"] = max(0.0, cpu["machine_busy_s"] - ours)
        """CPU the rest of the machine (other users of the 2 cores) used during the run."""
    return result


_children_seen = [0.0]


def _children_cpu_delta() -> float:
    """CPU seconds of the children reaped since the last call (RUSAGE_CHILDREN accumulates)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = r.ru_utime + r.ru_stime
    delta = total - _children_seen[0]
    _children_seen[0] = total
    return delta


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose p99 is the median of the repetitions (a real run, not a blend)."""
    ordered = sorted(runs, key=lambda r: r["p99_ms"])
    chosen = dict(ordered[len(ordered) // 2])
    for key in ("p50_ms", "p90_ms", "p99_ms", "rps"):
        values = [r[key] for r in runs]
        chosen[f"{key}_all"] = values
        chosen[f"{key}_median"] = statistics.median(values)
    return chosen


# --- a federation on free ports ------------------------------------------------------------------


def free_ingress_ports(text: str) -> str:
    """Spec text with every loopback ingress port moved to a free port."""
    alloc = PortAllocator()
    return re.sub(
        r"ingress: \{address: 127\.0\.0\.1, port: \d+\}",
        lambda _: f"ingress: {{address: 127.0.0.1, port: {alloc.allocate()}}}",
        text,
    )


def bank_spec_text() -> str:
    return free_ingress_ports(example_path("bank").read_text())


def dump_spec(doc: dict[str, Any]) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(doc, Dumper=dumper, sort_keys=False, width=200)


class Federation:
    """``meshfed up`` of a spec in its own state directory; ``close()`` stops everything."""

    def __init__(self, spec_text: str, state: Path) -> None:
        self.state = state
        self.spec = state / "spec.yaml"
        state.mkdir(parents=True, exist_ok=True)
        self.spec.write_text(spec_text)
        self.runtime = Runtime(state)
        self.report: UpReport | None = None

    def up(self, spec_text: str | None = None) -> UpReport:
        if spec_text is not None:
            self.spec.write_text(spec_text)
        ws = open_workspace(self.spec, self.state)
        self.report = self.runtime.up(ws)
        bad = [p.detail for p in self.report.probes if not p.ok]
        if bad:
            raise RuntimeError(f"meshfed up: probes failed: {bad}")
        return self.report

    @property
    def layout(self) -> LocalLayout:
        layout = self.runtime.layout()
        assert layout is not None
        return layout

    def pids(self) -> dict[str, int]:
        return {n: r.pid for n, r in self.runtime.processes().items() if r.alive}

    def close(self) -> None:
        self.runtime.down()
        deadline = time.monotonic() + 10
        left = processes_mentioning(self.runtime.root)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = processes_mentioning(self.runtime.root)
        if left:
            raise RuntimeError(f"processes left behind by meshfed down: {left}")


@contextmanager
def federation(spec_text: str, state: Path) -> Iterator[Federation]:
    fed = Federation(spec_text, state)
    try:
        fed.up()
        yield fed
    finally:
        fed.close()


# --- an extra Envoy (a baseline path built from rendered configuration) --------------------------


def envoy_argv(bootstrap: Path) -> list[str]:
    """The same flags the runtime gives its Envoys."""
    return runtime_envoy_argv(find_envoy(), bootstrap)


@contextmanager
def extra_envoy(bootstrap: dict[str, Any], folder: Path, admin_socket: str) -> Iterator[int]:
    """Start one Envoy from a static bootstrap (admin at unix socket ``admin_socket``); yield
    its pid; stop it (by pid) at the end."""
    from meshfed.local import admin

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bootstrap.json"
    path.write_text(json.dumps(bootstrap, indent=1))
    logf = (folder / "envoy.log").open("wb")
    proc = subprocess.Popen(
        envoy_argv(path), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while not admin.ready(admin_socket):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"baseline Envoy exited: {(folder / 'envoy.log').read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("baseline Envoy not ready after 20 s")
            time.sleep(0.02)
        yield proc.pid
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        logf.close()


def strip_type(res: dict[str, Any]) -> dict[str, Any]:
    """An xDS resource as a static bootstrap entry (no ``@type``)."""
    return {k: v for k, v in res.items() if k != "@type"}


ERROR_STATS = (
    r"(downstream_rq_[45]xx|upstream_rq_[45]xx|upstream_cx_connect_(fail|timeout)"
    r"|upstream_rq_(timeout|retry|retry_success|pending_overflow)|upstream_cx_overflow"
    r"|rq_reset_after_downstream_response_started)$"
)


def error_stats(admin_sockets: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Each Envoy's non-zero error and retry counters: where failed requests came from."""
    from meshfed.local import admin

    out = {}
    for name, sock in admin_sockets.items():
        try:
            got = admin.stats(sock, ERROR_STATS)
        except admin.AdminError as exc:
            out[name] = {"error": str(exc)}
            continue
        out[name] = {k: v for k, v in got.items() if v != "0" and "admin" not in k}
    return out


def admin_sockets(layout: LocalLayout, names: list[str]) -> dict[str, str]:
    """Admin sockets of named processes (``mesh/ingress``, ``mesh/egress``,
    ``mesh/sidecar/ns/w``)."""
    sockets = {}
    for name in names:
        mesh, _, rest = name.partition("/")
        m = layout.meshes[mesh]
        if rest == "ingress":
            sockets[name] = m.ingress_admin
        elif rest == "egress":
            sockets[name] = m.egress_admin
        elif rest.startswith("sidecar/"):
            sockets[name] = m.sidecars[rest.removeprefix("sidecar/")].admin_socket
    return sockets


def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.005) -> float | None:
    t0 = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def envoy_pids_mentioning(path: Path) -> list[int]:
    return processes_mentioning(path)
