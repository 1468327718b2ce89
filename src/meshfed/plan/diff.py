"""What a change to the federation does to its security, in plain words.

Compares two plans: which services become exposed or stop being exposed, to which meshes,
which principals gain or lose access (and to which methods and paths), which roots a gateway
or a mesh's sidecars start or stop trusting, and where imports now lead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from meshfed.plan.model import AllowRule, FederationPlan, IngressServer, MeshPlan, TrustBundle

Effect = Literal["widens", "narrows", "neutral"]


@dataclass(frozen=True, order=True)
class SecurityChange:
    """One change, worded for people; ``effect`` says whether it widens access or trust."""

    mesh: str
    effect: Effect
    text: str

    def __str__(self) -> str:
        sign = {"widens": "+", "narrows": "-", "neutral": "~"}[self.effect]
        return f"{sign} [{self.mesh}] {self.text}"


def _grants(rule: AllowRule) -> set[str]:
    """Each (principal, method, path) combination a rule allows, as a readable string."""
    methods = rule.methods or ("any method",)
    paths = [str(p) for p in rule.paths] or ["any path"]
    return {
        f"{principal} ({method} {path})"
        for principal in rule.principals
        for method in methods
        for path in paths
    }


def _server_grants(server: IngressServer) -> set[str]:
    return {grant for rule in server.allow for grant in _grants(rule)}


def _consumers(server: IngressServer) -> str:
    return ", ".join(sorted({r.consumer_mesh for r in server.allow}))


def _fingerprint(bundle: TrustBundle) -> str:
    return hashlib.sha256(bundle.pem.encode()).hexdigest()[:12]


def _trust(bundles: tuple[TrustBundle, ...]) -> set[tuple[str, str, str]]:
    return {(b.name, _fingerprint(b), domain) for b in bundles for domain in b.trust_domains}


def _mesh_changes(name: str, old: MeshPlan | None, new: MeshPlan | None) -> list[SecurityChange]:
    out: list[SecurityChange] = []

    def add(effect: Effect, text: str) -> None:
        out.append(SecurityChange(name, effect, text))

    old_servers = {s.sni: s for s in (old.ingress.servers if old else ())}
    new_servers = {s.sni: s for s in (new.ingress.servers if new else ())}
    for sni in sorted(new_servers.keys() - old_servers.keys()):
        s = new_servers[sni]
        add("widens", f"exposes {s.export} ({s.workload.ref}) as {sni} to {_consumers(s)}")
    for sni in sorted(old_servers.keys() - new_servers.keys()):
        s = old_servers[sni]
        add("narrows", f"stops exposing {s.export} as {sni} (was open to {_consumers(s)})")
    for sni in sorted(old_servers.keys() & new_servers.keys()):
        before, after = old_servers[sni], new_servers[sni]
        if before.workload.ref != after.workload.ref:
            add("neutral", f"{sni} now leads to {after.workload.ref} (was {before.workload.ref})")
        for grant in sorted(_server_grants(after) - _server_grants(before)):
            add("widens", f"{sni}: grants {grant}")
        for grant in sorted(_server_grants(before) - _server_grants(after)):
            add("narrows", f"{sni}: revokes {grant}")

    old_kept = dict(old.boundary.kept_request_headers) if old else {}
    new_kept = dict(new.boundary.kept_request_headers) if new else {}
    for sni in sorted(new_kept.keys() | old_kept.keys()):
        for header in sorted(set(new_kept.get(sni, ())) - set(old_kept.get(sni, ()))):
            add("widens", f"{sni}: lets the caller's {header} header through to the workload")
        for header in sorted(set(old_kept.get(sni, ())) - set(new_kept.get(sni, ()))):
            add("narrows", f"{sni}: strips the caller's {header} header again")

    for label, old_b, new_b in (
        ("ingress", old.ingress.trusted if old else (), new.ingress.trusted if new else ()),
        ("sidecars", old.workload_trust if old else (), new.workload_trust if new else ()),
    ):
        for root, fp, domain in sorted(_trust(new_b) - _trust(old_b)):
            add("widens", f"{label} trust root {root} ({fp}) for {domain}")
        for root, fp, domain in sorted(_trust(old_b) - _trust(new_b)):
            add("narrows", f"{label} stop trusting root {root} ({fp}) for {domain}")

    old_imports = {(i.local_host, i.port): i for i in (old.imports if old else ())}
    new_imports = {(i.local_host, i.port): i for i in (new.imports if new else ())}
    for key in sorted(new_imports.keys() - old_imports.keys()):
        route = new_imports[key]
        sources = " then ".join(s.export for s in route.sources)
        add("widens", f"imports {key[0]}:{key[1]} from {sources}")
    for key in sorted(old_imports.keys() - new_imports.keys()):
        add("narrows", f"no longer imports {key[0]}:{key[1]}")
    for key in sorted(old_imports.keys() & new_imports.keys()):
        before_src = [s.export for s in old_imports[key].sources]
        after_src = [s.export for s in new_imports[key].sources]
        if before_src != after_src:
            add(
                "neutral",
                f"{key[0]}:{key[1]} now fails over "
                f"{' then '.join(after_src)} (was {' then '.join(before_src)})",
            )
    return out


def security_diff(old: FederationPlan | None, new: FederationPlan) -> list[SecurityChange]:
    """Every security-relevant change from ``old`` (None: nothing yet) to ``new``."""
    old_meshes = {m.name: m for m in (old.meshes if old else ())}
    new_meshes = {m.name: m for m in new.meshes}
    changes: list[SecurityChange] = []
    for name in sorted(old_meshes.keys() | new_meshes.keys()):
        if name not in old_meshes:
            changes.append(SecurityChange(name, "neutral", "joins the federation"))
        elif name not in new_meshes:
            changes.append(SecurityChange(name, "narrows", "leaves the federation"))
        changes += _mesh_changes(name, old_meshes.get(name), new_meshes.get(name))
    return changes
