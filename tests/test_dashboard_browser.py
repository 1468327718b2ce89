"""The dashboard in a real headless browser (Debian's chromium, driven by playwright), against a
bank federation on real Envoy: counters, the serving exporter and the boundary log show what the
test did, a spec change is drawn without restarting the dashboard, and nothing is left behind.

``./dev test`` installs chromium with apt-get; nothing here downloads a browser.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from local_helpers import Fed, cli, client_context, poll, spec_copy, tls_request
from meshfed.local import dashboard as launch

pytestmark = pytest.mark.envoy

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DOCS_SHOT = Path(__file__).resolve().parents[1] / "docs" / "dashboard.png"
TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"
CHECKOUT = "spiffe://web.bank.example/ns/shop/sa/checkout"
CATALOG = "spiffe://web.bank.example/ns/shop/sa/catalog"
SNI = "tokenizer.payments.global"
ALLOWED, DENIED = 4, 3
VAULT_GRANT = (
    "    - name: vault\n      mesh: payments\n      workload: cards/vault\n"
    "      consumers:\n        - mesh: web\n          principals: [ns/shop/sa/checkout]\n"
)


def _chromium_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                exe = os.readlink(f"/proc/{entry}/exe")
            except OSError:
                continue
            if "chromium" in Path(exe).name or "chrome" in Path(exe).name:
                pids.add(int(entry))
    return pids


def _counters(text: str) -> tuple[int, int, int]:
    """``5 allowed · 1 denied · 1 TLS failed`` -> (5, 1, 1)."""
    found = re.fullmatch(r"(\d+) allowed · (\d+) denied · (\d+) TLS failed\*?", text.strip())
    assert found, text
    a, d, t = found.groups()
    return int(a), int(d), int(t)


def _wait(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"the dashboard never showed {what} (last: {last!r})")


def test_dashboard_in_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian's chromium is not at /usr/bin/chromium: ./dev test installs it with "
            "apt-get as root (apt-get install chromium); it could not here"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is missing (pip install -e .[dev])"
    )
    before = _chromium_pids()
    spec = spec_copy("bank", tmp_path)
    fed = Fed.start(spec, tmp_path / "state")
    try:
        url = fed.report.dashboard
        assert url is not None and url == launch.url(fed.runtime.paths)
        assert url.startswith("http://127.0.0.1:")
        dashboard_pid = fed.runtime.processes()[launch.DASHBOARD].pid

        # Traffic: allowed and denied calls, and one refused handshake (no client certificate).
        # The first allowed call waits until web's egress routes to payments (on a starved
        # machine it may have failed over to payments-dr for a while); the arrow counts it.
        fed.served_by("payments", "web", "shop/checkout", TOKENIZE, "POST")
        for _ in range(ALLOWED - 1):
            assert fed.call("web", "shop/checkout", TOKENIZE, "POST").status == 200
        for _ in range(DENIED - 1):
            assert fed.call("web", "shop/catalog", TOKENIZE, "POST").status == 403
        assert fed.call("web", "shop/checkout", TOKENIZE, "GET").status == 403  # method
        ctx = client_context(tmp_path / "tls", None, None, fed.root_pem("payments"))
        refused = tls_request(*fed.ingress("payments"), SNI, ctx, SNI, "POST", "/v1/tokenize")
        assert refused.status is None, refused

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 1240})
                problems: list[str] = []
                page.on("pageerror", lambda exc: problems.append(str(exc)))
                page.on(
                    "console",
                    lambda msg: problems.append(msg.text) if msg.type == "error" else None,
                )
                page.goto(url)
                _check_page(page, fed, tmp_path, url)
                _check_spec_change(page, fed, spec)
                assert not problems, problems  # no script error, no CSP violation
            finally:
                browser.close()
        # A re-run of up kept the same dashboard process.
        assert fed.runtime.processes()[launch.DASHBOARD].pid == dashboard_pid
    finally:
        fed.close()  # down, and no process of the runtime (the dashboard included) is left
    left = poll(lambda: not (_chromium_pids() - before), timeout=5)
    assert left is not None, f"chromium processes left: {_chromium_pids() - before}"


def _check_page(page: Any, fed: Fed, tmp_path: Path, url: str) -> None:
    # The three meshes as boxes.
    meshes = page.locator("#graph svg g.mesh")
    assert sorted(meshes.evaluate_all("gs => gs.map(g => g.dataset.mesh)")) == [
        "payments",
        "payments-dr",
        "web",
    ]
    # Arrows with labels: position, export and the allowed principals.
    arrow = page.locator('#graph g.edge[data-from="web"][data-export="payments/tokenizer"]')
    arrow_id = arrow.get_attribute("id")
    label = page.locator(f'#graph g.label[data-edge="{arrow_id}"]')
    texts = label.locator("text").all_text_contents()
    assert texts[:2] == ["1st · tokenizer", "ns/shop/sa/checkout"]
    failover = page.locator('#graph g.edge[data-export="payments-dr/tokenizer"]')
    assert failover.get_attribute("data-order") == "2"
    assert page.locator("#graph g.edges > g.edge").count() == 3

    # Live counters on the web -> payments tokenizer arrow reach what the test did.
    live = label.locator('text.live[data-line="0"]')

    def counted() -> tuple[int, int, int] | None:
        text = live.text_content() or ""
        if "allowed" not in text:
            return None
        allowed, denied, tls = _counters(text)
        return (allowed, denied, tls) if allowed >= ALLOWED and denied >= DENIED and tls else None

    # Exactly what the test did: up's own probes of the import are counted apart.
    allowed, denied, tls = _wait("the counters", counted)
    assert (allowed, denied, tls) == (ALLOWED, DENIED, 1)
    own = page.locator(f'#arrows tr[data-arrow="{arrow_id}"] td.own').text_content()
    assert int(own or 0) >= 1
    assert int(page.locator("#tile-probes .n").text_content() or 0) >= 1
    assert label.locator('text.live[data-line="1"]').text_content() == "● serving now"
    assert "st-serving" in (arrow.get_attribute("class") or "")
    row = page.locator(f'#arrows tr[data-arrow="{arrow_id}"] td.num').all_text_contents()
    assert [int(n) for n in row] == [allowed, denied, tls]
    dr_label = page.locator(f'#graph g.label[data-edge="{failover.get_attribute("id")}"]')
    assert dr_label.locator('text.live[data-line="1"]').text_content().startswith("○ standby")
    assert int(page.locator("#tile-allowed .n").text_content() or 0) >= ALLOWED
    assert int(page.locator("#tile-tls_failures .n").text_content() or 0) >= 1

    # The boundary log: newest first, with the caller's identity and the decision.
    rows = page.locator("#log tbody tr")

    def logged() -> bool:
        texts = rows.all_inner_texts()
        return (
            any(CHECKOUT in t and "allowed 200" in t for t in texts)
            and any(CATALOG in t and "denied 403" in t for t in texts)
            and any("TLS handshake failed" in t and "no client certificate" in t for t in texts)
        )

    _wait("the crossings in the boundary log", logged)
    assert rows.count() <= 50
    times = [t for t in rows.locator("td.when").all_text_contents() if t]
    assert times == sorted(times, reverse=True)
    assert page.locator("#live.on").count() == 1

    page.wait_for_timeout(300)  # let the last bump highlight fade a little
    page.screenshot(path=str(tmp_path / "dashboard-full.png"), full_page=True)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("MESHFED_UPDATE_DOCS") == "1":  # refresh the README picture on request
        shutil.copyfile(shot, DOCS_SHOT)


def _check_spec_change(page: Any, fed: Fed, spec: Path) -> None:
    """A re-run of up with a new grant: the running dashboard draws it (no reload by hand)."""
    text = spec.read_text()
    spec.write_text(text.replace("  imports:\n", VAULT_GRANT + "  imports:\n"))
    runner = CliRunner()
    result = runner.invoke(cli(), ["up", str(spec), "--state", str(fed.state)])
    assert result.exit_code == 0, result.output
    url = launch.url(fed.runtime.paths)
    assert f"dashboard: {url}" in result.output
    assert "started   dashboard" not in result.output  # kept running
    result = runner.invoke(cli(), ["status", "--state", str(fed.state)])
    assert f"dashboard: {url} (pid " in result.output
    grant = page.locator('#graph g.edge.grant[data-export="payments/vault"]')
    _wait("the new grant arrow", lambda: grant.count() == 1)
    grant_id = grant.get_attribute("id")
    line = page.locator(f'#graph g.label[data-edge="{grant_id}"] text.live[data-line="1"]')
    _wait("the grant's state", lambda: line.text_content() == "allowed, not imported")
