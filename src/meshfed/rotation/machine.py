"""The rotation state machine: staged, resumable, abortable (see docs/rotation.md).

Forward steps (pki/record.py ``FORWARD_STEPS``):

    prepare -> trust -> propagate -> verify-overlap -> switch -> reissue -> verify -> retire

Abort (``meshfed rotate abort``), from wherever the rotation stands, undoes only what was done:

    [switch-back -> reissue-back ->] [untrust-new ->] [verify-back ->] discard

Each step is recorded in ``STATE/pki/rotation.json`` when it starts and when it ends; a command
that dies in between leaves ``running`` set, and the next command does that step again (every
step is idempotent). The record's ``signing`` and ``trusted`` are the whole trust state: the
PKI store derives the bundles from them, so ``up`` and ``render`` need no special case.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from meshfed.holds import hold
from meshfed.interrupts import deferred, signal_name, uninterrupted
from meshfed.local.errors import LocalError
from meshfed.local.paths import RuntimePaths
from meshfed.local.summary import load_summary
from meshfed.pki import MeshCA, PKIStore, TrustRequest
from meshfed.pki import rotation as material
from meshfed.pki.certs import issued_by
from meshfed.pki.errors import PKIError
from meshfed.pki.layout import root_label
from meshfed.pki.leaves import ensure_leaf, kept_leaf
from meshfed.pki.record import (
    FORWARD_STEPS,
    Gen,
    Kind,
    RotationRecord,
    gen_dir,
    history,
    write_record,
)
from meshfed.plan.names import INGRESS_GATEWAY
from meshfed.plan.trust import trust_request
from meshfed.rotation.checks import check_bundles, verify_live
from meshfed.rotation.live import LiveFederation
from meshfed.spec.load import load_spec
from meshfed.workspace import Workspace, open_workspace

# Tests: MESHFED_TEST_HOLD=<step> or mid-switch parks the command there (meshfed.holds), so a
# test can kill or signal it at a known point.


class RotationError(Exception):
    """A rotation cannot go on; the message says why and what to do."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem + (f" (fix: {fix})" if fix else ""))


class Waiting(Exception):
    """Split custody: the step waits for signed certificates to be imported."""

    def __init__(self, csrs: list[Path]) -> None:
        self.csrs = csrs
        super().__init__(f"waiting for {len(csrs)} signed certificate(s)")


@dataclass(frozen=True)
class StepResult:
    step: str
    detail: str
    seconds: float


@dataclass
class RunResult:
    record: RotationRecord
    steps: list[StepResult] = field(default_factory=list)
    finished: bool = False
    archived: Path | None = None
    waiting: list[Path] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


def _hold(point: str) -> None:
    """Test hook: park the command at ``point`` (see ``meshfed.holds``)."""
    hold(point)


