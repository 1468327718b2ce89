"""Write rendered output as a whole directory: all of it, or nothing.

Output goes to a temporary sibling first and is swapped in at the end, so an error never
leaves a half-written directory. meshfed only replaces a directory it created itself (it
holds a marker file), so ``--out`` cannot wipe a user's files by mistake.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from meshfed.render.istio import RenderedMesh
from meshfed.sinks.yaml_out import dump, dump_all

MARKER = ".meshfed-output"


class OutputError(Exception):
    """The output directory cannot be written."""


def write_private(path: Path, data: str | bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte on."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
    os.chmod(path, 0o600)


def _check_target(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise OutputError(
            f"{out} is not empty and was not written by meshfed; choose an empty or new "
            "directory for --out"
        )


def write_tree(out: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` populate a fresh directory, then put it at ``out`` in one step."""
    out = out.resolve()
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(staging)
        (staging / MARKER).write_text("Written by meshfed render; replaced on every render.\n")
        staging.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            old.rmdir()
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_rendered(out: Path, meshes: list[RenderedMesh]) -> None:
    """``out/<mesh>/`` per mesh: manifests and kustomization, and beside them (outside the
    kustomization) the Istio install settings; keys only under ``secrets/``."""

    def fill(root: Path) -> None:
        for rendered in meshes:
            mesh_dir = root / rendered.mesh
            mesh_dir.mkdir()
            for name, docs in {**rendered.files, **rendered.install_files}.items():
                (mesh_dir / name).write_text(dump_all(docs))
            (mesh_dir / "kustomization.yaml").write_text(dump(rendered.kustomization()))
            secrets = mesh_dir / "secrets"
            secrets.mkdir(mode=0o700)
            for name, docs in rendered.secret_files.items():
                write_private(secrets / name, dump_all(docs))

    write_tree(out, fill)
