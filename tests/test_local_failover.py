"""Failover between exporting meshes, on real Envoy: stop payments' ingress, start it again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from local_helpers import Fed, Loop, cli, poll, spec_copy
from meshfed.local.status import collect_status

pytestmark = pytest.mark.envoy

TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("failover")
    fed = Fed.start(spec_copy("bank", base), base / "state")
    try:
        yield fed
    finally:
        fed.close()


def _current(fed: Fed) -> str | None:
    st = collect_status(fed.runtime)
    return next(i.current for i in st.imports if i.local.startswith("tokenizer."))


def test_failover_to_the_next_exporter_and_back(bank: Fed) -> None:
    loop = Loop(lambda: bank.call("web", "shop/checkout", TOKENIZE, "POST", b"4111", timeout=5))
    loop.start()
    try:
        assert poll(lambda: len(loop.samples) >= 25, timeout=10) is not None
        assert {s.mesh for s in loop.samples} == {"payments"}

        t_stop = time.monotonic()
        result = CliRunner().invoke(
            cli(), ["lab", "stop-gateway", "payments", "--state", str(bank.state)]
        )
        assert result.exit_code == 0, result.output

        def served_by(mesh: str, since: float) -> bool:
            recent = [s for s in loop.samples if s.t >= since][-5:]
            return len(recent) == 5 and all(s.mesh == mesh for s in recent)

        # Within 5 s every call is answered by payments-dr.
        assert poll(lambda: served_by("payments-dr", t_stop), timeout=5) is not None
        t_moved = next(s.t for s in loop.samples if s.t >= t_stop and s.mesh == "payments-dr")
        assert poll(lambda: _current(bank) == "payments-dr", timeout=5) is not None
        # Some steady load on the second exporter.
        n = len(loop.samples)
        assert poll(lambda: len(loop.samples) >= n + 50, timeout=10) is not None

        t_start = time.monotonic()
        result = CliRunner().invoke(
            cli(), ["lab", "start-gateway", "payments", "--state", str(bank.state)]
        )
        assert result.exit_code == 0, result.output
        # Calls move back (bounded by the sidecar's connection lifetime, 2 s, plus health checks).
        assert poll(lambda: served_by("payments", t_start), timeout=10) is not None
        t_back = next(s.t for s in loop.samples if s.t >= t_start and s.mesh == "payments")
        assert poll(lambda: _current(bank) == "payments", timeout=5) is not None
        n = len(loop.samples)
        assert poll(lambda: len(loop.samples) >= n + 25, timeout=10) is not None
        # The load is a few hundred calls whatever the speed of the switches.
        assert poll(lambda: len(loop.samples) >= 200, timeout=20) is not None
    finally:
        samples = loop.stop()

    assert len(samples) >= 200
    failures = [s for s in samples if s.status != 200]
    outside = [
        s for s in failures if not (t_stop <= s.t <= t_moved) and not (t_start <= s.t <= t_back)
    ]
    print(
        f"\nfailover: {len(samples)} calls, {len(failures)} failed; "
        f"switch to payments-dr {1000 * (t_moved - t_stop):.0f} ms after stop, "
        f"back to payments {1000 * (t_back - t_start):.0f} ms after start; failures "
        f"{[(round(1000 * (s.t - t_stop)), s.status) for s in failures]} (ms after stop, status)"
    )
    assert not outside, outside
    # Nothing but the two exporters ever answered.
    assert {s.mesh for s in samples if s.status == 200} == {"payments", "payments-dr"}


def test_status_check_fails_while_a_gateway_is_down(bank: Fed) -> None:
    """``status`` exits 0 whatever it finds (a contract); ``status --check`` exits 3 while
    anything is not healthy and names it, and 0 again once all is well."""
    runner = CliRunner()
    state = ["--state", str(bank.state)]

    def check(*more: str) -> Result:
        return runner.invoke(cli(), ["status", "--check", *state, *more])

    healthy = check()
    assert healthy.exit_code == 0, healthy.output
    assert "not healthy" not in healthy.output
    down = runner.invoke(cli(), ["lab", "stop-gateway", "payments", *state])
    assert down.exit_code == 0, down.output
    try:
        plain = runner.invoke(cli(), ["status", *state])
        assert plain.exit_code == 0 and "not healthy: " in plain.stdout, plain.output
        failed = check()
        assert failed.exit_code == 3, failed.output
        assert "not healthy: payments/ingress: stopped (meshfed up starts it)" in failed.stderr
        # The egress sees the exporter down (its probe every 0.25 s): the import says so too.
        assert poll(lambda: "source payments (" in check().stderr, timeout=5) is not None
        doc = json.loads(check("--json").stdout)
        assert "payments/ingress: stopped (meshfed up starts it)" in doc["problems"]
    finally:
        up = runner.invoke(cli(), ["lab", "start-gateway", "payments", *state])
        assert up.exit_code == 0, up.output
    assert poll(lambda: check().exit_code == 0, timeout=10) is not None
    kube = runner.invoke(cli(), ["status", "--check", "--kube"])
    assert kube.exit_code == 2 and "not with --kube" in kube.output


def test_stop_and_start_gateway_errors(bank: Fed) -> None:
    runner = CliRunner()
    state = ["--state", str(bank.state)]
    again = runner.invoke(cli(), ["lab", "start-gateway", "payments", *state])
    assert again.exit_code == 1 and "already running" in again.output
    unknown = runner.invoke(cli(), ["lab", "stop-gateway", "nowhere", *state])
    assert unknown.exit_code == 1 and "no mesh" in unknown.output
