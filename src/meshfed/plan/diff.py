"""What a change to the federation does to its security, in plain words.

Compares two plans: which services become exposed or stop being exposed, to which meshes,
which principals gain or lose access (and to which methods and paths), which roots a gateway
or a mesh's sidecars start or stop trusting, where imports now lead, what the egress lets out,
every change of a mesh's boundary policy (headers, XFCC, paths, what sidecars let out), and
every bound of its proxies (timeouts, sizes, connection caps) and its egress's failover.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, is_dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from meshfed.plan.limits import MeshLimits
from meshfed.plan.model import AllowRule, FederationPlan, IngressServer, MeshPlan, TrustBundle

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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
    if old is not None and new is not None:
        for effect, text in [
            *_boundary_changes(old.boundary, new.boundary),
            *_limit_changes(old.limits, new.limits),
            *_boundary_changes(old.egress.failover, new.egress.failover, "", "egress failover"),
        ]:
            add(effect, text)
    old_snis = set(old.egress.allowed_snis if old else ())
    new_snis = set(new.egress.allowed_snis if new else ())
    for sni in sorted(new_snis - old_snis):
        add("widens", f"egress lets {sni} out of the mesh")
    for sni in sorted(old_snis - new_snis):
        add("narrows", f"egress no longer lets {sni} out of the mesh")
    return out


# How each change of the boundary policy reads (`meshfed.plan.boundary`); a field not listed
# here is still reported, by its name.
_LISTS: dict[str, tuple[tuple[Effect, str], tuple[Effect, str]]] = {
    # field: ((effect, text) when an item is added, (effect, text) when one is removed)
    "request_headers_removed": (
        ("narrows", "the ingress strips the caller's {} header"),
        ("widens", "the ingress lets the caller's {} header through to the exported workloads"),
    ),
    "response_headers_removed": (
        ("narrows", "responses no longer carry {} out of the mesh"),
        ("widens", "responses may carry {} out of the mesh"),
    ),
    "client_cert.fields": (
        ("widens", "the ingress passes the caller certificate's {} on to workloads (XFCC)"),
        ("narrows", "the ingress no longer passes the caller certificate's {} on (XFCC)"),
    ),
}
_FLAGS: dict[str, tuple[Effect, str, str]] = {
    # field: (effect when it turns true, text when true, text when false)
    "tcp_authorized_before_connect": (
        "narrows",
        "TCP exports connect their workload only once the caller is authorized",
        "TCP exports connect their workload before the caller is authorized (a server-first "
        "workload greets callers the policy refuses)",
    ),
    "proxy_debug_headers": (
        "widens",
        "the ingress adds its own diagnostic headers to responses",
        "the ingress no longer adds its diagnostic headers to responses",
    ),
    "forward_caller_address": (
        "widens",
        "exported workloads learn callers' network addresses",
        "exported workloads no longer learn callers' network addresses",
    ),
    "paths.normalize": (
        "narrows",
        "the ingress normalizes paths before deciding on them",
        "the ingress no longer normalizes paths before deciding on them ('..' can walk around "
        "a path rule)",
    ),
    "paths.merge_slashes": (
        "narrows",
        "the ingress merges repeated slashes before deciding on paths",
        "the ingress no longer merges repeated slashes before deciding on paths",
    ),
}
_OPPOSITE: dict[Effect, Effect] = {"widens": "narrows", "narrows": "widens", "neutral": "neutral"}
_VALUES: dict[str, str] = {
    "client_cert.at_ingress": "the caller's XFCC at the ingress",
    "client_cert.forwarder": "the one peer a workload accepts an XFCC from",
    "client_cert.to_workload": "XFCC from a sidecar to its workload",
    "client_cert.leaving": "a workload's XFCC leaving the mesh",
    "paths.escaped_slashes": "escaped slashes in paths at the ingress",
    "outbound": "what sidecars let out of the mesh (outbound traffic policy)",
    "caller_header": "the header the ingress names the verified caller in",
}
_ELSEWHERE = {"kept_request_headers"}
"""Boundary fields reported on their own (per SNI) above."""

_LIMITS: dict[str, str] = {
    # ListenerLimits field: what the listener does up to the value
    "handshake_timeout": "waits for a TLS handshake up to {}",
    "request_headers_timeout": "waits for a request's headers up to {}",
    "stream_idle_timeout": "lets a request or response stall up to {}",
    "request_timeout": "waits for a whole request up to {}",
    "idle_timeout": "keeps an idle HTTP connection up to {}",
    "max_connection_duration": "keeps an HTTP connection up to {}",
    "tcp_idle_timeout": "keeps an idle TCP session up to {}",
    "max_request_headers_kb": "takes request headers up to {} KiB",
    "max_headers_count": "takes up to {} request headers",
    "underscore_headers": "treats request headers with '_' as {}",
    "buffer_limit_bytes": "buffers up to {} bytes per connection",
    "max_connections": "holds up to {} connections",
}
_UNDERSCORES = ("REJECT", "DROP", "ALLOW")
"""From strictest to most lenient."""


def _boundary_changes(
    old: DataclassInstance,
    new: DataclassInstance,
    prefix: str = "",
    policy: str = "boundary policy",
) -> list[tuple[Effect, str]]:
    """Every field of two policies (nested ones too) that differs, in words; a field without
    words is named (``<policy> <field>``)."""
    out: list[tuple[Effect, str]] = []
    for f in fields(old):
        name = prefix + f.name
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after or name in _ELSEWHERE:
            continue
        if is_dataclass(type(before)) and type(before) is type(after):
            out += _boundary_changes(before, after, f"{name}.", policy)
        elif name in _LISTS:
            (added, added_text), (removed, removed_text) = _LISTS[name]
            out += [(added, added_text.format(v)) for v in sorted(set(after) - set(before))]
            out += [(removed, removed_text.format(v)) for v in sorted(set(before) - set(after))]
        elif name in _FLAGS:
            effect, on, off = _FLAGS[name]
            out.append((effect, on) if after else (_OPPOSITE[effect], off))
        else:
            label = _VALUES.get(name, f"{policy} {name.replace('_', ' ')}")
            out.append(("neutral", f"{label}: {_shown(after)} (was {_shown(before)})"))
    return out


def _limit_changes(old: MeshLimits, new: MeshLimits) -> list[tuple[Effect, str]]:
    """Every bound of the mesh's proxies that moved: a higher one lets a client hold more
    (widens), a lower one less (narrows)."""
    out: list[tuple[Effect, str]] = []
    for who, before, after in (
        ("the ingress", old.ingress, new.ingress),
        ("in-mesh listeners", old.internal, new.internal),
    ):
        for f in fields(before):
            was, now = getattr(before, f.name), getattr(after, f.name)
            if was == now:
                continue
            if f.name == "underscore_headers":
                wider = _UNDERSCORES.index(now) > _UNDERSCORES.index(was)
            else:
                wider = now > was
            text = _LIMITS.get(f.name, f"{f.name.replace('_', ' ')}: {{}}").format(_shown(now))
            out.append(("widens" if wider else "narrows", f"{who} {text} (was {_shown(was)})"))
    was, now = old.max_connections_per_proxy, new.max_connections_per_proxy
    if was != now:
        effect: Effect = "widens" if now > was else "narrows"
        out.append((effect, f"each proxy holds up to {now} connections (was {was})"))
    return out


def _shown(value: object) -> str:
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


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
