"""What every command shares: how meshfed's own errors reach the user."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from meshfed.spec.errors import SpecError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_FILE = click.Path(path_type=Path, dir_okay=False)
"""A file an option writes (not a directory)."""


@contextmanager
def reported(*errors: type[Exception], effect: str = "nothing was changed") -> Iterator[None]:
    """Spec problems as plain ``file:line: ...`` lines (never wrapped: editors and CI parse
    them), ``errors`` as one clear line; exit code 1 for both."""
    try:
        yield
    except SpecError as exc:
        for line in exc.lines:
            click.echo(line, err=True)
        click.echo(f"{exc.file}: {len(exc.lines)} problem(s); {effect}", err=True)
        sys.exit(1)
    except errors as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


PIPE_WIDTH = 160
"""Columns of a command's output that goes to a file or a pipe (rich would assume 80): what
``meshfed audit`` writes too."""


def console(stderr: bool = False) -> Console:
    """A command's stdout or stderr: as wide as the terminal; in a pipe or file (CI logs, ``|
    less``) ``PIPE_WIDTH`` columns unless ``COLUMNS`` says otherwise."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty() or "COLUMNS" in os.environ
    return Console(stderr=stderr, highlight=False, width=None if tty else PIPE_WIDTH)


def plain_console(stderr: bool = False) -> Console:
    """rich's Console as it is (its own idea of the width), without highlighting."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


class Output:
    """A module's rich Console, made when it first prints: rich (and the module's tables) load
    only for the commands that print through it, never in ``meshfed controller run``, the
    long-lived process whose every imported module stays in memory."""

    def __init__(self, make: Callable[[], Console]) -> None:
        self._make = make
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = self._make()
        return self._console

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console.print(*objects, **kwargs)


def unclipped(table: Table) -> Table:
    """``table`` with no cell cut short: on a narrow terminal, and in a pipe (rich assumes 80
    columns), rich's default ends a long cell with an ellipsis, which cut ports, SNIs and trust
    domains (``127.0.0.1:26…``); a long cell now continues on the next line instead."""
    for column in table.columns:
        column.overflow = "fold"
    return table


def state_option(func: F) -> F:
    return click.option(
        "--state",
        "state",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="State directory (default ./.meshfed/<federation>/).",
    )(func)


def spec_inputs(func: F) -> F:
    """The federation's spec, both ways every local command takes it: ``[SPEC]`` as an
    argument (as validate, render, apply and rotate take it) and ``--spec SPEC`` (the form
    ``down``, ``logs``, ``call`` and ``lab`` took first); the command gets ``spec`` (one of
    them, or None) through ``the_spec``."""
    func = click.option(
        "--spec",
        "spec_option",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        default=None,
        help="Spec of the federation (the same as the SPEC argument).",
    )(func)
    return click.argument(
        "spec",
        required=False,
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
    )(func)


def the_spec(argument: Path | None, option: Path | None) -> Path | None:
    """SPEC or --spec (the same file if both are given)."""
    if argument is not None and option is not None and argument.resolve() != option.resolve():
        raise click.UsageError(f"SPEC {argument} and --spec {option} name different files")
    return argument if argument is not None else option
