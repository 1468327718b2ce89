"""One case generator for both translations of the plan's authorization.

A *case* is one attempt to use a mesh's federation ingress: the SNI, the URI SANs of the
caller's certificate (or no certificate), the :authority, the method and the path. The plan says
what should happen (`plan_verdict`); the local Envoy rendering (tests/test_authz_matrix.py, with
the matcher evaluator of tests/test_render_envoy_rbac.py) and the Istio rendering
(tests/istio_oracle.py) are each evaluated on the same cases and must agree with it.

Callers are leaves a real CA of the federation could issue: every URI SAN of one leaf lies in
one trust domain (meshfed's intermediates, and the ingress's cross-certificates, are
name-constrained to it), so the chain is good exactly when that domain is trusted. Leaves that
break a name constraint are refused in the handshake by BoringSSL and are tested on real Envoy
(tests/test_pki_cross.py, tests/test_local_authz.py).

`generated_spec(seed)` writes a random but valid federation: meshes in either trust mode,
HTTP and TCP exports, exact, namespace-prefix and whole-mesh principals, methods, exact and
prefix paths, several consumers, imports with failover aliases.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from meshfed.plan.boundary import PathPolicy
from meshfed.plan.model import FederationPlan, IngressServer, MeshPlan

METHODS = ("GET", "POST", "PUT", "DELETE")
STRANGER = "spiffe://stranger.invalid/ns/x/sa/y"
"""An identity of a trust domain outside the federation: its chain never verifies."""


@dataclass(frozen=True)
class Case:
    sni: str
    sans: tuple[str, ...] | None
    """The URI SANs of the caller's leaf; None: no client certificate at all."""
    method: str = "GET"
    path: str = "/"
    authority: str | None = None
    """The request's :authority; None: the SNI (what a client sends)."""

    @property
    def host(self) -> str:
        return self.authority if self.authority is not None else self.sni

    @property
    def domain(self) -> str | None:
        """The one trust domain of the leaf's URI SANs."""
        if not self.sans:
            return None
        return self.sans[0].removeprefix("spiffe://").partition("/")[0]


# --- paths: what an Envoy connection manager does to one before anyone decides on it ------------


def url_path(path: str) -> str:
    """RBAC's ``url_path`` and Envoy's PathMatcher: the path without query and fragment."""
    for i, c in enumerate(path):
        if c in "?#":
            return path[:i]
    return path


ESCAPED_SLASHES = ("%2f", "%5c")


def normalize(path: str, normalize_path: bool, merge_slashes: bool, escaped: str) -> str | None:
    """The path after the HTTP connection manager, or None when it answers 400.

    Envoy (``ConnectionManagerUtility::maybeNormalizePath``): escaped slashes first
    (``REJECT_REQUEST``: 400; ``KEEP_UNCHANGED``: left), then RFC 3986 dot-segment removal
    (``normalize_path``), then ``merge_slashes``; the query is left alone. The cases use no
    backslashes and no percent-encoded dots, where Envoy's canonicalizer does more.
    """
    head, sep, query = path.partition("?")
    if escaped == "REJECT_REQUEST" and any(e in head.lower() for e in ESCAPED_SLASHES):
        return None
    if normalize_path:
        out: list[str] = []
        segments = head.split("/")[1:]
        for i, segment in enumerate(segments):
            last = i == len(segments) - 1
            if segment == ".":
                if last:
                    out.append("")
            elif segment == "..":
                if out:
                    out.pop()
                if last:
                    out.append("")
            else:
                out.append(segment)
        head = "/" + "/".join(out)
    if merge_slashes:
        while "//" in head:
            head = head.replace("//", "/")
    return head + sep + query


def plan_path(path: str, policy: PathPolicy) -> str | None:
    """The path the plan's path policy gives the workload (None: refused with 400)."""
    return normalize(
        path, policy.normalize, policy.merge_slashes, f"{policy.escaped_slashes}_REQUEST"
    )


# --- what the plan says ---------------------------------------------------------------------------


def plan_verdict(mesh: MeshPlan, case: Case) -> bool:
    """Deny by default; a request crosses only if the plan's server for its SNI, reached by its
    own name, allows its one URI SAN (an X.509-SVID has exactly one), method and path."""
    server = mesh.ingress.server(case.sni)
    if server is None or case.sans is None or len(case.sans) != 1:
        return False
    (caller,) = case.sans
    if server.protocol == "TCP":
        return any(any(p.matches(caller) for p in rule.principals) for rule in server.allow)
    if case.host != server.sni:
        return False  # one export per name: another export's name on this SNI is refused
    path = plan_path(case.path, mesh.boundary.paths)
    return path is not None and server.allows(caller, case.method, url_path(path))