class Rotator:
    """Rotations of one state directory."""

    def __init__(
        self,
        state_dir: Path,
        spec: Path | None = None,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.store = PKIStore(state_dir)
        self._spec = spec
        self.out = out or (lambda _line: None)

    # --- context

    def spec_path(self, record: RotationRecord | None = None) -> Path:
        """The spec: given, else the one the rotation started with, else the running one's."""
        if self._spec is not None:
            return self._spec
        if record is not None and record.spec:
            return Path(record.spec)
        summary = load_summary(RuntimePaths(self.state_dir))
        if summary is not None:
            return Path(summary.spec)
        from meshfed.local.locate import default_spec

        return default_spec()

    def request(self, record: RotationRecord | None = None) -> TrustRequest:
        return trust_request(load_spec(self.spec_path(record)))

    def workspace(self, record: RotationRecord | None) -> Workspace | None:
        """The spec's workspace (the store's ``ensure`` rewrites bundles from the record);
        None for a root holder's directory, which has no meshes."""
        if self.store.custody() == "root":
            self.store.ensure_roots(self.request(record))
            return None
        return open_workspace(self.spec_path(record), self.state_dir)

    def status(self) -> RotationRecord | None:
        return self.store.rotation()

    def history(self) -> list[RotationRecord]:
        return history(self.store.dir)

    # --- start, run, abort

    def start(self, kind: Kind, mesh: str | None) -> RotationRecord:
        """The rotation under way (if it is this kind), or a new one."""
        record = self.store.rotation()
        if record is not None:
            if record.aborting:
                raise RotationError(
                    f"rotation {record.id} is being aborted", "finish that: meshfed rotate abort"
                )
            if record.kind != kind or (mesh is not None and record.mesh != mesh):
                what = f"{record.kind} rotation" + (f" of {record.mesh}" if record.mesh else "")
                raise RotationError(
                    f"a {what} ({record.id}) is under way",
                    "finish it (run the same meshfed rotate command again) or meshfed rotate abort",
                )
            return record
        # A fresh start needs consistent material: this also creates what is missing.
        self.workspace(None)
        spec = str(self.spec_path().resolve())
        return material.begin(self.store, self.request(), kind, mesh, spec, datetime.now(UTC))

    def run(
        self, record: RotationRecord, until: str | None = None, single: bool = False
    ) -> RunResult:
        """Do the next step (``single``), the steps up to ``until``, or all that remain."""
        if until is not None and until not in record.steps:
            raise RotationError(
                f"{until!r} is not a step of this rotation",
                "steps: " + ", ".join(record.steps),
            )
        result = RunResult(record)
        if until is not None and until in record.done and record.running is None:
            return result
        while True:
            step = record.running or record.next_step
            if step is None:
                break
            try:
                result.steps.append(self._do(record, step))
            except Waiting as exc:
                result.waiting = exc.csrs
                return result
            if not self.store.rotation():
                result.finished = True
                result.archived = self.store.dir / "_rotations" / f"{record.id}.json"
                break
            if single or step == until:
                break
        return result

    def abort(self) -> RunResult:
        record = self.store.rotation()
        if record is None:
            raise RotationError("no rotation is under way")
        if not record.aborting:
            steps: list[str] = []
            # Interrupted mid-switch, the CA files may be half new: move them back first.
            if record.signing == "new" or record.running == "switch":
                steps += ["switch-back", "reissue-back"]
            if "new" in record.trusted:
                steps += ["untrust-new"]
            if steps:
                steps += ["verify-back"]
            steps += ["discard"]
            if record.running is not None:
                record.event(record.running, "abandoned")
                record.running = None
            record.aborting = True
            record.steps = steps
            record.done = []
            record.event("abort", "started")
            write_record(self.store.dir, record)
        return self.run(record)

    # --- one step

    def _do(self, record: RotationRecord, step: str) -> StepResult:
        action = _STEPS[step]
        t0 = time.monotonic()
        record.running = step
        record.event(step, "started")
        write_record(self.store.dir, record)
        try:
            _hold(step)
            detail = action(self, record)
        except KeyboardInterrupt as exc:
            # Ctrl-C, SIGTERM or SIGHUP: the step stays ``running`` and is done again next time
            # (every step is idempotent), as after a command that was killed.
            record.event(step, "interrupted", signal_name(exc))
            uninterrupted(lambda: write_record(self.store.dir, record))
            raise
        except Waiting:
            record.running = None
            record.event(step, "waiting")
            write_record(self.store.dir, record)
            raise
        except Exception as exc:
            if step not in ("switch", "switch-back"):
                record.running = None
            record.event(step, "failed", str(exc))
            write_record(self.store.dir, record)
            if isinstance(exc, RotationError | PKIError | LocalError):
                raise
            raise RotationError(
                f"step {step} failed: {type(exc).__name__}: {exc}",
                "run the same command again to retry it, or meshfed rotate abort",
            ) from exc
        seconds = time.monotonic() - t0
        record.running = None
        record.done.append(step)
        record.event(step, "done", detail)
        if record.next_step is None:
            self.workspace(record)  # the files as they stay (repaired while the record exists)
            outcome = "aborted" if record.aborting else "completed"
            with deferred():  # the record is archived whole or not at all
                material.finish(self.store, record, outcome, datetime.now(UTC))
        else:
            with deferred():
                write_record(self.store.dir, record)
        self.out(f"{step}: {detail} ({seconds:.2f} s)")
        return StepResult(step, detail, seconds)

    # --- forward steps

    def _prepare(self, record: RotationRecord) -> str:
        req = self.request(record)
        prepared = material.prepare(self.store, req, record, datetime.now(UTC))
        if prepared.waiting:
            raise Waiting(prepared.waiting)
        new = record.fingerprints["new"]
        parts = []
        if record.kind == "root":
            parts.append(f"new root {new['root'][:16]}")
        parts += [f"{m} intermediate {new[m][:16]}" for m in record.meshes]
        where = gen_dir(self.store.dir, record, "new")
        return ", ".join(parts) + f" in {where}" if parts else f"in {where}"

    def _trust(self, record: RotationRecord) -> str:
        material.set_trusted(self.store, record, [record.signing, record.other])
        self.workspace(record)  # rewrites root-cert.pem and peers/*.pem from the record
        if record.kind == "intermediate":
            return "same root: trust bundles unchanged (the new intermediate chains to it)"
        trusting = root_label(record.root)
        return f"every bundle trusting {trusting} now carries the old and the new one"

    def _propagate(self, record: RotationRecord) -> str:
        ws = self.workspace(record)
        live = LiveFederation.detect(self.state_dir)
        if ws is None or live is None:
            return "no local federation runs here; meshfed render carries the bundles"
        return live.push(ws.plan).describe()

    def _verify_overlap(self, record: RotationRecord) -> str:
        return self._verify(record, accept=["old", "new"], refuse=[], served=None)

    def _switch(self, record: RotationRecord) -> str:
        self._install(record, "new")
        return self._signing_detail(record, "new")

    def _install(self, record: RotationRecord, gen: Gen) -> None:
        req = self.request(record)
        material.install(self.store, req, record, gen, midway=lambda: _hold("mid-switch"))
        self.workspace(record)  # rewrites cert-chain.pem

    def _signing_detail(self, record: RotationRecord, gen: Gen) -> str:
        fps = record.fingerprints.get(gen, {})
        parts = [f"{m} {fps.get(m, '?')[:16]}" for m in record.meshes]
        if record.kind == "root":
            parts.insert(0, f"root {fps.get('root', '?')[:16]}")
        return f"{gen} CA signs now: " + (", ".join(parts) or "(root only)")

    def _reissue(self, record: RotationRecord) -> str:
        ws = self.workspace(record)
        if ws is None:
            return "no certificates are issued here (root only)"
        cas = {m: ws.pki.meshes[m] for m in record.meshes if m in ws.pki.meshes}
        for m, ca in cas.items():
            mesh = ws.plan.mesh(m)
            ensure_leaf(
                ws.state_dir,
                ca,
                INGRESS_GATEWAY,
                mesh.ingress.spiffe_id,
                ws.plan.gateway_ttl,
                mesh.ingress.dns_names,
            )
        live = LiveFederation.detect(self.state_dir)
        text = f"gateway certificate(s) for render reissued ({len(cas)} mesh(es))"
        if live is None:
            return text + "; no local federation runs here"
        report = live.push(ws.plan, reissue=cas)
        return text + "; " + report.describe()

    def _verify_after(self, record: RotationRecord) -> str:
        return self._verify(record, accept=["old", "new"], refuse=[], served="new")

    def _retire(self, record: RotationRecord) -> str:
        material.set_trusted(self.store, record, ["new"])
        ws = self.workspace(record)
        live = LiveFederation.detect(self.state_dir)
        pushed = live.push(ws.plan).describe() if ws is not None and live is not None else ""
        refuse = ["old"] if record.kind == "root" else []
        checked = self._verify(record, accept=["new"], refuse=refuse, served="new")
        removed = material.destroy_keys(self.store, record, "old")
        parts = [p for p in (pushed, checked) if p]
        parts.append(f"{len(removed)} old key(s) destroyed")
        return "; ".join(parts)

    # --- abort steps

    def _switch_back(self, record: RotationRecord) -> str:
        self._install(record, "old")
        return self._signing_detail(record, "old")

    def _reissue_back(self, record: RotationRecord) -> str:
        return self._reissue(record)

    def _untrust_new(self, record: RotationRecord) -> str:
        material.set_trusted(self.store, record, ["old"])
        ws = self.workspace(record)
        live = LiveFederation.detect(self.state_dir)
        if ws is None or live is None:
            return "new anchor removed from the bundles"
        return "new anchor removed; " + live.push(ws.plan).describe()

    def _verify_back(self, record: RotationRecord) -> str:
        has_new = "new" in record.fingerprints
        refuse = ["new"] if record.kind == "root" and has_new else []
        served = "old" if "reissue-back" in record.steps else None
        return self._verify(record, accept=["old"], refuse=refuse, served=served)

    def _discard(self, record: RotationRecord) -> str:
        removed = material.destroy_keys(self.store, record, "new")
        return f"{len(removed)} new key(s) destroyed"

    # --- verification

    def _generation_cas(
        self, record: RotationRecord, req: TrustRequest, gens: list[str]
    ) -> dict[str, dict[str, MeshCA]]:
        out: dict[str, dict[str, MeshCA]] = {}
        for gen in gens:
            if gen not in record.fingerprints:
                continue
            g = cast(Gen, gen)
            try:
                out[gen] = {
                    m: material.generation_ca(self.store, req, record, g, m) for m in record.meshes
                }
            except PKIError:
                continue  # its keys are destroyed already (a retire or discard done again)
        return out

    def _verify(
        self,
        record: RotationRecord,
        accept: list[str],
        refuse: list[str],
        served: str | None,
    ) -> str:
        ws = self.workspace(record)
        if ws is None:
            return "root only: nothing is served from here"
        req = self.request(record)
        cas = self._generation_cas(record, req, accept + refuse)
        now = datetime.now(UTC)
        problems: list[str] = []
        chains = check_bundles(ws.plan, ws.pki, record, cas, accept, refuse, now, problems)
        parts = [f"{chains} chain checks against the plan's bundles"]
        if served is not None and served in cas:
            for m, ca in cas[served].items():
                leaf = kept_leaf(ws.state_dir, m, INGRESS_GATEWAY)
                if leaf is not None and not issued_by(leaf, ca.ca_cert):
                    problems.append(f"{m}'s kept gateway certificate is not from the {served} CA")
        live = LiveFederation.detect(self.state_dir)
        if live is not None:
            shakes, sds = verify_live(live, ws, record, cas, accept, refuse, served, now, problems)
            probes = live.probes(ws.plan)
            for p in probes:
                if not p.ok:
                    problems.append(f"probe {p.probe.mesh} {p.probe.key}: {p.detail}")
            parts.insert(0, f"{shakes} real handshakes")
            parts.append(f"{sds} checks of the Envoys' SDS bundles")
            parts.append(f"{len(probes)} end-to-end probes")
            if served is not None:
                parts.append(f"every certificate served for {', '.join(record.meshes)} is from "
                             f"the {served} CA")  # fmt: skip
        if problems:
            shown = "; ".join(problems[:5])
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise RotationError(
                f"verification failed: {shown}{more}",
                "see meshfed logs --boundary; run the same command again to retry, or "
                "meshfed rotate abort",
            )
        return "ok: " + ", ".join(parts)


_STEPS: dict[str, Callable[[Rotator, RotationRecord], str]] = {
    "prepare": Rotator._prepare,
    "trust": Rotator._trust,
    "propagate": Rotator._propagate,
    "verify-overlap": Rotator._verify_overlap,
    "switch": Rotator._switch,
    "reissue": Rotator._reissue,
    "verify": Rotator._verify_after,
    "retire": Rotator._retire,
    "switch-back": Rotator._switch_back,
    "reissue-back": Rotator._reissue_back,
    "untrust-new": Rotator._untrust_new,
    "verify-back": Rotator._verify_back,
    "discard": Rotator._discard,
}
assert set(FORWARD_STEPS) <= set(_STEPS)
