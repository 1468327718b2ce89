"""Which spec ``up`` runs by default, and which running federation the other commands mean."""

from __future__ import annotations

from pathlib import Path

from meshfed.examples import example_path
from meshfed.local.errors import LocalError
from meshfed.local.paths import RuntimePaths
from meshfed.local.summary import load_summary
from meshfed.spec.load import load_spec
from meshfed.workspace import default_state_dir


def default_spec() -> Path:
    """The bank example shipped with meshfed."""
    path = example_path("bank")
    if not path.is_file():
        raise LocalError(f"the bundled example {path} is missing", "pass a SPEC")
    return path


def locate_state(spec: Path | None, state: Path | None, base: Path | None = None) -> Path:
    """The state directory of the federation a command means.

    ``--state`` wins; else the SPEC's default state directory; else the one local federation
    under ``./.meshfed/`` (an error if there are none or several).
    """
    if state is not None:
        return state
    if spec is not None:
        return default_state_dir(load_spec(spec))
    root = (base or Path.cwd()) / ".meshfed"
    found = sorted(p.parent.parent for p in root.glob("*/local/runtime.json") if p.is_file())
    running = [p for p in found if RuntimePaths(p).processes.is_file()]
    candidates = running or found
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise LocalError(
            f"no local federation under {root}",
            "start one with meshfed up [SPEC], or pass --state DIR",
        )
    names = ", ".join(_described(p) for p in candidates)
    raise LocalError(
        f"several local federations: {names}",
        "name one: its SPEC (as an argument or --spec SPEC, the same for every command), or "
        "--state DIR",
    )


def _described(state_dir: Path) -> str:
    """``DIR`` and, when the last ``up`` recorded it, ``(spec FILE)``."""
    summary = load_summary(RuntimePaths(state_dir))
    return f"{state_dir} (spec {summary.spec})" if summary is not None else str(state_dir)
