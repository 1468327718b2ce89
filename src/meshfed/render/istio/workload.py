"""Defense in depth to the exported workload, with Istio's means (`meshfed.plan.guard`).

Two halves:

- the ingress sets the caller header from the caller's verified certificate on every route of an
  export (VirtualService ``headers.request``: ``remove`` then ``set`` to
  ``%DOWNSTREAM_PEER_URI_SAN%``; Istio passes header values to Envoy verbatim and allows Envoy's
  command operators in them, pkg/config/validation ``ValidateHTTPHeaderValue``; removal runs
  before the set on a route, so a caller's copy never survives, also where the value would be
  empty), and strips the override headers the plan removes (per route: Istio has no virtual
  host or route-configuration level removal, `request_headers`);
- the workload's sidecar refuses, with a DENY AuthorizationPolicy, what the guard does not
  admit. DENY, not ALLOW: DENY runs before every ALLOW policy (so the user's own ALLOW policies
  can neither widen it nor be made default-deny by it), and in-mesh traffic stays the user's.

The guard's ALLOW rule "from the ingress, a caller allowed for this method and path" becomes
DENY rules (istiod's semantics, research notes Q12: a rule matches when its ``from``, ``to`` and
every ``when`` match; values of one field are ORed; ``notValues`` negates):

1. from the ingress, the caller header none of the export's callers: refused (no header, a
   forged or unknown caller, several URI SANs joined by ``,`` that equal no single identity);
2. from anyone else, carrying the caller header: refused (only the ingress sets it); scoped to
   the workload's port: on a TCP filter chain istiod drops a DENY rule's HTTP-only conditions
   (the header), which would refuse all of the mesh's TCP traffic to the pod otherwise;
3. per caller (or group of callers with the same rules), what none of its rules allows. A caller
   covered by rules r1..rn is allowed iff some ri allows the method AND the path, so it is
   refused iff for every ri the method or the path is outside ri: one DENY rule per way of
   choosing, for each ri, its method or its path (``notMethods`` of the chosen methods'
   union, ``notPaths`` of the others'). Usually a caller has one rule: two DENY rules.
   A prefix caller's rules leave out the callers listed below it, which have rules of their
   own (every rule covering the prefix covers them too).

Rules 1 and 3 concern only requests from the ingress, which reaches an HTTP workload only on its
HTTP port, so they are not scoped to a port; rule 2 is. Istio compares ``ports`` with the port
the sidecar receives on (the container port): the spec's workload ``port`` must be it (the
Service's ``targetPort``), or rule 2 never matches (rules 1 and 3 still hold).

Where Istio cannot say what the plan says: a caller admitted by prefix (``ns/x/*``, ``*``) with
two URI SANs whose first one matches the prefix passes rule 1 and 3 (header values match by
exact, prefix or suffix only, no "contains"); name constraints keep both SANs in the consumer's
trust domain. The local federation's sidecar refuses it (Envoy's matcher denies a ``,``).

Pods are selected by ``app: <workload name>`` (Istio's recommended label; the spec names the
workload by its Service, whose selector meshfed does not read).

XFCC from anyone but the ingress. A sidecar appends its own element for the direct peer to
whatever ``x-forwarded-client-cert`` arrives (APPEND_FORWARD) before any filter runs, and
AuthorizationPolicy header values match only exactly, by prefix or by suffix: no policy can say
"one element only". A mesh workload's own sidecar drops what its application sends (outbound
SANITIZE), but a workload that speaks mTLS itself with its own certificate put a forged element
first, and it reached the exported workload (seen on istiod 1.25.5). So each exported HTTP
workload's sidecar also gets an EnvoyFilter inserting an Envoy RBAC filter (before the router,
after Istio's own authorization filters; it removes and rewrites nothing) that refuses an XFCC
with an element before the sidecar's own from any peer but the ingress, as the local
federation's sidecar does.
"""

from __future__ import annotations

from itertools import product

from meshfed.plan.guard import WorkloadGuard
from meshfed.plan.model import AllowRule, FederationPlan, IngressServer, MeshPlan, PathMatch
from meshfed.render.istio.objects import Obj, workload_obj
from meshfed.spiffe import PrincipalMatch, istio_principal


def route_headers(mesh: MeshPlan, server: IngressServer) -> Obj:
    """The ``headers`` of every route of ``server``'s VirtualService at the ingress."""
    boundary = mesh.boundary
    return {
        "request": {
            "remove": list(boundary.request_headers_removed_for(server.sni)),
            "set": {boundary.caller_header: "%DOWNSTREAM_PEER_URI_SAN%"},
        },
        "response": {"remove": list(boundary.response_headers_removed)},
    }


def _value(match: PrincipalMatch) -> str:
    """A caller as an Istio header value: exact, or ``<prefix>*``."""
    return f"{match.value}*" if match.prefix else match.value


def _path(path: PathMatch) -> str:
    return f"{path.value}*" if path.prefix else path.value


