"""``meshfed trust status`` shows the sequence each local mesh's endpoint serves, so that during
a rotation across organisations the publisher can compare it with the sequence its partner holds
(the partner's ``trust status``). No endpoint, no Envoy: the PKI and the bundle state on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from local_helpers import cli, spec_copy
from meshfed.bundles import document
from meshfed.bundles.model import SpiffeBundle
from meshfed.local.ports import PortAllocator
from test_bundles_format import ca


def _run(base: Path, *args: str) -> Result:
    mp = pytest.MonkeyPatch()
    mp.chdir(base)
    try:
        return CliRunner().invoke(cli(), list(args))
    finally:
        mp.undo()


def _published(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return next(line for line in result.output.splitlines() if line.startswith("publishes "))


def test_status_shows_the_published_sequence_and_a_pending_change(tmp_path: Path) -> None:
    spec = spec_copy("globex", tmp_path)
    (tmp_path / "acme-bundle.json").write_text("{}")  # the partner's bootstrap, unread here
    line = _published(_run(tmp_path, "trust", "status", str(spec)))
    assert "no PKI yet" in line
    # What a partner's first fetch (or the out-of-band bootstrap) gets is numbered 1.
    assert _run(tmp_path, "trust", "bundle", "globex", str(spec)).exit_code == 0
    record = tmp_path / ".meshfed/globex/bundles/published/globex.json"
    kept = record.read_text()
    record.unlink()
    line = _published(_run(tmp_path, "trust", "status", str(spec)))
    assert "nothing served yet; the first fetch gets sequence 1, 1 root(s)" in line
    record.write_text(kept)
    line = _published(_run(tmp_path, "trust", "status", str(spec)))
    assert "https://127.0.0.1:18444/globex (https_spiffe): sequence 1 (since " in line
    assert line.endswith("1 root(s)")
    # A new refresh hint (as a new root beside the old during a rotation) changes the bundle:
    # status says so, and that the next fetch gets 2.
    spec.write_text(spec.read_text().replace("refreshHint: 1m", "refreshHint: 2m"))
    line = _published(_run(tmp_path, "trust", "status", str(spec)))
    assert (
        "sequence 1 served last; its roots or refresh hint changed since: the next fetch gets "
        "sequence 2, 1 root(s)" in line
    )
    # status wrote nothing: the number is given out only when the bundle is served.
    assert _run(tmp_path, "trust", "bundle", "globex", str(spec)).exit_code == 0
    line = _published(_run(tmp_path, "trust", "status", str(spec)))
    assert ": sequence 2 (since " in line and line.endswith("1 root(s)")


def test_a_peers_lines_name_it_once(tmp_path: Path) -> None:
    """Under ``follows globex ...`` (and on ``trust fetch``'s ``globex: refused ...`` line) the
    condition is said without a second ``globex:``: the heading names the peer."""
    port = PortAllocator().allocate()  # nothing listens there: the fetch is refused at once
    spec = spec_copy("acme", tmp_path, lambda t: t.replace("127.0.0.1:18444", f"127.0.0.1:{port}"))
    bundle = SpiffeBundle("globex.example", (ca("globex.example"),), 1, 60)
    (tmp_path / "globex-bundle.json").write_bytes(document.encode(bundle))
    fetched = _run(tmp_path, "trust", "fetch", str(spec))
    assert fetched.exit_code == 1
    [line] = [x for x in fetched.output.splitlines() if x.startswith("globex: refused")]
    assert line.startswith(
        f"globex: refused (no bundle accepted yet): bundle endpoint https://127.0.0.1:{port}/"
        "globex is unreachable (Connection refused)"
    ), line
    status = _run(tmp_path, "trust", "status", str(spec))
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("follows globex (globex.example)"))
    attempt = lines[i + 1]
    assert attempt.startswith("  last attempt ")
    assert ": FAILING: bundle endpoint https://" in attempt
    assert "globex: " not in attempt, attempt
