"""Rotation tests that start a federation of their own: the renewal of short-lived workload
certificates, and a Federated root rotation. Apart from ``test_rotation_local.py``, whose bank
federation runs for its whole module: the suite never runs two federations at once, so it
needs no more inotify instances than one federation's (see ``inotify_budget.py``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from local_helpers import Fed, Loop, poll, spec_copy
from meshfed.rotation.live import handshake, handshake_targets
from meshfed.rotation.machine import Rotator
from meshfed.workspace import open_workspace
from test_rotation_local import Load, _ingress_target

pytestmark = pytest.mark.envoy


def test_certificates_renewed_before_a_short_workload_ttl_runs_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_copy("bank", tmp_path, lambda t: t.replace("workloadTTL: 24h", "workloadTTL: 12s"))
    fed = Fed.start(spec, tmp_path / "state")
    try:
        target = _ingress_target(fed, "payments", "web")
        inbound = next(
            t
            for t in handshake_targets(fed.ws.plan, fed.runtime.layout())  # type: ignore[arg-type]
            if t.process == "payments/sidecar/cards/tokenizer"
        )
        serials: dict[str, list[int]] = {target.process: [], inbound.process: []}

        def served_changed_twice() -> bool:
            for t in (target, inbound):
                ca = fed.ws.pki.meshes[t.client_mesh]
                result = handshake(t, ca)
                assert result.accepted and result.served is not None, result.detail
                seen = serials[t.process]
                if not seen or seen[-1] != result.served.serial_number:
                    seen.append(result.served.serial_number)
                    lifetime = (
                        result.served.not_valid_after_utc - result.served.not_valid_before_utc
                    )
                    assert lifetime.total_seconds() <= 12 + 5 * 60  # 12 s, backdated 5 min
            return all(len(s) >= 3 for s in serials.values())

        t0 = time.monotonic()
        with Load(fed) as load:
            # Two renewals each: certificates live 12 s, are renewed after 8 s; bounded wait.
            assert poll(served_changed_twice, 40, interval=0.25) is not None, serials
        elapsed = time.monotonic() - t0
        assert load.failures() == [], load.failures()[:10]
        assert "renewed payments/ingress" in (fed.state / "local/logs/workloads.log").read_text()
        with capsys.disabled():
            print(
                f"\n[renewal] workloadTTL 12s: served certificates changed "
                f"{len(serials[target.process]) - 1}x in {elapsed:.1f} s; {load.samples} "
                f"requests, {len(load.failures())} failed"
            )
    finally:
        fed.close()


def test_federated_root_rotation_under_load(tmp_path: Path) -> None:
    fed = Fed.start(spec_copy("partners", tmp_path), tmp_path / "state")
    try:
        calls = [
            ("http://payments.checkout.svc.cluster.local/charges", "POST"),
            ("http://shipping.orders.svc.cluster.local/", "GET"),
        ]
        assert {url.split("/")[2] for url, _ in calls} == {
            i.local_host for i in fed.ws.plan.mesh("acme").imports
        }
        loops = [
            Loop(lambda u=url, m=method: fed.call("acme", "checkout/storefront", u, m, timeout=5))
            for url, method in calls
        ]
        old_acme = fed.ws.pki.meshes["acme"]
        for loop in loops:
            loop.start()
        try:
            rotator = Rotator(fed.state, fed.spec)
            assert rotator.run(rotator.start("root", "acme")).finished
        finally:
            for loop in loops:
                loop.stop()
        failures = [s for loop in loops for s in loop.failures()]
        assert failures == [] and all(loop.samples for loop in loops)
        # globex admits acme's callers: the retired acme root is refused there now.
        target = _ingress_target(fed, "globex", "acme")
        assert not handshake(target, old_acme).accepted
        new_acme = open_workspace(fed.spec, fed.state).pki.meshes["acme"]
        assert handshake(target, new_acme).accepted
    finally:
        fed.close()
