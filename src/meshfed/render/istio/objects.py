"""Small builders shared by the Istio renderer: object metadata, names, PEM encoding."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from typing import Any

from meshfed.plan.names import MANAGED_BY
from meshfed.plan.rules import Workload

Obj = dict[str, Any]


def slug(text: str, limit: int = 63) -> str:
    """A DNS-1123 label derived from a host name; long ones keep a hash to stay unique."""
    label = text.lower().replace(".", "-").replace("*", "x")
    if len(label) <= limit:
        return label
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{label[: limit - 9].rstrip('-')}-{digest}"


def is_ip(host: str) -> bool:
    """An IP address, not a name (a ServiceEntry endpoint, a rule's host: istiod reads an
    address as it is, and resolves or qualifies only names)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def labels(federation: str, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "meshfed.dev/federation": federation,
        **extra,
    }


def obj(
    api_version: str,
    kind: str,
    name: str,
    federation: str,
    namespace: str | None = None,
    spec: Obj | None = None,
    extra_labels: dict[str, str] | None = None,
    **fields: Any,
) -> Obj:
    """A Kubernetes object with meshfed's labels."""
    metadata: Obj = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = labels(federation, **(extra_labels or {}))
    out: Obj = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
    if spec is not None:
        out["spec"] = spec
    out.update(fields)
    return out


def workload_obj(
    api_version: str, kind: str, prefix: str, federation: str, workload: Workload, spec: Obj
) -> Obj:
    """An object for one workload's sidecar, in its namespace: named ``prefix`` and the
    workload's name (within a DNS label), labelled with the workload."""
    return obj(
        api_version,
        kind,
        f"{prefix}{slug(workload.name, 63 - len(prefix))}",
        federation,
        workload.namespace,
        spec=spec,
        extra_labels={"meshfed.dev/workload": workload.ref.replace("/", ".")},
    )


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
