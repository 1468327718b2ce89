"""The plan's connection limits and failover policy (`meshfed.plan.limits`) with Istio's means.

What Istio 1.25 renders for a gateway by itself (research notes Q8, istiod sources): its filter
chains carry ``transport_socket_connect_timeout: 15s`` (pilot/pkg/networking/core/listener.go,
``defaultGatewayTransportSocketConnectTimeout``), the listener filters Envoy's 15 s; the HCM
``stream_idle_timeout: 0s`` (off, listener_builder.go), no request-headers timeout, an idle
timeout only from ``ISTIO_META_IDLE_TIMEOUT``; runtime
``overload.global_downstream_max_connections`` at 2^31-1 (pkg/bootstrap/config.go): no cap.

What a user can set, and where each limit goes here:

- the gateway pods' ProxyConfig (annotation ``proxy.istio.io/config``, read at injection, so a
  change takes a rollout restart): ``proxyMetadata.ISTIO_META_IDLE_TIMEOUT`` (the HCM's and the
  default tcp_proxy idle timeout) and ``runtimeValues``: the proxy's connection cap (Envoy still
  honours ``overload.global_downstream_max_connections``, measured on 1.40) and the listener's
  (``envoy.resource_limits.listener.<wildcard>_<port>.connection_limit``; a gateway listener
  is named ``<bind>_<targetPort>``, see `GATEWAY_WILDCARDS`);
- a DestinationRule the gateway uses for an exported workload (``meshfed-system``, exported to
  that namespace only): the TCP session idle bound (top-level ``connectionPool.tcp.idleTimeout``
  reaches the gateway's tcp_proxy, networkfilter.go) and the upstream connection cap;
- everything else only through an EnvoyFilter on the gateway (the handshake bound, the listener
  filters' bound, per-connection buffers, the HCM's header, stream and request bounds and header
  limits): ``<gateway>-limits``. It touches no TLS context, RBAC filter or XFCC setting.

And on the consumer side, the egress gateway's DestinationRule for each remote host: the connect
timeout and passive ejection (``failover_policy``). Istio has no active health checking in a
DestinationRule: the local federation's TLS probe (which also sees an exporter's ingress that
accepts and closes at its connection cap, or answers its handshake late) has no Istio
equivalent. On Istio the egress fails over on connect failures and timeouts only; an exporter's
ingress saturated by stalled handshakes keeps getting calls until its cap frees (``meshfed
audit`` says so).
"""

from __future__ import annotations

from meshfed.plan.limits import FailoverPolicy, ListenerLimits
from meshfed.plan.model import FederationPlan, MeshPlan, Workload
from meshfed.plan.names import EGRESS_GATEWAY, EGRESS_PORT, GATEWAY_NAMESPACE, INGRESS_GATEWAY
from meshfed.render.envoy.limits import chain_fields, duration, hcm_fields, listener_fields
from meshfed.render.istio.objects import Obj, obj, slug

HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


GATEWAY_WILDCARDS = ("0.0.0.0", "::")
"""How istiod names a gateway's listener for a server without ``bind``: ``<wildcard>_<port>``
with the pod's first wildcard address (pilot/pkg/networking/core/gateway.go
``getListenerName``, listener_address.go ``wildCards``): ``0.0.0.0`` on IPv4 and dual-stack
pods, ``::`` on IPv6-only ones. A runtime key for a listener that does not exist is inert, so
both are set."""


def _gateway(mesh: MeshPlan, gateway: str) -> tuple[ListenerLimits, int]:
    if gateway == INGRESS_GATEWAY:
        return mesh.limits.ingress, mesh.ingress.port
    return mesh.limits.internal, EGRESS_PORT


def proxy_config(mesh: MeshPlan, gateway: str) -> Obj:
    """The part of a federation gateway's ProxyConfig (``proxy.istio.io/config``) that bounds
    it: idle connections, and its connection caps."""
    limits, port = _gateway(mesh, gateway)
    runtime = {
        "overload.global_downstream_max_connections": str(mesh.limits.max_connections_per_proxy)
    }
    for wildcard in GATEWAY_WILDCARDS:
        key = f"envoy.resource_limits.listener.{wildcard}_{port}.connection_limit"
        runtime[key] = str(limits.max_connections)
    return {
        "proxyMetadata": {"ISTIO_META_IDLE_TIMEOUT": duration(limits.idle_timeout)},
        "runtimeValues": runtime,
    }


