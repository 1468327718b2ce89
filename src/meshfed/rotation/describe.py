"""``meshfed rotate status``: a rotation record in words."""

from __future__ import annotations

from meshfed.pki.record import RotationRecord


def fingerprints_short(record: RotationRecord) -> dict[str, dict[str, str]]:
    return {
        g: {k: v[:16] for k, v in record.fingerprints[g].items()}
        for g in ("old", "new")
        if g in record.fingerprints
    }


def describe_record(record: RotationRecord) -> list[str]:
    """Lines for ``meshfed rotate status``."""
    what = f"{record.kind} rotation {record.id}"
    lines = [
        what + (" (aborting)" if record.aborting else ""),
        f"  meshes: {', '.join(record.meshes) or '(root only)'}; root: {record.root}; "
        f"custody: {record.custody}",
        f"  started {record.started}; last change {record.updated}",
        f"  signing: {record.signing}; trusted: {', '.join(record.trusted)}",
    ]
    for step in record.steps:
        if step in record.done:
            mark, when = "done", record.finished_at(step) or ""
        elif step == record.running:
            mark, when = "INTERRUPTED (runs again next time)", record.started_at(step) or ""
        elif step == record.next_step:
            mark, when = "next", ""
        else:
            mark, when = "", ""
        lines.append(f"  {step:15} {mark:9} {when}".rstrip())
    for gen, fps in fingerprints_short(record).items():
        where = record.material.get(gen, "")
        lines.append(
            f"  {gen}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(fps.items()))
            + (f" (STATE/pki/{where})" if where else "")
        )
    failed = [e for e in record.events if e["event"] == "failed"]
    if failed:
        lines.append(f"  last failure ({failed[-1]['step']}): {failed[-1].get('detail', '')}")
    return lines
