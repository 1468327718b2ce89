"""The controller's bundle endpoint (``meshfed controller run --bundle-listen HOST:PORT``):
each local mesh's SPIFFE bundle, for every Federation, served as ``meshfed trust serve`` does
(``bundles.server``, both profiles).

Every replica serves (a Service in front of the Deployment reaches any of them), and every
replica serves the same bytes: documents are built from the Federation's PKI state Secret,
read again whenever the Secret or the Federation changes (looked at every ``INTERVAL``
seconds). Only the leader numbers a changed bundle (``bundles.state.publish`` records the next
``spiffe_sequence`` in the Secret, before anyone serves it); a standby serves only what the
leader numbered (``published_bundle``), and until then the document it served before. So a
sequence never goes backwards, also across a failover.

The path is the one in the mesh's ``bundleEndpoint.url``. TLS: ``https_spiffe``, an
X509-SVID of the endpoint's SPIFFE ID issued in memory by the mesh's signing CA (re-issued
when a rotation switches it); ``https_web``, the operator's certificate files
(``--bundle-web-cert/--bundle-web-key``). Meshes on different hosts get their own certificate
by SNI.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from meshfed.bundles import document
from meshfed.bundles.config import published
from meshfed.bundles.model import PublishedMesh, SpiffeBundle
from meshfed.bundles.server import BundleServer, FileTls, SvidTls, TlsSource
from meshfed.bundles.state import publish, published_bundle
from meshfed.controller.crd import GROUP, VERSION
from meshfed.controller.pkistate import SecretState, state_secret_name
from meshfed.controller.reconcile import parse_federation
from meshfed.kube.client import KubeClient, Obj
from meshfed.kube.errors import KubeError
from meshfed.pki import MeshCA, PKIStore
from meshfed.pki.errors import PKIError
from meshfed.plan.build import root_name
from meshfed.plan.trust import trust_request
from meshfed.spec.bundle_checks import split_bundle_url
from meshfed.spec.errors import SpecError
from meshfed.spec.model import Federation

INTERVAL = 5.0
"""Seconds between each replica's looks at the Federations' state (what it serves)."""
AHEAD = 3
"""Refresh hints a changed bundle is out before a rotation signs with its new root (the SPIFFE
Federation spec recommends publishing 3-5 refresh hints ahead)."""
_Sock = ssl.SSLSocket | ssl.SSLObject


@dataclass(frozen=True)
class Served:
    """One mesh's bundle as served now."""

    federation: str
    mesh: PublishedMesh
    document: bytes
    signer: MeshCA | None
    """https_spiffe: the CA that issues the endpoint's SVID."""

    @property
    def path(self) -> str:
        return split_bundle_url(self.mesh.endpoint.url)[2]

    @property
    def host(self) -> str:
        return split_bundle_url(self.mesh.endpoint.url)[0]


def number_bundles(
    fed: Federation, state_dir: Path, leading: bool = True
) -> dict[str, SpiffeBundle | None]:
    """Each published mesh's bundle of its current roots (both generations during a rotation's
    overlap), numbered in the state when ``leading`` (else as numbered, or None if not yet).
    PKIError when the state holds no PKI yet."""
    material = PKIStore(state_dir).load(trust_request(fed))
    out: dict[str, SpiffeBundle | None] = {}
    for mesh in published(fed):
        roots = material.anchors(root_name(fed, mesh.name))
        args = (state_dir, mesh.name, mesh.trust_domain, roots, mesh.refresh_hint)
        out[mesh.name] = publish(*args) if leading else published_bundle(*args)
    return out


def publish_wait(since: datetime | None, refresh_hint: int, now: datetime) -> float:
    """Seconds before a bundle published ``since`` has been out for ``AHEAD`` refresh hints
    (and one look of every replica's endpoint): what a rotation waits before signing with a
    root the bundle has just gained, so that partners following it hold the root first."""
    if since is None:
        return 0.0
    ready = since + timedelta(seconds=AHEAD * refresh_hint + INTERVAL)
    return max(0.0, (ready - now).total_seconds())


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``), ValueError naming the problem."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--bundle-listen {value!r}: not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def route_table(served: list[Served]) -> tuple[dict[str, Served], list[str]]:
    """Path -> what is served there; and the paths two meshes claim (the first, by federation
    and mesh name, keeps it)."""
    table: dict[str, Served] = {}
    clashes = []
    for entry in sorted(served, key=lambda s: (s.federation, s.mesh.name)):
        if entry.path in table:
            other = table[entry.path]
            clashes.append(
                f"{entry.federation}/{entry.mesh.name} and {other.federation}/"
                f"{other.mesh.name} both publish at path {entry.path}: only the first is served"
            )
            continue
        table[entry.path] = entry
    return table, clashes


class _Routes(Mapping[str, Callable[[], bytes]]):
    def __init__(self, publisher: BundlePublisher) -> None:
        self.publisher = publisher

    def __getitem__(self, path: str) -> Callable[[], bytes]:
        entry = self.publisher.table[path]
        return lambda: entry.document

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self.publisher.table))

    def __len__(self) -> int:
        return len(self.publisher.table)


class RoutedTls:
    """The certificate of the mesh whose URL host the client names (SNI); without SNI (an IP
    address in the URL), the first mesh's."""

    def __init__(self, publisher: BundlePublisher) -> None:
        self.publisher = publisher

    def context(self) -> ssl.SSLContext:
        sources = self.publisher.tls_by_host()
        if not sources:
            raise OSError("no bundle published yet")
        first = next(iter(sources.values())).context()
        if len(sources) > 1:

            def pick(
                sock: ssl.SSLSocket | ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext
            ) -> None:
                chosen = sources.get(name or "")
                if chosen is not None:
                    sock.context = chosen.context()

            first.sni_callback = pick
        return first


