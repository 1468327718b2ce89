"""What Istio's gateways do not do at the boundary unless told, and what they cannot do at all.

Four checks on every ingress gateway that terminates mutual TLS (a federation ingress):

- ``tcp-handshake-pins``: a MUTUAL server in front of a TCP route completes the handshake with
  any certificate its CA bundle trusts; the network RBAC filter decides on the caller's first
  byte while ``tcp_proxy`` has already connected, so a server-first workload (databases, SMTP,
  SSH) greets a caller the AuthorizationPolicy denies. ``tls.subjectAltNames`` (exact SANs,
  pilot/pkg/networking/util ``StringToExactMatch``) refuses every other identity in the
  handshake. Seen on istiod 1.25.5: 26 bytes to a denied caller without, 0 with.
- ``gateway-handshake-logging``: istiod gives a gateway listener the access-log providers
  filtered to response flag ``NR`` only (pilot/pkg/networking/core/accesslog.go
  ``listenerAccessLogFilter``); a refused handshake (unknown CA, expired, name constraints, no
  client certificate, SAN not admitted) carries no flag and leaves no line. Only an EnvoyFilter
  adding a listener ``access_log`` logs it.
- ``gateway-local-replies``: the replies the gateway makes itself carry Envoy's words about
  the mesh behind it (``upstream connect error or disconnect/reset before headers. reset
  reason: remote connection failure``, ``no healthy upstream``, ``RBAC: access denied``). No
  Istio API sets the connection manager's ``local_reply_config`` (istiod writes none); an
  EnvoyFilter MERGE on the gateway's HTTP connection manager does. Judged on 403 and 503: the
  first ``status_code_filter`` mapper matching each must replace the body.
- ``istio-boundary-gaps``: what no Istio setting expresses, named where it applies.
  Istio authorizes a certificate when *any* of its URI SANs matches (``principals`` become
  ``authenticated.principal_name``; ``subjectAltNames`` become ``match_subject_alt_names``), so a
  leaf with two URI SANs (an X.509-SVID has one) passes when one is allowed. On an HTTP route the
  ingress can set a header from the verified SANs (``%DOWNSTREAM_PEER_URI_SAN%``, joined by
  ``,``) that the workload's policy matches exactly, which refuses such a leaf; a TCP route has
  nothing of the kind. What bounds it: the CA bundle's name constraints keep every SAN inside the
  caller's own trust domain, whose CA could issue the allowed identity anyway, and Istio's CA
  signs exactly one URI SAN per workload. HTTP routes without such a header: low; TCP routes,
  and HTTP routes whose callers are admitted by prefix (the workload's header match cannot
  refuse ``a,b`` when ``a`` has the prefix): info (reported wherever it applies; nothing to fix).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from meshfed.audit.context import AuditContext, NotAssessed
from meshfed.audit.install import root_namespace
from meshfed.audit.istio import (
    GatewayWorkload,
    bound_virtual_services,
    gateway_workloads,
    istio,
    subset,
)
from meshfed.audit.model import Severity
from meshfed.audit.registry import Hit, check
from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, dig, str_list, str_map

_TERMINATED = ("MUTUAL",)
_TCP_PROTOCOLS = ("TLS", "TCP")
_PEER_URI_SAN = "%DOWNSTREAM_PEER_URI_SAN%"


def _mutual_servers(workload: GatewayWorkload) -> Iterator[tuple[Doc, int, Obj]]:
    for gateway in workload.gateways:
        for i, server in enumerate(as_list(gateway.spec.get("servers"))):
            server = as_dict(server)
            if as_str(dig(server, "tls", "mode")) in _TERMINATED:
                yield gateway, i, server


def _ingresses(docs: list[Doc]) -> list[GatewayWorkload]:
    return [
        w
        for w in gateway_workloads(docs)
        if w.role == "ingress" and any(True for _ in _mutual_servers(w))
    ]


def _is_tcp(server: Obj) -> bool:
    return (as_str(dig(server, "port", "protocol")) or "").upper() in _TCP_PROTOCOLS


def _where(gateway: Doc, i: int, server: Obj) -> str:
    hosts = ", ".join(str_list(server.get("hosts"))) or "?"
    return f"Gateway {gateway.namespace}/{gateway.name} server {i} ({hosts})"


@check(
    "tcp-handshake-pins",
    title="TCP exports refuse denied callers in the handshake",
    severity=Severity.MEDIUM,
    why="Behind a MUTUAL gateway server, Istio's network RBAC decides on the caller's first "
    "byte while tcp_proxy has already connected upstream: a server-first workload (a database, "
    "SMTP, SSH) sends its greeting to a caller the AuthorizationPolicy denies.",
    fix="List the allowed callers' full SPIFFE IDs in the server's tls.subjectAltNames (exact "
    "matches; one server per exported host), so that any other identity is refused in the "
    "handshake. A policy that admits by prefix cannot be listed: name the identities.",
    controls=("SC-7", "AC-4", "IA-9"),
)
def tcp_handshake_pins(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    found = False
    for docs in ctx.scopes().values():
        for workload in _ingresses(docs):
            found = True  # an ingress without TCP routes passes
            for gateway, i, server in _mutual_servers(workload):
                if not _is_tcp(server):
                    continue
                tls = as_dict(server.get("tls"))
                if (
                    tls.get("subjectAltNames")
                    or tls.get("verifyCertificateHash")
                    or tls.get("verifyCertificateSpki")
                ):
                    continue
                yield Hit(
                    Severity.MEDIUM,
                    f"{_where(gateway, i, server)} terminates mTLS for a TCP route without "
                    "tls.subjectAltNames: every identity its CA bundle trusts completes the "
                    "handshake, and a denied one receives the workload's server-first bytes "
                    "before RBAC cuts it",
                    gateway.at("spec", "servers", i, "tls"),
                )
    if not found:
        raise NotAssessed("no gateway terminates mutual TLS")


def _reaches(envoy_filter: Doc, workload: GatewayWorkload, root: str) -> bool:
    labels = str_map(dig(envoy_filter.spec, "workloadSelector", "labels"))
    if envoy_filter.spec.get("targetRefs"):
        return False
    if envoy_filter.namespace == workload.namespace:
        return subset(labels, workload.labels)
    return envoy_filter.namespace == root and not labels


def _patched(
    docs: list[Doc], workload: GatewayWorkload, test: Callable[[Obj, set[int]], bool]
) -> bool:
    """Whether a patch of an EnvoyFilter that reaches the gateway ``workload`` passes ``test``
    (the patch, the gateway's listener ports)."""
    root = root_namespace(docs)
    ports = _listener_ports(docs, workload)
    return any(
        test(as_dict(p), ports)
        for ef in istio(docs, "EnvoyFilter")
        if _reaches(ef, workload, root)
        for p in as_list(ef.spec.get("configPatches"))
    )


def _logs_handshakes(patch: Obj, ports: set[int]) -> bool:
    """A LISTENER patch that adds an access log on one of the gateway's MUTUAL ports."""
    if as_str(patch.get("applyTo")) != "LISTENER":
        return False
    if as_str(dig(patch, "patch", "operation")) not in ("MERGE", "ADD"):
        return False
    if as_str(dig(patch, "match", "context")) not in (None, "", "ANY", "GATEWAY"):
        return False
    port = dig(patch, "match", "listener", "portNumber")
    if port is not None and port not in ports:
        return False
    return bool(as_list(dig(patch, "patch", "value", "access_log"))) or bool(
        as_list(dig(patch, "patch", "value", "accessLog"))
    )


def _listener_ports(docs: list[Doc], workload: GatewayWorkload) -> set[int]:
    """The ports the gateway's MUTUAL servers listen on: Gateway port numbers are Service
    ports, listeners bind the Service's targetPort (Istio translates)."""
    targets: dict[int, int] = {}
    for service in (d for d in docs if d.kind == "Service" and d.namespace == workload.namespace):
        if not subset(str_map(service.spec.get("selector")), workload.labels):
            continue
        for p in as_list(service.spec.get("ports")):
            p = as_dict(p)
            if isinstance(p.get("port"), int):
                target = p.get("targetPort")
                targets[p["port"]] = target if isinstance(target, int) else p["port"]
    ports = set()
    for _, _, server in _mutual_servers(workload):
        number = dig(server, "port", "number")
        if isinstance(number, int):
            ports.add(targets.get(number, number))
    return ports


@check(
    "gateway-handshake-logging",
    title="Refused handshakes at the federation ingress are logged",
    severity=Severity.MEDIUM,
    why="Istio logs a gateway listener only for NR (no filter chain): a caller refused in the "
    "TLS handshake (unknown CA, expired or foreign certificate, name-constraint violation, no "
    "client certificate, an identity the server does not admit) leaves no access-log line, so "
    "probing of the boundary goes unseen. Telemetry and meshConfig cannot change that.",
    fix="Add an EnvoyFilter on the ingress gateway (applyTo LISTENER, context GATEWAY, the "
    "listener's port, operation MERGE) whose value adds an access_log filtered by CEL "
    "connection.transport_failure_reason != '' (meshfed render writes one).",
    controls=("SC-7", "AU-2", "AU-12", "PCI 10.2.1"),
)
def gateway_handshake_logging(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    found = False
    for docs in ctx.scopes().values():
        for workload in _ingresses(docs):
            found = True
            logged = _patched(docs, workload, _logs_handshakes)
            if not logged:
                yield Hit(
                    Severity.MEDIUM,
                    f"the {workload.describe()} refuses TLS handshakes without a log line: no "
                    "EnvoyFilter gives its listener an access log",
                    workload.location(),
                )
    if not found:
        raise NotAssessed("no gateway terminates mutual TLS")


_HCM = "envoy.filters.network.http_connection_manager"
_JUDGED = (403, 503)
"""RBAC's refusal and the router's failed connection: the local replies every caller can
provoke, and the ones whose bodies name the mesh's insides."""
_OPS = {"EQ": int.__eq__, "GE": int.__ge__, "LE": int.__le__}


def _replaced(config: Obj, status: int) -> bool:
    """Whether a ``local_reply_config`` replaces the body of a local reply with ``status``:
    Envoy applies the first mapper whose filter matches (other filters than a status
    comparison are passed over: what they match cannot be told here)."""
    for mapper in (as_dict(m) for m in as_list(config.get("mappers"))):
        comparison = as_dict(
            dig(mapper, "filter", "status_code_filter", "comparison")
            or dig(mapper, "filter", "statusCodeFilter", "comparison")
        )
        value = dig(comparison, "value", "default_value")
        if value is None:
            value = dig(comparison, "value", "defaultValue")
        op = _OPS.get(as_str(comparison.get("op")) or "EQ")
        if op is None or not isinstance(value, int) or not op(status, value):
            continue
        return any(k in mapper for k in ("body", "body_format_override", "bodyFormatOverride"))
    return False


def _words_replies(patch: Obj, ports: set[int]) -> bool:
    """A MERGE on the gateway's HTTP connection manager whose ``local_reply_config`` replaces
    the body of every judged status."""
    if as_str(patch.get("applyTo")) != "NETWORK_FILTER":
        return False
    if as_str(dig(patch, "patch", "operation")) != "MERGE":
        return False
    if as_str(dig(patch, "match", "context")) not in (None, "", "ANY", "GATEWAY"):
        return False
    port = dig(patch, "match", "listener", "portNumber")
    if port is not None and port not in ports:
        return False
    if as_str(dig(patch, "match", "listener", "filterChain", "filter", "name")) != _HCM:
        return False
    typed = as_dict(
        dig(patch, "patch", "value", "typed_config") or dig(patch, "patch", "value", "typedConfig")
    )
    config = as_dict(typed.get("local_reply_config") or typed.get("localReplyConfig"))
    return all(_replaced(config, status) for status in _JUDGED)


@check(
    "gateway-local-replies",
    title="The federation ingress's own replies say nothing of the mesh behind it",
    severity=Severity.LOW,
    why="The replies a gateway makes itself carry Envoy's words: a caller of an exported "
    "service whose workload is down reads 'upstream connect error or disconnect/reset before "
    "headers. reset reason: remote connection failure', a refused one 'RBAC: access denied', "
    "which tell it what proxy, policy and failure lie behind the boundary. No Istio API sets "
    "the bodies of these replies.",
    fix="Add an EnvoyFilter on the ingress gateway (applyTo NETWORK_FILTER, context GATEWAY, "
    "filterChain.filter.name envoy.filters.network.http_connection_manager, operation MERGE) "
    "whose typed_config sets local_reply_config mappers replacing the body by status (no "
    "status_code: the status stays, the access log keeps the reason); meshfed render writes "
    "one, and one for each exported HTTP workload's SIDECAR_INBOUND.",
    controls=("SI-11", "SC-7(16)"),
)
def gateway_local_replies(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    found = False
    for docs in ctx.scopes().values():
        for workload in _ingresses(docs):
            if all(_is_tcp(server) for _, _, server in _mutual_servers(workload)):
                continue  # no HTTP: Envoy makes no HTTP replies there
            found = True
            worded = _patched(docs, workload, _words_replies)
            if not worded:
                yield Hit(
                    Severity.LOW,
                    f"the {workload.describe()} answers refused and failed requests in Envoy's "
                    "words (RBAC: access denied; upstream connect error ... reset reason): no "
                    "EnvoyFilter gives its HTTP connection manager a local_reply_config",
                    workload.location(),
                )
    if not found:
        raise NotAssessed("no gateway terminates mutual TLS for HTTP")


def _guarded_hosts(docs: list[Doc], workload: GatewayWorkload) -> set[str]:
    """Hosts whose every ingress route replaces a header with the verified URI SANs (remove +
    set), when some AuthorizationPolicy matches that header: the workload can then refuse a
    leaf with two URI SANs (the joined value equals no single identity)."""
    matched = {
        as_str(cond.get("key"))
        for p in istio(docs, "AuthorizationPolicy")
        for rule in as_list(p.spec.get("rules"))
        for cond in (as_dict(c) for c in as_list(as_dict(rule).get("when")))
    }
    out: set[str] = set()
    for vs in bound_virtual_services(docs, workload):
        routes = [as_dict(r) for r in as_list(vs.spec.get("http"))]
        if not routes:
            continue
        guarded = True
        for route in routes:
            request = as_dict(dig(route, "headers", "request"))
            removed = {h.lower() for h in str_list(request.get("remove"))}
            headers = {
                k.lower()
                for k, v in as_dict(request.get("set")).items()
                if isinstance(v, str) and v.strip() == _PEER_URI_SAN
            }
            if not any(h in removed and f"request.headers[{h}]" in matched for h in headers):
                guarded = False
        if guarded:
            out |= set(str_list(vs.spec.get("hosts")))
    return out


def _prefix_hosts(docs: list[Doc]) -> set[str]:
    """SNIs some ALLOW rule admits callers of by prefix (``ns/x/*``, ``td/*``): a workload's
    exact-or-prefix header match cannot tell ``a,b`` from ``a`` when ``a`` has the prefix."""
    out: set[str] = set()
    for policy in istio(docs, "AuthorizationPolicy"):
        for rule in (as_dict(r) for r in as_list(policy.spec.get("rules"))):
            principals = [
                p
                for f in as_list(rule.get("from"))
                for p in str_list(as_dict(as_dict(f).get("source")).get("principals"))
            ]
            if not any(p.endswith("*") for p in principals):
                continue
            for cond in (as_dict(c) for c in as_list(rule.get("when"))):
                if as_str(cond.get("key")) == "connection.sni":
                    out |= set(str_list(cond.get("values")))
    return out


@check(
    "istio-boundary-gaps",
    title="What Istio cannot enforce at the federation ingress is named",
    severity=Severity.LOW,
    why="Istio authorizes a client certificate when any one of its URI SANs is allowed (an "
    "X.509-SVID has exactly one): a leaf with two URI SANs, one allowed, passes the gateway. "
    "Bounded by the CA bundle's name constraints (every SAN lies in the caller's own trust "
    "domain, whose CA could issue the allowed identity anyway) and by issuance (Istio's CA signs "
    "one URI SAN per workload): it takes a misissuing CA of the consumer mesh. Reported as info on "
    "TCP routes, where no setting refuses it.",
    fix="HTTP exports: have the ingress remove and set a header from %DOWNSTREAM_PEER_URI_SAN% "
    "and the exported workload's AuthorizationPolicy match it exactly. TCP exports: no Istio "
    "setting refuses such a leaf; keep the CA bundle name-constrained, or export over HTTP.",
    controls=("IA-3", "IA-9", "AC-3"),
)
def istio_boundary_gaps(ctx: AuditContext) -> Iterator[Hit]:
    ctx.require_docs()
    found = False
    for docs in ctx.scopes().values():
        for workload in _ingresses(docs):
            found = True
            guarded = _guarded_hosts(docs, workload)
            by_prefix = _prefix_hosts(docs)
            for gateway, i, server in _mutual_servers(workload):
                hosts = str_list(server.get("hosts"))
                if _is_tcp(server):
                    # Nothing to fix: reported (info) wherever it applies.
                    yield Hit(
                        Severity.INFO,
                        f"{_where(gateway, i, server)}: a leaf with two URI SANs, one of them "
                        "allowed, is admitted to this TCP route (Istio matches any SAN, and a "
                        "TCP route has no header to pin one); bounded by the CA bundle's name "
                        "constraints and by issuance. The gateway also connects to the route's "
                        "workload when it accepts a connection, before the handshake (Istio "
                        "1.25's tcp_proxy cannot wait), so every stalled or refused handshake "
                        "holds a workload connection until the handshake bound closes it",
                        gateway.at("spec", "servers", i),
                    )
                elif set(hosts) <= guarded and set(hosts) & by_prefix:
                    yield Hit(
                        Severity.INFO,
                        f"{_where(gateway, i, server)}: a leaf with two URI SANs whose first one "
                        "a prefix principal admits passes the exported workload's check too "
                        "(Istio matches header values by exact, prefix or suffix only; the joined "
                        "SANs start with the allowed prefix); bounded by the CA bundle's name "
                        "constraints and by issuance, refused by the local federation",
                        gateway.at("spec", "servers", i),
                    )
                elif not set(hosts) <= guarded:
                    yield Hit(
                        Severity.LOW,
                        f"{_where(gateway, i, server)}: a leaf with two URI SANs, one of them "
                        "allowed, is admitted (no policy of the exported workload matches the "
                        "caller's SANs, as the ingress sets them in a header, exactly)",
                        gateway.at("spec", "servers", i),
                    )
    if not found:
        raise NotAssessed("no gateway terminates mutual TLS")
