"""``meshfed rotate ...`` and ``meshfed pki request / sign / import / init-root``.

Wired into the main group with ``register(main)``. Exit codes: 0 done, 1 error, 3 waiting for a
signed certificate to be imported (split custody).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from meshfed.cli.common import reported
from meshfed.interrupts import exit_code, signal_name
from meshfed.local.errors import LocalError
from meshfed.local.locate import locate_state
from meshfed.pki import PKIStore
from meshfed.pki.errors import PKIError
from meshfed.pki.files import read_input
from meshfed.pki.layout import root_label
from meshfed.pki.record import FORWARD_STEPS, STEP_HELP, RotationRecord
from meshfed.pki.signing import (
    bundle_pem,
    import_certificate,
    request_intermediate,
    sign_request,
)
from meshfed.plan.trust import trust_request
from meshfed.rotation.describe import describe_record
from meshfed.rotation.machine import RotationError, Rotator, RunResult
from meshfed.spec.duration import parse_duration
from meshfed.spec.load import load_spec
from meshfed.workspace import default_state_dir

F = TypeVar("F", bound=Callable[..., Any])

EXIT_WAITING = 3


def _state_option(func: F) -> F:
    return click.option(
        "--state",
        "state",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="State directory (default: the SPEC's, or the running local federation's).",
    )(func)


_SPEC_ARG = click.argument(
    "spec", required=False, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)


def _steps_options(func: F) -> F:
    func = click.option(
        "--next",
        "single",
        is_flag=True,
        help="Run only the next step.",
    )(func)
    return click.option(
        "--step",
        "until",
        type=click.Choice(FORWARD_STEPS),
        default=None,
        help="Run the steps up to and including this one (default: all that remain).",
    )(func)


def _rotator(spec: Path | None, state: Path | None) -> Rotator:
    return Rotator(locate_state(spec, state), spec, out=click.echo)


def _print_result(result: RunResult) -> None:
    record = result.record
    if result.waiting:
        _say("waiting for signed certificate(s); give each CSR to the root holder:")
        for csr in result.waiting:
            _say(f"  {csr}")
        _say(
            "  meshfed pki sign CSR --state ROOTDIR -o CERT   (where the root is kept"
            + (", after meshfed rotate root --state ROOTDIR" if record.kind == "root" else "")
            + ")\n  meshfed pki import CERT --state DIR            (here)\n"
            "then run this command again."
        )
        sys.exit(EXIT_WAITING)
    if result.finished:
        _say(
            f"rotation {record.id} {record.outcome} in {result.seconds:.2f} s of steps "
            f"(record: {result.archived})"
        )
        return
    nxt = record.next_step
    _say(
        f"rotation {record.id}: {len(record.done)}/{len(record.steps)} steps done"
        + (f"; next: {nxt} ({STEP_HELP.get(nxt, '')})" if nxt else "")
    )


def _rotate(kind: str, mesh: str | None, spec: Path | None, state: Path | None,
            until: str | None, single: bool) -> None:  # fmt: skip
    rotator: Rotator | None = None
    try:
        with reported(PKIError, LocalError, RotationError):
            if until is not None and single:
                raise RotationError("--step and --next exclude each other")
            rotator = _rotator(spec, state)
            record = rotator.start(kind, mesh)  # type: ignore[arg-type]
            if record.done or record.running:
                _say(f"resuming {record.kind} rotation {record.id}")
            else:
                _say(f"started {record.kind} rotation {record.id}")
            result = rotator.run(record, until=until, single=single)
    except KeyboardInterrupt as exc:
        _interrupted(rotator, exc, "the same meshfed rotate command")
    _print_result(result)


def _interrupted(rotator: Rotator | None, exc: KeyboardInterrupt, again: str) -> NoReturn:
    """A stop signal during a rotation command: where the rotation stands, and how to go on."""
    record = rotator.status() if rotator is not None else None
    sig = signal_name(exc)
    if record is None:
        click.echo(f"interrupted ({sig}): no rotation is under way", err=True)
    else:
        where = f"during step {record.running}" if record.running else "between two steps"
        click.echo(
            f"interrupted ({sig}) {where} of {record.kind} rotation {record.id}: run {again} "
            "again to go on (an interrupted step is done again), or meshfed rotate abort; "
            "meshfed rotate status shows where it stands",
            err=True,
        )
    sys.exit(exit_code(exc))


def register(main: click.Group) -> None:
    @main.group()
    def rotate() -> None:
        """Rotate intermediates and roots under live traffic, in staged, resumable steps.

        \b
        Steps: prepare, trust, propagate, verify-overlap, switch, reissue, verify, retire.
        Run again to resume an interrupted rotation; meshfed rotate abort rolls it back.
        """

    @rotate.command("intermediate")
    @click.option("--mesh", required=True, help="The mesh whose intermediate CA is replaced.")
    @_SPEC_ARG
    @_state_option
    @_steps_options
    def rotate_intermediate(
        mesh: str, spec: Path | None, state: Path | None, until: str | None, single: bool
    ) -> None:
        """Replace a mesh's intermediate CA (same root): new CA, reissue, retire the old."""
        _rotate("intermediate", mesh, spec, state, until, single)

    @rotate.command("root")
    @click.option("--mesh", default=None, help="Federated: the mesh whose root is replaced.")
    @_SPEC_ARG
    @_state_option
    @_steps_options
    def rotate_root(
        mesh: str | None, spec: Path | None, state: Path | None, until: str | None, single: bool
    ) -> None:
        """Replace a root: both roots trusted, new intermediates sign, the old root leaves."""
        _rotate("root", mesh, spec, state, until, single)

    @rotate.command("status")
    @_SPEC_ARG
    @_state_option
    def rotate_status(spec: Path | None, state: Path | None) -> None:
        """Where the rotation under way stands (and the last finished ones)."""
        with reported(PKIError, LocalError, RotationError):
            rotator = _rotator(spec, state)
            record = rotator.status()
            past = rotator.history()
        if record is None:
            _say("no rotation under way")
        else:
            for line in describe_record(record):
                _say(line)
        for old in past[-5:]:
            _say(_history_line(old))

    @rotate.command("abort")
    @_SPEC_ARG
    @_state_option
    def rotate_abort(spec: Path | None, state: Path | None) -> None:
        """Roll the rotation under way back: old CA signs, new anchor removed, new keys gone."""
        rotator: Rotator | None = None
        try:
            with reported(PKIError, LocalError, RotationError):
                rotator = _rotator(spec, state)
                result = rotator.abort()
        except KeyboardInterrupt as exc:
            _interrupted(rotator, exc, "meshfed rotate abort")
        _print_result(result)

    pki = main.commands.get("pki")
    if not isinstance(pki, click.Group):
        raise RuntimeError("meshfed's pki group is missing")

    @pki.command("request")
    @click.option("--mesh", required=True, help="The mesh whose intermediate key is made.")
    @_SPEC_ARG
    @click.option(
        "--state",
        "state",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Where the mesh is administered: its key is made (0600) and stays here.",
    )
    @click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
                  help="Also copy the CSR here (for the root holder).")  # fmt: skip
    def pki_request(mesh: str, spec: Path | None, state: Path | None, output: Path | None) -> None:
        """Split custody: make MESH's intermediate key and a CSR for the root holder."""
        with reported(PKIError, LocalError, RotationError):
            spec_path = spec or _default_spec()
            fed = load_spec(spec_path)
            store = PKIStore(state or default_state_dir(fed))
            csr = request_intermediate(store, trust_request(fed), mesh, datetime.now(UTC))
            if output is not None:
                output.write_bytes(csr.read_bytes())
        _say(f"CSR for mesh {mesh}: {csr}" + (f" (copied to {output})" if output else ""))
        _say(f"its key stays in {csr.parent} (0600)")

    @pki.command("sign")
    @click.argument("csr", type=click.Path(path_type=Path, dir_okay=False, exists=True))
    @click.option(
        "--state",
        "state",
        type=click.Path(path_type=Path, file_okay=False, exists=True),
        required=True,
        help="The root holder's state directory (holds the root key).",
    )
    @click.option("--mesh", default=None, help="The mesh the CSR must be for (else: by domain).")
    @click.option("--ttl", default="8760h", show_default=True, help="Intermediate lifetime.")
    @click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Where to write the certificate and root (default: the CSR's name, .crt).",
    )
    def pki_sign(csr: Path, state: Path, mesh: str | None, ttl: str, output: Path | None) -> None:
        """Check an intermediate CSR and sign it with the root kept in --state."""
        with reported(PKIError, LocalError, RotationError):
            try:
                lifetime = parse_duration(ttl)
            except ValueError as exc:
                raise PKIError("--ttl", str(exc)) from None
            cert, root = sign_request(
                PKIStore(state), read_input(csr, "CSR"), str(csr), lifetime, datetime.now(UTC), mesh
            )
            target = output or csr.with_suffix(".crt")
            target.write_bytes(bundle_pem(cert, root))
        _say(f"signed: {cert.subject.rfc4514_string()} -> {target}")

    @pki.command("import")
    @click.argument("cert", type=click.Path(path_type=Path, dir_okay=False, exists=True))
    @click.option(
        "--state",
        "state",
        type=click.Path(path_type=Path, file_okay=False),
        required=True,
        help="The state directory where the request was made.",
    )
    def pki_import(cert: Path, state: Path) -> None:
        """Install a signed intermediate beside its key (or as a rotation's new one)."""
        with reported(PKIError, LocalError, RotationError):
            imported = import_certificate(
                PKIStore(state),
                read_input(cert, "signed certificate"),
                str(cert),
                datetime.now(UTC),
            )
        where = f"rotation {imported.rotation}" if imported.rotation else "the mesh's CA"
        _say(f"imported {imported.mesh} intermediate as {where}: {imported.cert_path}")
        if imported.rotation:
            _say("run the meshfed rotate command again to go on")

    @pki.command("init-root")
    @_SPEC_ARG
    @click.option("--state", "state", type=click.Path(path_type=Path, file_okay=False),
                  required=True, help="The root holder's directory.")  # fmt: skip
    def pki_init_root(spec: Path | None, state: Path) -> None:
        """Split custody: create (or check) only the root CA(s), kept by the root holder."""
        with reported(PKIError, LocalError, RotationError):
            fed = load_spec(spec or _default_spec())
            material = PKIStore(state).ensure_roots(trust_request(fed))
        for name, root in sorted(material.roots.items()):
            _say(f"{root_label(name)}: {root.subject.rfc4514_string()} in {state}")


def _say(text: str) -> None:
    click.echo(text)


def _default_spec() -> Path:
    from meshfed.local.locate import default_spec

    return default_spec()


def _history_line(record: RotationRecord) -> str:
    return f"past: {record.kind} rotation {record.id}: {record.outcome} at {record.finished}"
