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
- everything else only through an EnvoyFilter on the gateway (the handshake bound, the listener
  filters' bound, per-connection buffers, the HCM's header, stream and request bounds and header
  limits, the TCP session idle bound on the ingress's tcp_proxy): ``<gateway>-limits``. It
  touches no TLS context, RBAC filter or XFCC setting, and no cluster.

No DestinationRule: the exported workload's own are the ingress's. istiod gives a proxy the
DestinationRules of ONE namespace for a host: the proxy's own namespace first, then the
service's, then the root namespace (pilot/pkg/model/push_context.go ``destinationRule``); it
merges rules of one host only within a namespace (destination_rule.go
``mergeDestinationRule``). A meshfed DestinationRule for an exported host in the gateways'
namespace (which this module rendered before, ``ingress-limits-<host>``) hid every rule the
workload's owner wrote for their Service (load balancing, outlier detection, connection pool,
TLS towards a backend outside the mesh): seen on istiod 1.25.5, the ingress's cluster carried
none of the owner's rule until meshfed's was gone. So meshfed's bound travels in the EnvoyFilter:

- the TCP session idle bound: a MERGE into the ingress's tcp_proxy (istiod takes its
  ``idle_timeout`` from the top-level ``connectionPool.tcp.idleTimeout`` of the rule it chose,
  else ``ISTIO_META_IDLE_TIMEOUT``, which here is the HTTP idle bound: networkfilter.go
  ``buildOutboundNetworkFiltersWithSingleDestination``). The plan's value replaces an owner's
  ``idleTimeout`` there; the rest of the owner's rule (``maxConnectionDuration``, hashing)
  stays;
- no circuit breakers: the local ingress sizes its clusters' only so they never refuse below the
  listener's cap (Envoy's default is 1024, `meshfed.render.envoy.limits.cluster_fields`);
  istiod's are 2^32-1 (cluster_traffic_policy.go ``getDefaultCircuitBreakerThresholds``) unless
  the owner's rule says less, which is theirs to say. An EnvoyFilter could not lower them
  anyway: istiod's MERGE appends to ``circuit_breakers.thresholds`` (pkg/proto/merge) and Envoy
  uses the first threshold of a priority.

And on the consumer side, the egress gateway's DestinationRule for each remote host: the connect
timeout and passive ejection (``failover_policy``). Its host is meshfed's own name for an export
(the wire host, a ServiceEntry in the gateways' namespace, exported to it alone): there is no
owner's rule for it to hide, and no rule elsewhere reaches the egress before it (the proxy's
namespace comes first). Istio has no active health checking in a
DestinationRule: the local federation's TLS probe (which also sees an exporter's ingress that
accepts and closes at its connection cap, or answers its handshake late) has no Istio
equivalent. On Istio the egress fails over on connect failures and timeouts only; an exporter's
ingress saturated by stalled handshakes keeps getting calls until its cap frees (``meshfed
audit`` says so).
"""

from __future__ import annotations

from meshfed.plan.limits import FailoverPolicy, ListenerLimits
from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.plan.names import EGRESS_GATEWAY, EGRESS_PORT, GATEWAY_NAMESPACE, INGRESS_GATEWAY
from meshfed.render.envoy.limits import (
    chain_fields,
    duration,
    hcm_fields,
    listener_fields,
    tcp_fields,
)
from meshfed.render.istio.objects import Obj, obj

HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


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


def _network_filter_patch(port: int, name: str, typed_config: Obj) -> Obj:
    return {
        "applyTo": "NETWORK_FILTER",
        "match": {
            "context": "GATEWAY",
            "listener": {"portNumber": port, "filterChain": {"filter": {"name": name}}},
        },
        "patch": {"operation": "MERGE", "value": {"typed_config": typed_config}},
    }


def _tcp_proxy_patch(limits: ListenerLimits, port: int) -> Obj:
    return _network_filter_patch(port, TCP_PROXY_NAME, {"@type": TCP_PROXY, **tcp_fields(limits)})


def _ingress_patches(limits: ListenerLimits, port: int, tcp_exports: bool) -> list[Obj]:
    # The same Envoy fields the local ingress gets (render/envoy/limits.py), merged into what
    # istiod generates.
    patches = [
        _listener_patch(port, listener_fields(limits, listener_filters=True)),
        {
            "applyTo": "FILTER_CHAIN",
            "match": {"context": "GATEWAY", "listener": {"portNumber": port}},
            "patch": {"operation": "MERGE", "value": chain_fields(limits)},
        },
        _network_filter_patch(port, HCM_NAME, {"@type": HCM, **hcm_fields(limits)}),
    ]
    if tcp_exports:
        # Every tcp_proxy of the ingress's listener is a TCP export's (an HTTP export's chain
        # ends in the HCM).
        patches.append(_tcp_proxy_patch(limits, port))
    return patches


def envoy_filters(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """The bounds no Istio API reaches, per federation gateway: the ingress (handshake, listener
    filters, buffers, every HTTP bound, a TCP export's idle session) and the egress (listener
    filters, buffers, the idle session; it passes TLS through, so it has no handshake or HTTP
    of its own)."""
    out = []
    for gateway in (INGRESS_GATEWAY, EGRESS_GATEWAY):
        if not (mesh.ingress.servers if gateway == INGRESS_GATEWAY else mesh.egress.routes):
            continue  # no Gateway, so no listener to patch
        limits, port = _gateway(mesh, gateway)
        if gateway == INGRESS_GATEWAY:
            tcp_exports = any(s.protocol == "TCP" for s in mesh.ingress.servers)
            patches = _ingress_patches(limits, port, tcp_exports)
        else:
            # Each passed-through SNI ends in a tcp_proxy, whose idle bound would otherwise be
            # ISTIO_META_IDLE_TIMEOUT (the HTTP idle bound), as locally tcp_fields.
            patches = [
                _listener_patch(port, listener_fields(limits, listener_filters=True)),
                _tcp_proxy_patch(limits, port),
            ]
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
    return envoy_filters(plan, mesh)
