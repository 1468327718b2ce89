"""What every command shares: how meshfed's own errors reach the user."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from meshfed.spec.errors import SpecError


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
