"""Workload and gateway certificates of the local Envoys, kept in their SDS file between runs.

The SDS file of secret ``default`` holds the chain (leaf + intermediate) and the key. A kept
certificate is reused while it still names the same SPIFFE ID, chains to the mesh's current
intermediate, matches its key and has more than a third of its lifetime left; otherwise a new
one is issued. Keys are never printed.

While the federation runs, `Renewer` (a thread of the workload host) renews them at
``RENEW_AT`` of their lifetime without waiting for the next ``up``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from meshfed.local.files import read_json, write_atomic
from meshfed.local.paths import RuntimePaths
from meshfed.pki import MeshCA, PKIStore
from meshfed.pki.certs import cert_to_pem, issued_at, keys_match, renewal_time, spiffe_ids
from meshfed.pki.errors import PKIError
from meshfed.pki.keys import key_to_pem
from meshfed.render.envoy.files import tls_secret

RENEW_AT = 2 / 3
"""Fraction of a certificate's lifetime after which ``up`` (or the renewer) issues a new one."""
IDLE_CHECK = 2.0
"""The renewer looks at least this often (files may change under it: ``up``, rotations)."""
MIN_LIFETIME = timedelta(seconds=5)


@dataclass(frozen=True)
class Identity:
    chain_pem: str
    """Leaf, then the mesh's intermediate."""
    key_pem: str
    not_after: datetime
    issued: bool
    """True if issued by this run, False if kept from an earlier one."""


def kept_identity(sds_doc: Any) -> tuple[str, str] | None:
    """``(chain_pem, key_pem)`` of an SDS ``default`` file's content, or None if it has none."""
    try:
        secret = sds_doc["resources"][0]["tls_certificate"]
        chain = secret["certificate_chain"]["inline_string"]
        key = secret["private_key"]["inline_string"]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(chain, str) and isinstance(key, str):
        return chain, key
    return None


def _reusable(
    chain_pem: str, key_pem: str, ca: MeshCA, spiffe_id: str, now: datetime, ttl: Any = None
) -> bool:
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        return False
    leaf = certs[0]
    if len(certs) != 2 or certs[1] != ca.ca_cert or leaf.issuer != ca.ca_cert.subject:
        return False
    if not keys_match(key, leaf):  # type: ignore[arg-type]
        return False
    try:
        leaf.verify_directly_issued_by(ca.ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if spiffe_ids(leaf) != [spiffe_id]:
        return False
    if ttl is not None and leaf.not_valid_after_utc != ca.ca_cert.not_valid_after_utc:
        # Another workloadTTL than the spec's now (the renewer keeps a certificate's lifetime).
        lifetime = leaf.not_valid_after_utc - issued_at(leaf)
        if abs(lifetime - ttl) > timedelta(seconds=1):
            return False
    return now < renewal_time(leaf, RENEW_AT)


def identity_for(
    ca: MeshCA, spiffe_id: str, ttl: Any, now: datetime, kept_sds: Any = None
) -> Identity:
    """The certificate of ``spiffe_id``: the one in ``kept_sds`` if still good, else a new one."""
    kept = kept_identity(kept_sds)
    if kept is not None and _reusable(*kept, ca, spiffe_id, now, ttl):
        leaf = x509.load_pem_x509_certificates(kept[0].encode())[0]
        return Identity(kept[0], kept[1], leaf.not_valid_after_utc, issued=False)
    key, cert = ca.issue(spiffe_id, ttl, now)
    chain = (cert_to_pem(cert) + cert_to_pem(ca.ca_cert)).decode()
    return Identity(chain, key_to_pem(key).decode(), cert.not_valid_after_utc, issued=True)


# --- renewal while the federation runs ---------------------------------------------------------


@dataclass(frozen=True)
class Renewed:
    process: str
    spiffe_id: str
    not_after: datetime


class Renewer:
    """Renews the Envoys' certificates of a running local federation before they run out.

    Runs in the workload host (a thread started with the host by ``up``, stopped by ``down``).
    Every SDS ``default`` file under ``STATE/local/envoy/`` whose certificate is past
    ``RENEW_AT`` of its lifetime gets a new certificate of the same lifetime, issued by the
    mesh's current (signing) CA and written atomically (Envoy picks it up for new handshakes).
    It takes the runtime lock for each write, so it never interleaves with ``up`` or a rotation.
    """

    def __init__(self, state_dir: Path, log: Callable[[str], None] = print) -> None:
        self.state_dir = state_dir
        self.paths = RuntimePaths(state_dir)
        self.log = log

    def _files(self) -> list[Path]:
        base = self.paths.root / "envoy"
        return sorted(base.glob("*/sds/default.json")) if base.is_dir() else []

    def _leaf(self, path: Path) -> tuple[x509.Certificate, str, str] | None:
        kept = kept_identity(read_json(path))
        if kept is None:
            return None
        try:
            leaf = x509.load_pem_x509_certificates(kept[0].encode())[0]
        except (ValueError, IndexError):
            return None
        return leaf, kept[0], kept[1]

    def due(self, now: datetime) -> tuple[list[Path], datetime | None]:
        """The files due now, and when the next one (of all) is due."""
        due: list[tuple[datetime, Path]] = []
        upcoming: list[tuple[datetime, Path]] = []
        for path in self._files():
            found = self._leaf(path)
            if found is None:
                continue
            at = renewal_time(found[0], RENEW_AT)
            (due if now >= at else upcoming).append((at, path))
        return [p for _, p in due], min((at for at, _ in upcoming), default=None)

    def run_once(self, now: datetime | None = None) -> list[Renewed]:
        now = now or datetime.now(UTC)
        due, _ = self.due(now)
        if not due:
            return []
        renewed = []
        store = PKIStore(self.state_dir)
        with self.paths.locked():
            for path in due:
                found = self._leaf(path)  # again: ``up`` may have replaced it meanwhile
                if found is None or now < renewal_time(found[0], RENEW_AT):
                    continue
                leaf = found[0]
                ids = spiffe_ids(leaf)
                if len(ids) != 1:
                    continue
                slug = path.parent.parent.name
                mesh = slug.partition("_")[0]
                ca = store.signing_ca(mesh, now)
                lifetime = leaf.not_valid_after_utc - issued_at(leaf)
                key, cert = ca.issue(ids[0], max(lifetime, MIN_LIFETIME), now)
                chain = (cert_to_pem(cert) + cert_to_pem(ca.ca_cert)).decode()
                self._write(path, tls_secret(chain, key_to_pem(key).decode()))
                renewed.append(Renewed(slug.replace("_", "/"), ids[0], cert.not_valid_after_utc))
        return renewed

    def _write(self, path: Path, content: dict[str, Any]) -> None:
        old = read_json(path)
        try:
            version = str(int(str(old["version_info"])) + 1)
        except (KeyError, TypeError, ValueError):
            version = "1"
        doc = dict(content)
        doc["version_info"] = version
        write_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o600)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            wait = IDLE_CHECK
            try:
                for r in self.run_once():
                    self.log(f"renewed {r.process} ({r.spiffe_id}) until {r.not_after:%H:%M:%S}")
                _, upcoming = self.due(datetime.now(UTC))
                if upcoming is not None:
                    left = (upcoming - datetime.now(UTC)).total_seconds()
                    wait = min(IDLE_CHECK, max(0.2, left + 0.05))
            except (PKIError, OSError, ValueError) as exc:
                self.log(f"certificate renewal: {exc} (retrying)")
                wait = 1.0
            stop.wait(wait)
