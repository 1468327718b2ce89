"""Write rendered output as a whole directory: all of it, or nothing.

Output goes to a temporary sibling first and is swapped in at the end, so an error never
leaves a half-written directory. meshfed only writes into a directory it created itself (it
holds the marker file), so ``--out`` cannot wipe a user's files by mistake; and the marker lists
every file meshfed wrote, so a later render replaces exactly those: anything a user added (a
README, a ``base/`` folder) is carried over into the new output and reported as kept.
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


_MANIFEST_HEAD = "# Written by meshfed render. On every render meshfed replaces the files listed\n"
_MANIFEST_HEAD += "# here and keeps every other file (yours).\n"


def _listing(root: Path) -> set[str]:
    """Relative paths of every file and directory under ``root`` (directories end in '/')."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for name in dirnames:
            found.add(f"{(rel / name).as_posix()}/")
        for name in filenames:
            found.add((rel / name).as_posix())
    return found


def _owned(out: Path) -> set[str] | None:
    """What meshfed wrote into ``out`` last time (None: an old marker without the list)."""
    try:
        lines = (out / MARKER).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or not lines[0].startswith("# Written by meshfed"):
        return None  # the marker of an older meshfed: no list
    return {line for line in lines if line and not line.startswith("#")}


def _carry_over(out: Path, staging: Path, owned: set[str], written: set[str]) -> list[str]:
    """Link every file of ``out`` that meshfed did not write into ``staging``; what was kept."""
    kept: list[str] = []
    for dirpath, dirnames, filenames in os.walk(out):
        rel_dir = Path(dirpath).relative_to(out)
        for name in sorted(dirnames):
            rel = f"{(rel_dir / name).as_posix()}/"
            source = Path(dirpath) / name
            if source.is_symlink():
                filenames.append(name)  # a link to a directory: kept as a link, not entered
                continue
            if rel not in owned and rel not in written:
                (staging / rel).mkdir(parents=True, exist_ok=True)
                if not any(source.iterdir()):
                    kept.append(rel)
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if rel == MARKER or rel in owned:
                continue
            if rel in written:
                raise OutputError(
                    f"{out / rel} was not written by meshfed, but this render writes a file of "
                    "that name; move it away (nothing was changed)"
                )
            source, target = Path(dirpath) / name, staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
            else:
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
            kept.append(rel)
    return sorted(kept)


def write_tree(
    out: Path, fill: Callable[[Path], None], formerly: Callable[[str], bool] | None = None
) -> list[str]:
    """Let ``fill`` populate a fresh directory, then put it at ``out`` in one step.

    Files in ``out`` that meshfed did not write are carried over; their paths are returned.
    ``formerly`` names paths an older meshfed wrote that this one no longer does: under an old
    marker (no list) they are taken as meshfed's and not carried over.
    """
    out = out.resolve()
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(staging)
        written = _listing(staging)
        kept: list[str] = []
        if out.exists():
            owned = _owned(out)
            if owned is None:
                owned = written | {p for p in _listing(out) if formerly is not None and formerly(p)}
            kept = _carry_over(out, staging, owned, written)
        (staging / MARKER).write_text(_MANIFEST_HEAD + "".join(f"{p}\n" for p in sorted(written)))
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
    return kept


def write_rendered(out: Path, meshes: list[RenderedMesh]) -> list[str]:
    """``out/<mesh>/`` per mesh: manifests and kustomization, and beside them (outside the
    kustomization) the Istio install settings; keys only under ``secrets/``.

    Returns the files (and empty directories) of ``out`` meshfed did not write, which it kept.
    """

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

    return write_tree(out, fill, formerly=_former_output)


def _former_output(rel: str) -> bool:
    """What meshfed wrote before it moved the Istio install settings out of ``secrets/``."""
    parts = rel.split("/")
    return (
        len(parts) == 3
        and parts[1] == "secrets"
        and parts[2].startswith("istio-operator")
        and parts[2].endswith(".yaml")
    )