def handshake_domains(plan: FederationPlan, mesh: MeshPlan) -> frozenset[str]:
    """Trust domains whose leaves the ingress's CA bundle verifies: SharedRoot, every mesh's (one
    root; each intermediate constrained to its mesh); Federated, the consumers' only (the
    federation anchor's cross-certificates)."""
    if plan.trust_mode == "SharedRoot":
        return frozenset(m.trust_domain for m in plan.meshes)
    return frozenset(d for b in mesh.ingress.trusted for d in b.trust_domains)


# --- the cases ------------------------------------------------------------------------------------


def _near_misses(value: str) -> list[str]:
    """Identities that differ from ``value`` by a little: longer, a sibling, another domain."""
    td, _, rest = value.removeprefix("spiffe://").partition("/")
    out = [value + "x", f"spiffe://{td}x/{rest}", f"spiffe://{td}/{rest}x/sa/z"]
    if rest:
        out.append(f"spiffe://{td}/{rest[:-1]}")
    return out


def identities(plan: FederationPlan, mesh: MeshPlan, compact: bool = False) -> list[str]:
    """Every workload and gateway of the federation, every principal the mesh's rules name,
    identities just beside them, and a stranger. ``compact``: one workload per other mesh and
    the first near miss of each principal."""
    found: set[str] = {STRANGER}
    for m in plan.meshes:
        workloads = sorted(w.spiffe_id for w in m.workloads)
        found |= set(workloads[:1] if compact else workloads)
        found |= {m.ingress.spiffe_id} if compact else {m.ingress.spiffe_id, m.egress.spiffe_id}
    for server in mesh.ingress.servers:
        for rule in server.allow:
            for p in rule.principals:
                if p.prefix:
                    inside = "ns/generated/sa/caller" if p.value.endswith("/") else "x/sa/y"
                    found.add(p.value + inside)
                    misses = _near_misses(p.value.rstrip("/"))
                else:
                    found.add(p.value)
                    misses = _near_misses(p.value)
                found |= set(misses[1:2] if compact else misses)
    return sorted(i for i in found if i.startswith("spiffe://") and "," not in i)


def callers(
    plan: FederationPlan, mesh: MeshPlan, compact: bool = False
) -> list[tuple[str, ...] | None]:
    """No certificate, a certificate without URI SAN, one SAN each, and two SANs of one domain
    (an allowed identity beside a denied one, both orders; the same one twice)."""
    ids = identities(plan, mesh, compact)
    out: list[tuple[str, ...] | None] = [None, (), *((i,) for i in ids)]
    for server in mesh.ingress.servers:
        for rule in server.allow:
            allowed = next((p.value for p in rule.principals if not p.prefix), None)
            if allowed is None:
                continue
            domain = allowed.removeprefix("spiffe://").partition("/")[0]
            denied = next(
                (i for i in ids if i.startswith(f"spiffe://{domain}/") and not server.allows(i)),
                None,
            )
            if denied is not None:
                out += [(allowed, denied), (denied, allowed)]
            out.append((allowed, allowed))
    unique: list[tuple[str, ...] | None] = []
    for c in out:
        if c not in unique:
            unique.append(c)
    return unique


def paths(server: IngressServer, compact: bool = False) -> list[str]:
    """The rules' paths and what lies just beside them, including spellings normalization
    changes (dot segments, doubled slashes) and an escaped slash."""
    out = {"/"} if compact else {"/", "/health", "/x/../health", "//health"}
    for rule in server.allow:
        for p in rule.paths:
            v = p.value
            if p.prefix:
                out |= {v + "sub", v.rstrip("/") or "/", v + "a/../../escape"}
                if not compact:
                    out.add(v + "a%2Fb")
            else:
                out |= {v, v + "x", "/" + v}
                if not compact:
                    out |= {v + "/", v + "?q=1", "/x/.." + v, v + "/.."}
                if v.count("/") > 1:
                    out.add(v[: v.rindex("/")] + "%2F" + v[v.rindex("/") + 1 :])
    return sorted(out)


def cases_for(plan: FederationPlan, mesh: MeshPlan, compact: bool = False) -> Iterator[Case]:
    """The matrix for one mesh's ingress: callers x SNIs (its servers' and one unknown) x
    methods x paths (HTTP), and a request under another export's name (domain fronting).
    ``compact`` (for many generated federations): fewer bystanders, near misses, methods and
    path spellings, every rule's principals, methods and paths still in."""
    servers = mesh.ingress.servers
    unknown = f"unknown.{mesh.name}.invalid"
    who = callers(plan, mesh, compact)
    for sans in who:
        yield Case(unknown, sans)
    for server in servers:
        if server.protocol == "TCP":
            for sans in who:
                yield Case(server.sni, sans)
            continue
        named = {m for r in server.allow for m in r.methods}
        spare = [m for m in METHODS if m not in named]
        methods = sorted({*named, *spare[:1]} if compact else {*METHODS, *named})
        for sans in who:
            for method in methods:
                for path in paths(server, compact):
                    yield Case(server.sni, sans, method, path)
        others = [s.sni for s in servers if s.sni != server.sni]
        for sans in who:
            for other in others[:1]:
                yield Case(server.sni, sans, "GET", "/", authority=other)


