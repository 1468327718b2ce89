"""The federation ingress's own replies as the plan words them (``LocalReplyPolicy``).

Both renderers run Envoy at the ingress, so both translate the policy into the same Envoy field,
the connection manager's ``local_reply_config``: the local ingress sets it on each HTTP chain,
the Istio ingress gateway gets it through an EnvoyFilter, and so do the exported workloads'
sidecars. One
mapper per status (Envoy applies the first that matches), then one for every other status from
the policy's ``lowest_status`` (400) up. Envoy applies the mappers only to the replies it makes
itself (``Utility::sendLocalReply``: the router's 503 on a failed connection, RBAC's 403, the
codec's 400/426/431/501); a workload's own responses are never rewritten. A mapper without
``status_code`` keeps the status, and the access log still records the real reason
(``%RESPONSE_FLAGS%``, ``%RESPONSE_CODE_DETAILS%``). A gRPC caller gets the body as
``grpc-message``.
"""

from __future__ import annotations

from typing import Any

from meshfed.plan.boundary import LocalReplyPolicy

__all__ = ["local_reply_config"]


def _status_filter(op: str, status: int) -> dict[str, Any]:
    # No runtime key: Envoy compares with the default value then (an empty key is allowed
    # since the v3 API of 2020), and no runtime layer can move which status gets which body.
    return {"status_code_filter": {"comparison": {"op": op, "value": {"default_value": status}}}}


def local_reply_config(policy: LocalReplyPolicy) -> dict[str, Any]:
    """Envoy's ``LocalReplyConfig``: each status's body replaced by the policy's."""
    mappers = [
        {"filter": _status_filter("EQ", status), "body": {"inline_string": policy.body(status)}}
        for status, _ in policy.bodies
    ]
    mappers.append(
        {
            "filter": _status_filter("GE", policy.lowest_status),
            "body": {"inline_string": policy.body()},
        }
    )
    return {"mappers": mappers}
