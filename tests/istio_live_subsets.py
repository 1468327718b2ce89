"""On a running istiod: the DestinationRules a caller's namespace holds for the egress gateway,
and what its sidecar gets (tests/test_istio_live.py ``test_a_callers_namespace_rule...``).

Each step applies rules in the caller's namespace, waits until istiod has pushed them to the
caller's sidecar (a change of the sidecar's clusters that only the new rules make), then reads
the sidecar's clusters for the egress gateway's subsets and calls the imports through it. The
same live objects (with their creation times) go through the audit's emulation of istiod's
lookup (`meshfed.audit.dr_lookup`), so the emulation is checked against istiod itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from istio_live_env import Proxy
from istio_live_kube import Cluster
from meshfed.audit.dr_lookup import Entry, catch_all, consolidate
from meshfed.audit.sources.manifests import Doc

Obj = dict[str, Any]
EGRESS = "federation-egress.meshfed-system.svc.cluster.local"
COPY = "federation-egress-imports"


def clusters(proxy: Proxy) -> dict[str, Obj]:
    dump = proxy.config_dump("?resource=dynamic_active_clusters")
    return {c["cluster"]["name"]: c["cluster"] for c in dump["configs"]}


def subset_clusters(proxy: Proxy) -> dict[str, Obj]:
    """The sidecar's clusters of the egress gateway's subsets, by subset name."""
    out = {}
    for name, cluster in clusters(proxy).items():
        parts = name.split("|")
        if len(parts) == 4 and parts[3] == EGRESS and parts[2]:
            out[parts[2]] = cluster
    return out


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout:g} s: {what}")
        time.sleep(0.3)


def rule(name: str, namespace: str, host: str, **spec: Any) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"host": host, **spec},
    }


def applied_form(live: Obj) -> Obj:
    """A live object as it can be applied again (what ``kubectl apply -k`` sent)."""
    meta = live["metadata"]
    kept = {k: meta[k] for k in ("name", "namespace", "labels") if k in meta}
    return {"apiVersion": live["apiVersion"], "kind": live["kind"], "metadata": kept,
            "spec": live["spec"]}  # fmt: skip


def live_rules(cluster: Cluster, namespace: str) -> list[Doc]:
    """The namespace's DestinationRules for exactly the egress gateway, as the cluster has them
    (creation times included)."""
    import json

    listed = json.loads(cluster.kubectl("-n", namespace, "get", "destinationrules", "-o", "json"))
    return [
        Doc(item, f"live:{namespace}/{item['metadata']['name']}", 1, ".")
        for item in listed["items"]
        if item["spec"].get("host") == EGRESS
    ]


def emulated(cluster: Cluster, namespace: str) -> tuple[list[Entry], Entry | None]:
    """The audit's emulation of istiod over the live rules: the consolidated entries, and the
    one a sidecar no selector picks uses."""
    entries = consolidate(live_rules(cluster, namespace))
    return entries, catch_all(entries)
