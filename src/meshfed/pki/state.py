"""``STATE/pki/state.json``: what the state directory was made for, and the fingerprint of every
CA it holds, so a CA is never silently replaced.

The record names the federation, trust mode and key algorithm (a spec that says otherwise is
refused), each mesh's trust domain and root, and the custody (``local``, ``split`` or ``root``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509

from meshfed.pki.certs import fingerprint
from meshfed.pki.errors import PKIError
from meshfed.pki.files import CERT_MODE, read_bytes, write_atomic
from meshfed.pki.layout import SHARED_ROOT_NAME, PKILayout, is_new
from meshfed.pki.material import TrustRequest
from meshfed.pki.record import REQUESTS_DIR, Custody

STATE_VERSION = 1

State = dict[str, Any]


def recorded_custody(layout: PKILayout) -> Custody:
    """The custody recorded in ``state.json`` (``local`` if there is none yet)."""
    try:
        state = json.loads(read_bytes(layout.state_file))
    except (OSError, ValueError, UnicodeDecodeError):
        return "local"
    custody = state.get("custody", "local") if isinstance(state, dict) else "local"
    if custody == "split":
        return "split"
    return "root" if custody == "root" else "local"


def read_state(layout: PKILayout, req: TrustRequest, *, must_exist: bool) -> State | None:
    """The record, checked against ``req``; None when there is none yet (and may be none)."""
    path = layout.state_file
    if not path.exists():
        leftovers = sorted(p.name for p in layout.dir.iterdir() if not p.name.startswith("."))
        if leftovers == [REQUESTS_DIR] and not must_exist:
            pending = sorted(p.name for p in (layout.dir / REQUESTS_DIR).iterdir())
            raise PKIError(
                layout.dir / REQUESTS_DIR,
                "holds intermediate request(s) for mesh(es) "
                f"{', '.join(pending) or '(none)'} but no CA has been imported yet "
                "(split custody)",
                "have the root holder sign each CSR (meshfed pki sign), then "
                "meshfed pki import CERT",
            )
        if must_exist or leftovers:
            raise PKIError(
                path,
                "is missing" + (f" but {', '.join(leftovers)} exist(s)" if leftovers else ""),
                f"restore it, or remove {layout.dir} to start over",
            )
        return None
    try:
        state = json.loads(read_bytes(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PKIError(path, f"is not valid JSON ({exc})", layout.restore_fix()) from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise PKIError(
            path,
            f"is not a meshfed PKI state file (version {STATE_VERSION})",
            layout.restore_fix(),
        )
    if state.get("custody", "local") not in ("local", "split", "root"):
        raise PKIError(path, f"unknown custody {state.get('custody')!r}", layout.restore_fix())
    fix = f"use the original setting in the spec, or remove {layout.dir} to start over"
    for key, want, what in (
        ("federation", req.federation, "federation name"),
        ("mode", req.mode, "trust mode"),
        ("key_algorithm", req.key_algorithm, "key algorithm"),
    ):
        if state.get(key) != want:
            raise PKIError(
                path, f"{what} is {state.get(key)!r} on disk, the spec says {want!r}", fix
            )
    for m in req.meshes:
        rec = state.get("meshes", {}).get(m.mesh)
        if (
            rec is not None
            and rec.get("trust_domain") != m.trust_domain
            and not is_new(layout.mesh_dir(m.mesh))
        ):
            raise PKIError(
                path,
                f"mesh {m.mesh} has trust domain {rec.get('trust_domain')!r} on disk, the "
                f"spec says {m.trust_domain!r} (trust domain changed?)",
                f"restore the trust domain in the spec, or remove "
                f"{layout.mesh_dir(m.mesh)} to issue a new CA for mesh {m.mesh} "
                "(its workloads get new identities)",
            )
    return state


def check_custody(layout: PKILayout, state: State | None, allowed: tuple[str, ...]) -> None:
    """PKIError unless the directory's custody is one of ``allowed``."""
    custody = (state or {}).get("custody", "local")
    if custody in allowed:
        return
    path = layout.state_file
    if custody == "root":
        raise PKIError(
            path,
            "this directory holds only the root CA (split custody, the root holder's side)",
            "sign intermediate CSRs here (meshfed pki sign CSR --state DIR); render and up "
            "run where the meshes' intermediates are",
        )
    raise PKIError(
        path,
        f"this directory holds meshes' CAs (custody {custody}), not only a root",
        "use the root holder's own directory",
    )


def check_recorded(
    layout: PKILayout,
    path: Path,
    cert: x509.Certificate,
    recorded: Mapping[str, Any] | None,
    fix: str,
    field: str = "fingerprint",
) -> None:
    """The certificate on disk is the one the state file recorded under ``field`` (when it
    recorded one): a CA is never silently replaced."""
    if recorded is not None and recorded.get(field) != fingerprint(cert):
        raise PKIError(
            path,
            f"fingerprint {fingerprint(cert)} differs from the one recorded in "
            f"{layout.state_file} ({recorded.get(field)})",
            fix,
        )


def write_state(
    layout: PKILayout,
    req: TrustRequest,
    roots: Mapping[str, x509.Certificate],
    meshes: Mapping[str, tuple[str, str, x509.Certificate]],
    custody: Custody,
    old: State | None,
) -> None:
    """Record ``roots`` (name -> certificate) and ``meshes`` (name -> trust domain, root name,
    intermediate) over ``old``; rewritten only when it changes."""
    recorded_roots = dict((old or {}).get("roots", {}))
    recorded_meshes = dict((old or {}).get("meshes", {}))
    for name, cert in roots.items():
        recorded_roots[name] = {"fingerprint": fingerprint(cert)}
    for name, (trust_domain, root_name, ca_cert) in meshes.items():
        recorded_meshes[name] = {
            "trust_domain": trust_domain,
            "root": root_name,
            "ca_fingerprint": fingerprint(ca_cert),
        }
    if custody == "root":
        # The root holder records which trust domain each mesh may be constrained to.
        for wanted in req.meshes:
            recorded_meshes[wanted.mesh] = {
                "trust_domain": wanted.trust_domain,
                "root": SHARED_ROOT_NAME if req.mode == "SharedRoot" else wanted.mesh,
            }
    state: State = {
        "version": STATE_VERSION,
        "federation": req.federation,
        "mode": req.mode,
        "key_algorithm": req.key_algorithm,
        "roots": recorded_roots,
        "meshes": recorded_meshes,
    }
    if custody != "local":
        state["custody"] = custody
    data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
    path = layout.state_file
    if not path.exists() or read_bytes(path) != data:
        write_atomic(path, data, CERT_MODE)
