"""The local commands' conventions, without Envoy: every command names its federation the same
way (``[SPEC]`` or ``--spec SPEC``, or ``--state DIR``), the error for several federations
suggests a form every command accepts, and ``call`` to a host the mesh does not import says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from local_helpers import TEST_ADMIN, cli, spec_copy
from meshfed.local.errors import LocalError
from meshfed.local.files import write_json
from meshfed.local.layout import allocate_layout, layout_to_json
from meshfed.local.locate import locate_state
from meshfed.local.paths import RuntimePaths
from meshfed.local.summary import save_summary, summarize
from meshfed.workspace import open_workspace

TOKENIZE = "http://tokenizer.shop.svc.cluster.local/v1/tokenize"


def _runtime_dir(spec: Path) -> Path:
    """The state directory ``up SPEC`` would use, as it leaves it (no process runs)."""
    ws = open_workspace(spec, None)
    paths = RuntimePaths(ws.state_dir.resolve())
    paths.ensure()
    layout, _ = allocate_layout(ws.plan, None, set(), TEST_ADMIN)
    write_json(paths.layout, layout_to_json(layout))
    processes = ws.envoy(layout, paths.root)
    save_summary(paths, summarize(ws.plan, spec.resolve(), processes))
    paths.processes.write_text('{"version": 1, "processes": {}}\n')
    return ws.state_dir


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """Two federations' state under ``<base>/.meshfed`` (bank and partners)."""
    base = tmp_path_factory.mktemp("two-feds")
    mp = pytest.MonkeyPatch()
    mp.chdir(base)
    try:
        bank = spec_copy("bank", base)
        partners = spec_copy("partners", base)
        _runtime_dir(bank)
        _runtime_dir(partners)
        yield base, bank, partners
    finally:
        mp.undo()


def _run(base: Path, *args: str) -> Result:
    mp = pytest.MonkeyPatch()
    mp.chdir(base)
    try:
        return CliRunner().invoke(cli(), list(args))
    finally:
        mp.undo()


def test_several_federations_name_each_with_its_spec(two: tuple[Path, Path, Path]) -> None:
    base, bank, partners = two
    with pytest.raises(LocalError) as caught:
        locate_state(None, None, base)
    text = str(caught.value)
    assert "several local federations" in text
    assert f"(spec {bank.resolve()})" in text and f"(spec {partners.resolve()})" in text
    assert "its SPEC (as an argument or --spec SPEC" in text
    result = _run(base, "down")
    assert result.exit_code == 1 and "several local federations" in result.output


COMMANDS = [
    (("status",), "local federation bank"),
    (("down",), "nothing was running"),
    (("logs", "--boundary"), ""),
    (("call", "--mesh", "web", "--as", "shop/checkout", TOKENIZE), "shop/checkout is not running"),
    (("lab", "stop-gateway", "payments"), "ingress gateway of payments is not running"),
    (("lab", "start-gateway", "payments"), "no configuration for payments/ingress"),
]
"""Every local command but up (which needs Envoy), and what it answers for the bank federation
(nothing of it runs): each must accept SPEC both ways."""


@pytest.mark.parametrize("form", ["argument", "option"])
@pytest.mark.parametrize(
    ("command", "answer"), COMMANDS, ids=[" ".join(c[:2]) for c, _ in COMMANDS]
)
def test_every_command_takes_the_spec_both_ways(
    two: tuple[Path, Path, Path], command: tuple[str, ...], answer: str, form: str
) -> None:
    base, bank, _ = two
    spec = [str(bank)] if form == "argument" else ["--spec", str(bank)]
    result = _run(base, *command, *spec)
    # The command reached the bank federation: not a usage error, not "several".
    assert result.exit_code != 2, result.output
    assert answer in result.output, result.output


def test_spec_argument_and_option_must_agree(two: tuple[Path, Path, Path]) -> None:
    base, bank, partners = two
    result = _run(base, "status", str(bank), "--spec", str(partners))
    assert result.exit_code == 2
    assert "name different files" in result.output
    assert _run(base, "status", str(bank), "--spec", str(bank)).exit_code == 0


def test_call_to_a_host_the_mesh_does_not_import_lists_its_imports(
    two: tuple[Path, Path, Path],
) -> None:
    base, bank, _ = two
    result = _run(
        base, "call", "--mesh", "web", "--as", "shop/checkout", "http://vault.example/x", str(bank)
    )
    assert result.exit_code == 1, result.output
    assert "vault.example is not an import of mesh web" in result.output
    assert "http://tokenizer.shop.svc.cluster.local (HTTP)" in result.output
    assert "tcp://ledger.shop.svc.cluster.local:9000 (TCP)" in result.output
    # A TCP import called over HTTP, and an HTTP import on the wrong scheme, are no imports.
    result = _run(
        base, "call", "--mesh", "web", "--as", "shop/checkout",
        "http://ledger.shop.svc.cluster.local:9000/", str(bank),
    )  # fmt: skip
    assert "is not an import of mesh web" in result.output
    # A mesh that imports nothing says so; the mesh that imports the host is named.
    result = _run(
        base, "call", "--mesh", "payments", "--as", "cards/tokenizer", TOKENIZE, str(bank)
    )
    assert "mesh payments imports nothing" in result.output, result.output
    assert "is an import of mesh web (--mesh)" in result.output


def test_call_as_takes_the_workload_name_up_names_its_probes_by(
    two: tuple[Path, Path, Path],
) -> None:
    """``up`` reports a failed probe as ``GET / as billing/charge-svc-v2`` (the workload, as the
    spec names it); ``call --as`` that name reaches the same sidecar as its service account."""
    base, _, partners = two
    url = "http://payments.checkout.svc.cluster.local/"
    by_sa = _run(base, "call", "--mesh", "globex", "--as", "billing/charge", url, str(partners))
    by_name = _run(
        base, "call", "--mesh", "globex", "--as", "billing/charge-svc-v2", url, str(partners)
    )
    assert "has no workload" not in by_name.output, by_name.output
    assert by_name.exit_code == by_sa.exit_code and by_name.output == by_sa.output
    wrong = _run(base, "call", "--mesh", "globex", "--as", "billing/nobody", url, str(partners))
    assert wrong.exit_code == 1
    assert "has no workload" in wrong.output and "billing/charge" in wrong.output