@dataclass
class BundlePublisher:
    management: KubeClient
    namespace: str
    work_dir: Path
    log: Callable[[str], None] = print
    web_cert: Path | None = None
    web_key: Path | None = None
    leading: threading.Event = field(default_factory=threading.Event)
    table: dict[str, Served] = field(default_factory=dict)
    _seen: dict[str, tuple[Any, Any, list[Served]]] = field(default_factory=dict)
    _tls: dict[tuple[str, str], TlsSource] = field(default_factory=dict)
    _said: set[str] = field(default_factory=set)

    # -- what is served -----------------------------------------------------------------------

    def tls_by_host(self) -> dict[str, TlsSource]:
        out: dict[str, TlsSource] = {}
        for entry in self.table.values():
            source = self._source(entry)
            if source is not None:
                out.setdefault(entry.host, source)
        return out

    def _source(self, entry: Served) -> TlsSource | None:
        endpoint = entry.mesh.endpoint
        key = (endpoint.profile, endpoint.spiffe_id or endpoint.url)
        source = self._tls.get(key)
        if source is None:
            if endpoint.profile == "https_web":
                if self.web_cert is None or self.web_key is None:
                    self._say(f"{endpoint.url}: https_web needs --bundle-web-cert/--bundle-web-key")
                    return None
                source = FileTls(self.web_cert, self.web_key)
            else:
                assert endpoint.spiffe_id is not None
                where = (entry.federation, entry.mesh.name)
                source = SvidTls(endpoint.spiffe_id, lambda: self._signer(*where))
            self._tls[key] = source
        return source

    def _signer(self, federation: str, mesh: str) -> MeshCA:
        for entry in self.table.values():
            if (entry.federation, entry.mesh.name) == (federation, mesh) and entry.signer:
                return entry.signer
        raise OSError(f"no signing CA for {federation}/{mesh} (not published now)")

    def _say(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.log(line)

    # -- refreshing ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rebuild what is served from the Federations and their state Secrets (only those that
        changed since the last look); the leader numbers changed bundles."""
        try:
            bodies = self.management.list(f"{GROUP}/{VERSION}", "Federation")
        except KubeError as exc:
            self.log(f"bundle endpoint: Federations not listed: {exc}")
            return
        served: list[Served] = []
        names = set()
        for body in bodies:
            name = str((body.get("metadata") or {}).get("name"))
            names.add(name)
            served += self._federation(name, body)
        for gone in set(self._seen) - names:
            del self._seen[gone]
        table, clashes = route_table(served)
        for line in clashes:
            self._say(line)
        self.table = table

    def _federation(self, name: str, body: Obj) -> list[Served]:
        generation = (body.get("metadata") or {}).get("generation")
        try:
            secret = self.management.get("v1", "Secret", state_secret_name(name), self.namespace)
        except KubeError as exc:
            self.log(f"bundle endpoint: state of {name} not read: {exc}")
            return self._seen.get(name, (None, None, []))[2]
        version = (secret or {}).get("metadata", {}).get("resourceVersion")
        seen = self._seen.get(name)
        leading = self.leading.is_set()
        if seen is not None and seen[0] == generation and seen[1] == (version, leading):
            return seen[2]
        try:
            fed = parse_federation(body)
        except SpecError:
            return seen[2] if seen else []
        meshes = published(fed)
        if not meshes or secret is None:
            self._seen[name] = (generation, (version, leading), [])
            return []
        entries = self._build(name, fed, meshes, seen[2] if seen else [], leading)
        if entries is None:
            return seen[2] if seen else []
        self._seen[name] = (generation, (version, leading), entries)
        return entries

    def _build(
        self,
        name: str,
        fed: Federation,
        meshes: tuple[PublishedMesh, ...],
        before: list[Served],
        leading: bool,
    ) -> list[Served] | None:
        state = SecretState(self.management, self.namespace, name, self.work_dir)
        previous = {e.mesh.name: e for e in before}
        out: list[Served] = []
        try:
            state_dir = state.checkout()
            try:
                bundles = number_bundles(fed, state_dir, leading)
            except PKIError:
                return []  # no PKI yet: the first reconcile makes it
            for mesh in meshes:
                bundle = bundles.get(mesh.name)
                signer = PKIStore(state_dir).signing_ca(mesh.name)
                if bundle is not None:
                    out.append(Served(name, mesh, document.encode(bundle), signer))
                elif mesh.name in previous:  # not numbered by the leader yet
                    out.append(previous[mesh.name])
            if leading:
                state.commit()
        except (KubeError, PKIError) as exc:
            self.log(f"bundle endpoint: bundles of {name} not built: {exc}")
            return None
        finally:
            state.discard()
        return out

    # -- running ------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> BundleServer:
        server = BundleServer(host, port, _Routes(self), RoutedTls(self), log=self.log)
        return server.start()

    def run(self, stop: threading.Event, interval: float = INTERVAL) -> None:
        while True:
            try:
                self.refresh()
            except Exception as exc:  # the endpoint must outlive any one bad look
                self.log(f"bundle endpoint: refresh failed: {type(exc).__name__}: {exc}")
            if stop.wait(interval):
                return


__all__ = [
    "BundlePublisher",
    "RoutedTls",
    "Served",
    "number_bundles",
    "parse_listen",
    "publish_wait",
    "route_table",
]
