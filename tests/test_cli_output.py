"""What the commands print stays whole: no table cell cut short with an ellipsis (a narrow
terminal or a pipe cut ports, SNIs and trust domains: ``127.0.0.1:26…``), and output to a pipe
or a file is as wide as ``meshfed audit``'s, not rich's assumed 80 columns. Every option says
in ``--help`` what it does."""

from __future__ import annotations

import io
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from meshfed.cli import common
from meshfed.cli import main as main_module
from meshfed.cli.main import main
from meshfed.examples import example_path


@pytest.mark.parametrize("width", [50, 80])
def test_narrow_tables_fold_instead_of_cutting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    monkeypatch.setattr(main_module.out.console, "width", width)
    spec, state = str(example_path("bank")), str(tmp_path / "state")
    for args in (["pki", "init", spec], ["render", spec, "--out", str(tmp_path / "out")]):
        result = CliRunner().invoke(main, [*args, "--state", state])
        assert result.exit_code == 0, result.output
        assert "…" not in result.output


def test_a_pipe_gets_the_width_of_the_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert common.console().width == common.PIPE_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert common.console().width == 100


def _commands(group: click.Group, ctx: click.Context, path: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"{path} {name}"
        if isinstance(command, click.Group):
            found += _commands(command, click.Context(command, parent=ctx), f"{path} {name}")
        else:
            found.append((f"{path} {name}", command))
    return found


def test_every_option_of_every_command_says_what_it_does() -> None:
    """``--help`` is where a new user looks: an option listed with no words (``-o, --output
    FILE`` alone) leaves them guessing (what it writes, which kubeconfig, what the image is)."""
    silent = [
        f"{path} {'/'.join(option.opts)}"
        for path, command in _commands(main, click.Context(main), "meshfed")
        for option in command.params
        if isinstance(option, click.Option) and option.name != "help" and not option.help
    ]
    assert silent == []