# --- generated federations ------------------------------------------------------------------------


def generated_spec(seed: int) -> dict[str, Any]:
    """A random, valid federation spec (as a dict) for ``seed``."""
    rng = random.Random(seed)
    mode = rng.choice(["SharedRoot", "Federated"])
    n_meshes = rng.randint(2, 4)
    names = [f"m{i}" for i in range(n_meshes)]
    namespaces = ["shop", "ops", "billing", "batch"]
    meshes = []
    workloads: dict[str, list[dict[str, Any]]] = {}
    for i, name in enumerate(names):
        ws = []
        for j in range(rng.randint(2, 4)):
            ns = rng.choice(namespaces)
            protocol = "TCP" if rng.random() < 0.25 else "HTTP"
            ws.append(
                {
                    "name": f"w{j}",
                    "namespace": ns,
                    "serviceAccount": f"sa{j}",
                    "port": 9000 + j if protocol == "TCP" else 8080,
                    "protocol": protocol,
                }
            )
        workloads[name] = ws
        meshes.append(
            {
                "name": name,
                "trustDomain": f"{name}.gen{seed}.test",
                "ingress": {"address": "127.0.0.1", "port": 20000 + i},
                "workloads": ws,
            }
        )
    exports: list[dict[str, Any]] = []
    for name in names:
        others = [n for n in names if n != name]
        for w in rng.sample(workloads[name], rng.randint(1, len(workloads[name]))):
            consumers: list[dict[str, Any]] = []
            for consumer in rng.sample(others, rng.randint(1, len(others))):
                cw = workloads[consumer]
                shape = rng.random()
                if shape < 0.5:
                    picked = rng.sample(cw, rng.randint(1, len(cw)))
                    principals = sorted(
                        {f"ns/{x['namespace']}/sa/{x['serviceAccount']}" for x in picked}
                    )
                elif shape < 0.8:
                    principals = [f"ns/{rng.choice(cw)['namespace']}/*"]
                else:
                    principals = ["*"]
                entry: dict[str, Any] = {"mesh": consumer, "principals": principals}
                if w["protocol"] == "HTTP":
                    if rng.random() < 0.6:
                        entry["methods"] = sorted(rng.sample(list(METHODS), rng.randint(1, 2)))
                    if rng.random() < 0.6:
                        choices = ["/v1/items", "/v1/items/*", "/status", "/api/v2/*", "/a/b/c"]
                        entry["paths"] = sorted(rng.sample(choices, rng.randint(1, 2)))
                consumers.append(entry)
            exports.append(
                {
                    "name": f"{w['name']}-x",
                    "mesh": name,
                    "workload": f"{w['namespace']}/{w['name']}",
                    "consumers": consumers,
                }
            )
    imports: list[dict[str, Any]] = []
    used: set[tuple[str, str]] = set()
    aliases: dict[tuple[str, str], str] = {}
    """(mesh, wire host) -> the export of that mesh answering it as a failover alias."""
    for export in exports:
        for consumer in export["consumers"]:
            if rng.random() < 0.5:
                continue
            host = f"{export['name']}-{export['mesh']}.local-{consumer['mesh']}.svc.cluster.local"
            sources = [f"{export['mesh']}/{export['name']}"]
            # A failover source: another mesh's export of the same protocol that lets this
            # consumer in too.
            protocol = _protocol(workloads, export)
            wire = f"{export['name']}.{export['mesh']}.gen{seed}.global"
            for other in exports:
                if other["mesh"] in (export["mesh"], consumer["mesh"]):
                    continue
                if _protocol(workloads, other) != protocol:
                    continue
                ref = f"{other['mesh']}/{other['name']}"
                if aliases.get((other["mesh"], wire), ref) != ref:
                    continue  # that mesh already answers this name for another export
                if any(c["mesh"] == consumer["mesh"] for c in other["consumers"]):
                    aliases[(other["mesh"], wire)] = ref
                    sources.append(ref)
                    break
            if (consumer["mesh"], host) in used:
                continue
            used.add((consumer["mesh"], host))
            imports.append({"mesh": consumer["mesh"], "host": host, "port": 80, "from": sources})
    return {
        "apiVersion": "meshfed.dev/v1alpha1",
        "kind": "Federation",
        "metadata": {"name": f"gen{seed}"},
        "spec": {
            "trust": {"mode": mode},
            "meshes": meshes,
            "exports": exports,
            "imports": imports,
        },
    }


def _protocol(workloads: dict[str, list[dict[str, Any]]], export: dict[str, Any]) -> str:
    ns, name = export["workload"].split("/")
    (w,) = [x for x in workloads[export["mesh"]] if x["name"] == name and x["namespace"] == ns]
    return str(w["protocol"])