def _listener_patch(port: int, value: Obj) -> Obj:
    return {
        "applyTo": "LISTENER",
        "match": {"context": "GATEWAY", "listener": {"portNumber": port}},
        "patch": {"operation": "MERGE", "value": value},
    }


def _ingress_patches(limits: ListenerLimits, port: int) -> list[Obj]:
    # The same Envoy fields the local ingress gets (render/envoy/limits.py), merged into what
    # istiod generates.
    return [
        _listener_patch(port, listener_fields(limits, listener_filters=True)),
        {
            "applyTo": "FILTER_CHAIN",
            "match": {"context": "GATEWAY", "listener": {"portNumber": port}},
            "patch": {"operation": "MERGE", "value": chain_fields(limits)},
        },
        {
            "applyTo": "NETWORK_FILTER",
            "match": {
                "context": "GATEWAY",
                "listener": {
                    "portNumber": port,
                    "filterChain": {"filter": {"name": HCM_NAME}},
                },
            },
            "patch": {
                "operation": "MERGE",
                "value": {"typed_config": {"@type": HCM, **hcm_fields(limits)}},
            },
        },
    ]


def envoy_filters(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """The bounds no Istio API reaches, per federation gateway: the ingress (handshake, listener
    filters, buffers, every HTTP bound) and the egress (listener filters, buffers; it passes TLS
    through, so it has no handshake or HTTP of its own)."""
    out = []
    for gateway in (INGRESS_GATEWAY, EGRESS_GATEWAY):
        if not (mesh.ingress.servers if gateway == INGRESS_GATEWAY else mesh.egress.routes):
            continue  # no Gateway, so no listener to patch
        limits, port = _gateway(mesh, gateway)
        if gateway == INGRESS_GATEWAY:
            patches = _ingress_patches(limits, port)
        else:
            patches = [_listener_patch(port, listener_fields(limits, listener_filters=True))]
        out.append(
            obj(
                "networking.istio.io/v1alpha3",
                "EnvoyFilter",
                f"{gateway}-limits",
                plan.name,
                GATEWAY_NAMESPACE,
                spec={
                    "workloadSelector": {"labels": {"istio": gateway}},
                    "configPatches": patches,
                },
            )
        )
    return out


def _upstream(plan: FederationPlan, mesh: MeshPlan, workload: Workload) -> Obj:
    limits = mesh.limits.ingress
    tcp: Obj = {"maxConnections": limits.max_connections}
    pool: Obj = {"tcp": tcp}
    if workload.protocol == "TCP":
        tcp["idleTimeout"] = duration(limits.tcp_idle_timeout)
    else:
        pool["http"] = {
            "http1MaxPendingRequests": limits.max_connections,
            "http2MaxRequests": limits.max_connections,
        }
    return obj(
        "networking.istio.io/v1",
        "DestinationRule",
        f"ingress-limits-{slug(workload.fqdn, 48)}",
        plan.name,
        GATEWAY_NAMESPACE,
        spec={
            "host": workload.fqdn,
            # Only the federation gateways' namespace: the mesh's own callers keep theirs.
            "exportTo": ["."],
            "trafficPolicy": {"connectionPool": pool},
        },
    )


def upstream_rules(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """Per exported workload, the ingress's connection pool towards it."""
    workloads = sorted({s.workload for s in mesh.ingress.servers}, key=lambda w: w.ref)
    return [_upstream(plan, mesh, w) for w in workloads]


def failover_policy(failover: FailoverPolicy) -> Obj:
    """The egress gateway's traffic policy towards an imported host's exporters: a connection
    not established in time, or refused, ejects that exporter at once (local-origin errors,
    counted apart from any HTTP status), for a short, growing time."""
    return {
        "outlierDetection": {
            "consecutiveLocalOriginFailures": failover.consecutive_failures,
            "splitExternalLocalOriginErrors": True,
            "consecutiveGatewayErrors": 1,
            "consecutive5xxErrors": 1,
            "interval": duration(failover.analysis_interval),
            "baseEjectionTime": duration(failover.ejection_time),
            "maxEjectionPercent": 100,
        },
        "connectionPool": {"tcp": {"connectTimeout": duration(failover.connect_timeout)}},
    }


def objects(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """Every limit object of a mesh (``limits.yaml``)."""
    return envoy_filters(plan, mesh) + upstream_rules(plan, mesh)