def _refusals(rules: list[AllowRule]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(notMethods, notPaths) of the DENY rules that refuse exactly what none of ``rules``
    allows; empty: every request is allowed."""
    if any(not r.methods and not r.paths for r in rules):
        return []
    # Per rule, what may refuse it: its method ("m"), its path ("p"), either.
    choices: list[tuple[str, ...]] = []
    for r in rules:
        choices.append(("m",) if not r.paths else ("p",) if not r.methods else ("m", "p"))
    out = set()
    for pick in product(*choices):
        chosen = list(zip(rules, pick, strict=True))
        methods = sorted({m for r, c in chosen if c == "m" for m in r.methods})
        paths = sorted({_path(p) for r, c in chosen if c == "p" for p in r.paths})
        out.add((tuple(methods), tuple(paths)))
    return sorted(out)


def _copied(conditions: list[Obj]) -> list[Obj]:
    """A copy of ``when`` conditions (their values are lists of strings): no YAML aliases in
    the output, and a list copy instead of ``deepcopy``'s walk of every string (a thousand
    callers' values, again for every caller: a third of a second of each render)."""
    return [{k: list(v) if isinstance(v, list) else v for k, v in c.items()} for c in conditions]


def _deny_rules(guard: WorkloadGuard, ingress: str) -> list[Obj]:
    header = f"request.headers[{guard.header}]"

    def from_ingress() -> list[Obj]:  # a new object each time: no YAML aliases in the output
        return [{"source": {"principals": [ingress]}}]

    keys = guard.callers
    rules: list[Obj] = [
        {"from": from_ingress(), "when": [{"key": header, "notValues": [_value(k) for k in keys]}]},
        {
            "from": [{"source": {"notPrincipals": [ingress]}}],
            "to": [{"operation": {"ports": [str(guard.workload.port)]}}],
            "when": [{"key": header, "values": ["*"]}],
        },
    ]
    for key in keys:
        when: list[Obj] = [{"key": header, "values": [_value(key)]}]
        below = guard.callers_below(key) if key.prefix else ()
        if below:
            when.append({"key": header, "notValues": [_value(k) for k in below]})
        for not_methods, not_paths in _refusals(list(guard.rules_for(key))):
            operation: Obj = {}
            if not_methods:
                operation["notMethods"] = list(not_methods)
            if not_paths:
                operation["notPaths"] = list(not_paths)
            rules.append(
                {
                    "from": from_ingress(),
                    "to": [{"operation": operation}],
                    "when": _copied(when),
                }
            )
    return rules


def guard_policies(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """Per exported HTTP workload, the DENY AuthorizationPolicy of its sidecar."""
    ingress = istio_principal(PrincipalMatch(mesh.ingress.spiffe_id))
    return [
        workload_obj(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "meshfed-guard-",
            plan.name,
            guard.workload,
            spec={
                "selector": {"matchLabels": {"app": guard.workload.name}},
                "action": "DENY",
                "rules": _deny_rules(guard, ingress),
            },
        )
        for guard in mesh.workload_guards
    ]


XFCC = "x-forwarded-client-cert"
HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
HCM_NAME = "envoy.filters.network.http_connection_manager"
APPENDED = (",By=", ",Hash=")
"""How the element a sidecar appends to an XFCC that arrived begins: Envoy joins elements with
``,`` and writes ``By`` (the sidecar's own URI SAN) first, else ``Hash``. A value holding one
of these has an element before the sidecar's, which only the ingress may send. (A comma alone
would also refuse an honest peer whose certificate's subject holds one, e.g. SPIRE's
``O=SPIRE,C=US``, written inside ``Subject="..."``; a regex for "a comma outside quotes" is
defeated by an unbalanced quote in the forged element.)"""


def xfcc_filter(guard: WorkloadGuard) -> Obj:
    """The Envoy HTTP RBAC filter refusing, from any peer but the ingress, an XFCC the peer
    sent (the sidecar's own element is always there, appended after the peer's)."""
    return {
        "name": "meshfed.xfcc-only-from-ingress",
        "typed_config": {
            "@type": HTTP_RBAC,
            "rules": {
                "action": "DENY",
                "policies": {
                    "xfcc-not-from-ingress": {
                        "permissions": [
                            {"header": {"name": XFCC, "string_match": {"contains": appended}}}
                            for appended in APPENDED
                        ],
                        "principals": [
                            {
                                "not_id": {
                                    "authenticated": {"principal_name": {"exact": guard.forwarder}}
                                }
                            }
                        ],
                    }
                },
            },
        },
    }


def xfcc_filters(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """Per exported HTTP workload, the EnvoyFilter adding `xfcc_filter` to its sidecar's
    inbound HTTP chain on the workload's port."""
    out = []
    for guard in mesh.workload_guards:
        listener = {
            "portNumber": guard.workload.port,
            "filterChain": {
                "filter": {"name": HCM_NAME, "subFilter": {"name": "envoy.filters.http.router"}}
            },
        }
        out.append(
            workload_obj(
                "networking.istio.io/v1alpha3",
                "EnvoyFilter",
                "meshfed-xfcc-",
                plan.name,
                guard.workload,
                spec={
                    "workloadSelector": {"labels": {"app": guard.workload.name}},
                    "configPatches": [
                        {
                            "applyTo": "HTTP_FILTER",
                            "match": {"context": "SIDECAR_INBOUND", "listener": listener},
                            "patch": {"operation": "INSERT_BEFORE", "value": xfcc_filter(guard)},
                        }
                    ],
                },
            )
        )
    return out
