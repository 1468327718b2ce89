"""``meshfed trust``: publish this state directory's bundles, follow peers' bundles.

``serve`` runs the bundle endpoints of the spec's local meshes; ``bundle MESH`` prints one;
``fetch`` fetches (``--follow``: keeps following) the peers' bundles, and carries each accepted
change to what trusts the peer: the running local federation at once (SDS), the Istio output at
the next ``render``/``apply`` (the plan reads the kept bundles); ``status`` shows both sides.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import click
from cryptography import x509

from meshfed import interrupts
from meshfed.bundles import document
from meshfed.bundles.config import followed, published
from meshfed.bundles.errors import BundleError
from meshfed.bundles.follow import Fetcher, Follower
from meshfed.bundles.model import PublishedMesh
from meshfed.bundles.server import BundleServer, FileTls, SvidTls, TlsSource
from meshfed.bundles.state import Change, PeerBundles, publish, published_state
from meshfed.cli.common import reported
from meshfed.local.errors import LocalError
from meshfed.pki import PKIMaterial, PKIStore
from meshfed.pki.errors import PKIError
from meshfed.plan.build import root_name
from meshfed.plan.trust import trust_request
from meshfed.spec.bundle_checks import split_bundle_url
from meshfed.spec.load import load_spec
from meshfed.spec.model import Federation
from meshfed.workspace import default_state_dir, open_workspace

_SPEC = click.argument(
    "spec", required=False, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
_STATE = click.option(
    "--state",
    "state",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="State directory (default ./.meshfed/<federation>/).",
)


def _load(spec: Path | None, state: Path | None) -> tuple[Path, Federation, Path]:
    if spec is None:
        from meshfed.local.locate import default_spec

        spec = default_spec()
    fed = load_spec(spec)
    return spec, fed, state if state is not None else default_state_dir(fed)


def _material(fed: Federation, state: Path) -> PKIMaterial:
    return PKIStore(state).ensure(trust_request(fed))


def _published_doc(fed: Federation, state: Path, mesh: PublishedMesh) -> bytes:
    """The mesh's current bundle: its roots now (both generations during a rotation's
    overlap), numbered in the state directory."""
    material = PKIStore(state).load(trust_request(fed))
    roots = material.anchors(root_name(fed, mesh.name))
    return document.encode(publish(state, mesh.name, mesh.trust_domain, roots, mesh.refresh_hint))


def _published_line(fed: Federation, state: Path, mesh: PublishedMesh) -> str:
    """The sequence the mesh's endpoint served last, and whether its bundle changed since (a
    partner holds at most that sequence; compare with its ``trust status``)."""
    try:
        material = PKIStore(state).load(trust_request(fed))
    except PKIError:
        return "no PKI yet (meshfed pki init, or trust serve, creates it)"
    roots = material.anchors(root_name(fed, mesh.name))
    st = published_state(state, mesh.name, mesh.trust_domain, roots, mesh.refresh_hint)
    now = f"{len(roots)} root(s)"
    if st.sequence is None:
        return f"nothing served yet; the first fetch gets sequence 1, {now}"
    if st.current:
        return f"sequence {st.sequence} (since {st.since}), {now}"
    return (
        f"sequence {st.sequence} served last; its roots or refresh hint changed since: the "
        f"next fetch gets sequence {st.next_sequence}, {now}"
    )


def _publishing(fed: Federation, name: str) -> PublishedMesh:
    for mesh in published(fed):
        if mesh.name == name:
            return mesh
    names = [m.name for m in fed.spec.meshes]
    if name not in names:
        raise BundleError(name, "no such mesh", f"use one of: {', '.join(names)}")
    raise BundleError(
        name,
        "publishes no bundle (a partner mesh, or no bundleEndpoint)",
        "add bundleEndpoint (url, profile) to the mesh in the spec",
    )


def held_roots(fed: Federation, material: PKIMaterial) -> dict[str, list[x509.Certificate]]:
    """Trust domain -> roots this state directory holds (its own meshes)."""
    return {
        m.trust_domain: list(material.anchors(root_name(fed, m.name)))
        for m in fed.spec.meshes
        if not m.partner
    }


def propagate(spec: Path, state: Path, changes: Sequence[Change]) -> str:
    """Carry accepted bundle changes to what trusts those peers here: the running local
    federation's SPIFFE validators, through SDS (the seam a controller replaces with its own
    apply). Istio output picks the kept bundles up at the next render or apply."""
    from meshfed.rotation.live import LiveFederation

    ws = open_workspace(spec, state)
    live = LiveFederation.detect(state)
    peers = ", ".join(sorted({c.peer for c in changes}))
    if live is None:
        return f"{peers}: kept; no local federation runs here (render/apply carry it to Istio)"
    report = live.push(ws.plan)
    return f"{peers}: local federation: {report.describe()}"


def register(main: click.Group) -> None:
    @main.group()
    def trust() -> None:
        """SPIFFE bundle exchange with partners: serve, print, fetch and follow bundles."""

    @trust.command("bundle")
    @click.argument("mesh")
    @_SPEC
    @_STATE
    def trust_bundle(mesh: str, spec: Path | None, state: Path | None) -> None:
        """Print MESH's SPIFFE bundle as its endpoint serves it (what a partner bootstraps
        from); the SHA-256 fingerprint of each root goes to stderr."""
        with reported(PKIError, BundleError):
            spec, fed, state_dir = _load(spec, state)
            target = _publishing(fed, mesh)
            _material(fed, state_dir)
            raw = _published_doc(fed, state_dir, target)
        click.echo(raw.decode(), nl=False)
        bundle = document.parse(raw, target.trust_domain, _now(), mesh)
        for fp in bundle.fingerprints:
            click.echo(f"root sha256:{fp}", err=True)

    @trust.command("serve")
    @_SPEC
    @_STATE
    @click.option("--mesh", "meshes", multiple=True, help="Serve only these meshes' bundles.")
    @click.option(
        "--web-cert",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="https_web: the endpoint's Web PKI certificate chain (PEM), re-read on change.",
    )
    @click.option(
        "--web-key",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="https_web: its private key (PEM, keep it 0600).",
    )
    def trust_serve(
        spec: Path | None,
        state: Path | None,
        meshes: tuple[str, ...],
        web_cert: Path | None,
        web_key: Path | None,
    ) -> None:
        """Serve each local mesh's bundle at its bundleEndpoint until stopped (Ctrl-C)."""
        servers: list[BundleServer] = []
        with reported(PKIError, BundleError, OSError):
            spec, fed, state_dir = _load(spec, state)
            chosen = [_publishing(fed, m) for m in meshes] or list(published(fed))
            if not chosen:
                raise BundleError(
                    str(spec), "no local mesh has a bundleEndpoint", "add one to publish"
                )
            _material(fed, state_dir)
            groups: dict[tuple[str, int], list[PublishedMesh]] = defaultdict(list)
            for m in chosen:
                host, port, _ = split_bundle_url(m.endpoint.url)
                groups[(host, port)].append(m)
            for (host, port), group in sorted(groups.items()):
                first = group[0].endpoint
                tls: TlsSource
                if first.profile == "https_web":
                    if web_cert is None or web_key is None:
                        raise BundleError(
                            first.url,
                            "profile https_web needs the endpoint's Web PKI certificate",
                            "pass --web-cert FILE --web-key FILE",
                        )
                    tls = FileTls(web_cert, web_key)
                else:
                    assert first.spiffe_id is not None
                    tls = SvidTls(
                        first.spiffe_id, partial(PKIStore(state_dir).signing_ca, group[0].name)
                    )
                tls.context()  # fail now, not at the first client, if it cannot work
                routes = {
                    split_bundle_url(m.endpoint.url)[2]: partial(_published_doc, fed, state_dir, m)
                    for m in group
                }
                for m in group:
                    _published_doc(fed, state_dir, m)
                servers.append(
                    BundleServer(host, port, routes, tls, log=lambda s: click.echo(s, err=True))
                )
        with interrupts.stopping() as stop:
            try:
                for server in servers:
                    server.start()
                for m in chosen:
                    how = m.endpoint.profile + (
                        f" as {m.endpoint.spiffe_id}" if m.endpoint.spiffe_id else ""
                    )
                    click.echo(f"serving {m.name}'s bundle at {m.endpoint.url} ({how})")
                stop.wait()
            finally:
                for server in servers:
                    server.stop()
        click.echo(f"stopped serving ({stop.describe()})", err=True)

    @trust.command("fetch")
    @_SPEC
    @_STATE
    @click.option("--peer", "peers", multiple=True, help="Fetch only these peers' bundles.")
    @click.option(
        "--follow",
        is_flag=True,
        help="Keep following, each peer at its bundle's refresh hint, until stopped.",
    )
    @click.option(
        "--web-ca",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="https_web: CA bundle to trust instead of the system's (a private Web PKI).",
    )
    @click.option("--timeout", type=float, default=10.0, show_default=True,
                  help="Seconds one fetch may take.")  # fmt: skip
    def trust_fetch(
        spec: Path | None,
        state: Path | None,
        peers: tuple[str, ...],
        follow: bool,
        web_ca: Path | None,
        timeout: float,
    ) -> None:
        """Fetch the bundles of the peers the spec's meshes follow; authenticate, check, keep,
        and carry each change to the running local federation."""
        with reported(PKIError, BundleError, LocalError):
            spec, fed, state_dir = _load(spec, state)
            spec_path = spec
            material = _material(fed, state_dir)
            every = followed(fed, spec.resolve().parent)
            unknown = sorted(set(peers) - {p.name for p in every})
            if unknown:
                raise BundleError(
                    ", ".join(unknown),
                    "no local mesh follows this peer",
                    "add it to a mesh's follows in the spec",
                )
            chosen = [p for p in every if not peers or p.name in peers]
            if not chosen:
                raise BundleError(str(spec), "no mesh follows any peer", "add follows: [PEER]")
            fetcher = Fetcher(
                state_dir,
                held_roots=held_roots(fed, material),
                peer_domains={p.trust_domain: p.name for p in every},
                web_ca=web_ca,
                timeout=timeout,
            )

        def on_change(changes: list[Change]) -> None:
            click.echo(propagate(spec_path, state_dir, changes))

        follower = Follower(fetcher, chosen, on_change, log=click.echo, quiet_unchanged=False)
        if not follow:
            with reported(PKIError, BundleError, LocalError, effect="the kept bundles stay"):
                outcomes = follower.run_once()
            if any(not o.ok for o in outcomes):
                sys.exit(1)
            return
        follower.quiet_unchanged = True
        with interrupts.stopping() as stop:
            click.echo(f"following {', '.join(p.name for p in chosen)} (Ctrl-C stops)")
            follower.run_forever(stop)
        click.echo(f"stopped following ({stop.describe()})", err=True)

    @trust.command("status")
    @_SPEC
    @_STATE
    def trust_status(spec: Path | None, state: Path | None) -> None:
        """Published bundles' sequences, and each followed peer's kept bundle and condition."""
        with reported(PKIError, BundleError):
            spec, fed, state_dir = _load(spec, state)
            store = PeerBundles(state_dir)
            for m in published(fed):
                click.echo(
                    f"publishes {m.name} at {m.endpoint.url} ({m.endpoint.profile}): "
                    + _published_line(fed, state_dir, m)
                )
            for p in followed(fed, spec.resolve().parent):
                kept = store.current(p.name)
                cond = store.condition(p.name)
                seq = "none yet" if kept is None else f"sequence {kept.sequence}"
                roots = "" if kept is None else f", {len(kept.x509_authorities)} root(s)"
                click.echo(f"follows {p.name} ({p.trust_domain}) for {', '.join(p.followers)}: "
                           f"{seq}{roots}")  # fmt: skip
                if cond is not None:
                    state_word = "ok" if cond.ok else "FAILING"
                    click.echo(f"  last attempt {cond.at}: {state_word}: {cond.detail}")


def _now() -> datetime:
    return datetime.now(UTC)
