"""Checks of the bundle exchange fields: ``bundleEndpoint``, ``follows``, ``partner``.

Run by ``check_federation`` with every other whole-document check. SPIFFE IDs are checked by
`meshfed.spiffe` (every command loads the spec: no py-spiffe import here, see its docstring);
``meshfed.bundles`` uses py-spiffe where bundle documents are parsed.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from meshfed.spec.errors import Problem
from meshfed.spec.model import Federation, Mesh
from meshfed.spiffe import spiffe_trust_domain


def split_bundle_url(url: str) -> tuple[str, int, str]:
    """``(host, port, path)`` of a bundle endpoint URL: https, a host, no userinfo (SPIFFE
    Federation 5.2.1.1 and 5.2.2.1); ValueError saying what is wrong otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL ({exc})") from None
    if parts.scheme != "https":
        raise ValueError(f"{url!r}: a bundle endpoint URL must use https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"{url!r}: a bundle endpoint URL must not carry userinfo")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if parts.fragment:
        raise ValueError(f"{url!r}: a bundle endpoint URL has no #fragment")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


def trusted_peers(fed: Federation, mesh: Mesh) -> dict[str, str]:
    """Peer mesh -> why ``mesh`` trusts it: it consumes one of mesh's exports, or mesh imports
    from it (the same pairs as the plan's peerings)."""
    why: dict[str, str] = {}
    for export in fed.spec.exports:
        if export.mesh == mesh.name:
            for consumer in export.consumers:
                why.setdefault(consumer.mesh, f"it may call export {export.name}")
    for imp in fed.spec.imports:
        if imp.mesh == mesh.name:
            for ref in imp.from_:
                why.setdefault(ref.partition("/")[0], f"{mesh.name} imports {ref}")
    why.pop(mesh.name, None)
    return why


def _endpoint(fed: Federation, i: int, mesh: Mesh) -> Iterator[Problem]:
    ep = mesh.bundle_endpoint
    if ep is None:
        return
    path: tuple[str | int, ...] = ("spec", "meshes", i, "bundleEndpoint")
    try:
        split_bundle_url(ep.url)
    except ValueError as exc:
        yield Problem((*path, "url"), str(exc), "use https://HOST[:PORT]/PATH")
    if ep.profile == "https_spiffe":
        if ep.spiffe_id is None:
            yield Problem(
                (*path, "spiffeId"),
                "profile https_spiffe needs the SPIFFE ID the endpoint server presents",
                f"set spiffeId, e.g. spiffe://{mesh.trust_domain}/meshfed/bundle-endpoint",
            )
        else:
            try:
                domain = spiffe_trust_domain(ep.spiffe_id)
            except ValueError as exc:
                yield Problem((*path, "spiffeId"), str(exc), "use spiffe://TRUST_DOMAIN/PATH")
            else:
                domains = {m.trust_domain for m in fed.spec.meshes}
                if domain not in domains:
                    yield Problem(
                        (*path, "spiffeId"),
                        f"the endpoint's trust domain {domain!r} is no mesh's of this spec, so "
                        "nothing could authenticate it",
                        f"use an ID in {mesh.trust_domain} (a self-serving endpoint), or declare "
                        f"the mesh of {domain}",
                    )
                elif not mesh.partner and domain != mesh.trust_domain:
                    yield Problem(
                        (*path, "spiffeId"),
                        f"meshfed serves mesh {mesh.name}'s bundle with an SVID of its own trust "
                        f"domain, not {domain!r}",
                        f"use an ID in {mesh.trust_domain}",
                    )
    else:
        for field, value in (
            ("spiffeId", ep.spiffe_id),
            ("bootstrapBundle", ep.bootstrap_bundle),
            ("bootstrapFingerprint", ep.bootstrap_fingerprint),
        ):
            if value is not None:
                yield Problem(
                    (*path, field),
                    f"{field} applies to profile https_spiffe only; https_web endpoints are "
                    "authenticated by their Web PKI certificate",
                    f"remove {field}, or use profile https_spiffe",
                )
    for field, value in (
        ("bootstrapBundle", ep.bootstrap_bundle),
        ("bootstrapFingerprint", ep.bootstrap_fingerprint),
    ):
        if value is not None and not mesh.partner and ep.profile == "https_spiffe":
            yield Problem(
                (*path, field),
                f"this state directory holds mesh {mesh.name}'s roots; only a partner mesh's "
                "first fetch needs a bootstrap",
                f"remove {field}, or mark the mesh partner: true",
            )
    if ep.bootstrap_bundle is not None and ep.bootstrap_fingerprint is not None:
        yield Problem(
            (*path, "bootstrapFingerprint"),
            "bootstrapBundle and bootstrapFingerprint both given",
            "keep one of them",
        )


def _partner(fed: Federation, i: int, mesh: Mesh) -> Iterator[Problem]:
    path: tuple[str | int, ...] = ("spec", "meshes", i)
    if not mesh.partner:
        return
    if fed.spec.trust.mode != "Federated":
        yield Problem(
            (*path, "partner"),
            "a partner mesh keeps its own root, which SharedRoot trust cannot express",
            "set spec.trust.mode: Federated",
        )
    if mesh.bundle_endpoint is None:
        yield Problem(
            (*path, "bundleEndpoint"),
            f"partner mesh {mesh.name} has no bundle endpoint: nothing could vouch for it",
            "add bundleEndpoint (url, profile and, for https_spiffe, spiffeId) as the partner "
            "publishes it",
        )
    for field, value in (("kubernetes", mesh.kubernetes), ("clusters", mesh.clusters)):
        if value is not None:
            yield Problem(
                (*path, field),
                f"meshfed applies nothing to partner mesh {mesh.name}'s clusters",
                f"remove {field} (the partner runs its own mesh)",
            )
    if mesh.follows:
        yield Problem(
            (*path, "follows"),
            f"meshfed runs nothing of partner mesh {mesh.name}, so it follows no bundle for it",
            "remove follows from the partner mesh",
        )
    for j, imp in enumerate(fed.spec.imports):
        if imp.mesh == mesh.name:
            yield Problem(
                ("spec", "imports", j, "mesh"),
                f"{mesh.name} is a partner mesh: meshfed renders no imports for it",
                "remove the import; the partner configures its own imports",
            )


def _follows(fed: Federation, i: int, mesh: Mesh) -> Iterator[Problem]:
    path: tuple[str | int, ...] = ("spec", "meshes", i, "follows")
    meshes = {m.name: m for m in fed.spec.meshes}
    seen: set[str] = set()
    for j, peer in enumerate(mesh.follows or ()):
        where = (*path, j)
        if peer in seen:
            yield Problem(where, f"{peer!r} is listed twice", "list each peer once")
        seen.add(peer)
        target = meshes.get(peer)
        if target is None:
            yield Problem(
                where, f"no mesh named {peer!r}", f"use one of: {', '.join(sorted(meshes))}"
            )
        elif peer == mesh.name:
            yield Problem(where, "a mesh does not follow its own bundle", f"remove {peer!r}")
        elif target.bundle_endpoint is None:
            yield Problem(
                where,
                f"mesh {peer!r} publishes no bundle (it has no bundleEndpoint)",
                f"add bundleEndpoint to mesh {peer!r}, or remove it here",
            )
    if mesh.follows and fed.spec.trust.mode != "Federated":
        yield Problem(
            path,
            "with SharedRoot trust every mesh chains to the one root: there is no peer bundle "
            "to follow",
            "remove follows, or set spec.trust.mode: Federated",
        )
    if mesh.partner:
        return
    followed = set(mesh.follows or ())
    for peer, why in sorted(trusted_peers(fed, mesh).items()):
        target = meshes.get(peer)
        if target is not None and target.partner and peer not in followed:
            yield Problem(
                path,
                f"mesh {mesh.name} trusts partner mesh {peer} ({why}), whose roots only its "
                "bundle endpoint provides",
                f"add {peer} to meshes[{i}].follows",
            )


def _serving(fed: Federation) -> Iterator[Problem]:
    """Endpoints this state directory serves: one profile per address, one SVID per
    https_spiffe address, one mesh per URL."""
    by_address: dict[tuple[str, int], tuple[int, Mesh]] = {}
    urls: dict[tuple[str, int, str], int] = {}
    for i, mesh in enumerate(fed.spec.meshes):
        ep = mesh.bundle_endpoint
        if ep is None or mesh.partner:
            continue
        try:
            host, port, path = split_bundle_url(ep.url)
        except ValueError:
            continue
        where: tuple[str | int, ...] = ("spec", "meshes", i, "bundleEndpoint", "url")
        if (host, port, path) in urls:
            yield Problem(
                where,
                f"{ep.url} is already mesh spec.meshes[{urls[(host, port, path)]}]'s bundle "
                "endpoint",
                "give each mesh its own path",
            )
            continue
        urls[(host, port, path)] = i
        first = by_address.get((host, port))
        if first is None:
            by_address[(host, port)] = (i, mesh)
            continue
        j, other = first
        assert other.bundle_endpoint is not None
        if other.bundle_endpoint.profile != ep.profile:
            yield Problem(
                where,
                f"{host}:{port} already serves spec.meshes[{j}]'s bundle with profile "
                f"{other.bundle_endpoint.profile}; one address has one TLS certificate",
                "use the same profile, or another port",
            )
        elif ep.profile == "https_spiffe":
            yield Problem(
                where,
                f"{host}:{port} already serves spec.meshes[{j}]'s bundle over https_spiffe, "
                f"with an SVID of {other.trust_domain}; one address presents one SVID",
                "give each https_spiffe endpoint its own port",
            )


def check_bundles(fed: Federation) -> Iterator[Problem]:
    for i, mesh in enumerate(fed.spec.meshes):
        yield from _endpoint(fed, i, mesh)
        yield from _partner(fed, i, mesh)
        yield from _follows(fed, i, mesh)
    yield from _serving(fed)
