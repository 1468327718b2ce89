"""What only an EnvoyFilter can say at the federation ingress, and nothing else.

Istio's APIs leave two of the boundary policy's rules out of reach at a gateway:

- **Refused handshakes are not logged.** istiod gives a gateway listener the Telemetry
  providers as a listener access log, but always filtered to response flag ``NR``
  (``listenerAccessLogFilter`` in pilot/pkg/networking/core/accesslog.go), and a refused TLS
  handshake (unknown CA, expired, name-constraint violation, no client certificate, a SAN the
  server does not admit) carries no flag: no Telemetry or meshConfig setting logs it. A
  listener-level access log filtered by CEL on ``connection.transport_failure_reason`` does.
- **Escaped slashes.** ``meshConfig.pathNormalization`` is mesh-wide and offers no refusal of
  ``%2F``/``%5C`` (``DECODE_AND_MERGE_SLASHES`` decodes them, for every sidecar of the mesh).
  The ingress's own connection manager gets the plan's path policy instead, scoped to it.
- **The bodies of Envoy's own replies** (``upstream connect error or disconnect/reset before
  headers. reset reason: ...``, ``no healthy upstream``, ``RBAC: access denied``): no Istio API
  sets the connection manager's ``local_reply_config`` (istiod never writes it), so the
  ingress's connection manager gets the plan's bodies (`meshfed.render.local_reply`), and so
  does the inbound connection manager of each exported HTTP workload's sidecar, whose answers
  for its workload (the application down, its guard's 403) the ingress passes on as the
  workload's own. The sidecar patch has no port: every inbound HTTP chain of the workload.

Every patch MERGEs (istiod's ``MergeAnyWithAny``: a proto merge; a merged list is appended, a
merged field set): they add a log, tighten parsing and word the proxy's own replies, and never
touch TLS, authorization or XFCC (``meshfed audit``'s ``envoy-filter-security`` check holds them
to that). ``listener.portNumber`` is the port the gateway listens on, its Service's
``targetPort`` (meshfed renders both equal).
"""

from __future__ import annotations

from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.plan.names import GATEWAY_NAMESPACE, INGRESS_GATEWAY
from meshfed.render.boundary_log import HANDSHAKE_FIELDS, REFUSED_HANDSHAKE
from meshfed.render.istio.objects import Obj, obj, workload_obj
from meshfed.render.local_reply import local_reply_config

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def handshake_log(mesh: MeshPlan) -> Obj:
    """A listener access log of refused handshakes only, in the boundary log's fields."""
    return {
        "name": "envoy.access_loggers.file",
        "filter": {
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {"@type": CEL_FILTER, "expression": REFUSED_HANDSHAKE},
            }
        },
        "typed_config": {
            "@type": FILE_LOG,
            "path": "/dev/stdout",
            "log_format": {
                "json_format": {
                    "kind": "refused-handshake",
                    "mesh": mesh.name,
                    "gateway": "ingress",
                    **HANDSHAKE_FIELDS,
                }
            },
        },
    }


def connection_manager(mesh: MeshPlan) -> Obj:
    """The ingress's HTTP connection manager fields: the plan's path policy, and the bodies of
    the replies it makes itself."""
    paths = mesh.boundary.paths
    return {
        "@type": HCM,
        "normalize_path": paths.normalize,
        "merge_slashes": paths.merge_slashes,
        "path_with_escaped_slashes_action": f"{paths.escaped_slashes}_REQUEST",
        "local_reply_config": local_reply_config(mesh.boundary.local_replies),
    }


def ingress_filter(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """The ingress's EnvoyFilter (none while it serves nothing: there is no listener)."""
    ing = mesh.ingress
    if not ing.servers:
        return []
    listener = {"portNumber": ing.port}
    patches: list[Obj] = [
        {
            "applyTo": "LISTENER",
            "match": {"context": "GATEWAY", "listener": listener},
            "patch": {"operation": "MERGE", "value": {"access_log": [handshake_log(mesh)]}},
        }
    ]
    if any(s.protocol == "HTTP" for s in ing.servers):
        patches.append(
            {
                "applyTo": "NETWORK_FILTER",
                "match": {
                    "context": "GATEWAY",
                    "listener": {**listener, "filterChain": {"filter": {"name": HCM_NAME}}},
                },
                "patch": {
                    "operation": "MERGE",
                    "value": {"typed_config": connection_manager(mesh)},
                },
            }
        )
    return [
        obj(
            "networking.istio.io/v1alpha3",
            "EnvoyFilter",
            f"{INGRESS_GATEWAY}-boundary",
            plan.name,
            GATEWAY_NAMESPACE,
            spec={
                "workloadSelector": {"labels": {"istio": INGRESS_GATEWAY}},
                "configPatches": patches,
            },
        )
    ]


def workload_filters(plan: FederationPlan, mesh: MeshPlan) -> list[Obj]:
    """Per exported HTTP workload, the EnvoyFilter that words its sidecar's own replies (none
    when the plan keeps Envoy's there)."""
    replies = mesh.boundary.local_replies
    if not replies.at_exported_workloads:
        return []
    typed_config = {"@type": HCM, "local_reply_config": local_reply_config(replies)}
    return [
        workload_obj(
            "networking.istio.io/v1alpha3",
            "EnvoyFilter",
            "meshfed-replies-",
            plan.name,
            guard.workload,
            spec={
                "workloadSelector": {"labels": {"app": guard.workload.name}},
                "configPatches": [
                    {
                        "applyTo": "NETWORK_FILTER",
                        "match": {
                            "context": "SIDECAR_INBOUND",
                            "listener": {"filterChain": {"filter": {"name": HCM_NAME}}},
                        },
                        "patch": {"operation": "MERGE", "value": {"typed_config": typed_config}},
                    }
                ],
            },
        )
        for guard in mesh.workload_guards
    ]
