"""Private keys on disk are readable by their owner only (PKI state, rendered ``secrets/``)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.model import Location, Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.certs import holds_private_key, is_key_file, state_pem_files


def _key_files(ctx: AuditContext) -> list[tuple[Path, str]]:
    """(path on disk, path as reported)."""
    if ctx.mode == "spec":
        if ctx.state_dir is None:
            return []
        return [(p, str(p)) for p in state_pem_files(ctx.state_dir) if is_key_file(p)]
    if ctx.root is None:
        return []
    base = ctx.root if ctx.root.is_dir() else ctx.root.parent
    found: dict[Path, str] = {}
    for path in ctx.files:
        rel = path.relative_to(base)
        if "secrets" in rel.parts[:-1]:
            found[path] = rel.as_posix()
    for doc in ctx.docs:
        if doc.disk_path is not None and holds_private_key(doc):
            found[doc.disk_path] = doc.file
    if ctx.root.is_dir():
        for path in sorted(ctx.root.rglob("*")):
            if path.is_file() and path.suffix in (".pem", ".key") and "key" in path.name:
                found[path] = path.relative_to(base).as_posix()
    return sorted(found.items())


@check(
    "key-file-permissions",
    title="Key files are private to their owner",
    severity=Severity.CRITICAL,
    why="A CA or gateway private key readable by other users lets them mint identities or "
    "impersonate the gateway; files holding Secrets with keys are just as sensitive.",
    fix="chmod 600 the file (and 700 its directory); rotate the key if others may have read it.",
    controls=("SC-12", "IA-5(2)", "AC-6"),
)
def key_file_permissions(ctx: AuditContext) -> Iterator[Hit]:
    files = _key_files(ctx)
    if not files:
        raise NotAssessed("no key files found")
    for path, shown in files:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077 == 0:
            continue
        who = "others" if mode & 0o007 else "its group"
        yield Hit(
            Severity.CRITICAL if mode & 0o004 else Severity.HIGH,
            f"mode {mode:04o}: accessible by {who}",
            Location(file=shown, detail=path.name),
            fix=f"chmod 600 {shown}",
        )
