"""Cross-object checks in the spirit of ``istioctl analyze`` and istiod's webhook.

Schemas check each object alone; these check that the rendered objects of a mesh fit together:
references resolve, selectors select the gateways meshfed deploys, failover can work.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from conftest import Rendered

Obj = dict[str, Any]


def objects(rendered: Rendered, mesh: str) -> list[Obj]:
    docs = [d for d in rendered.docs(mesh) if "metadata" in d]
    docs += [d for d in rendered.secret_docs(mesh).values() if d["kind"] == "Secret"]
    return docs


def of(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def pod_labels(docs: list[Obj]) -> list[tuple[str, dict[str, str]]]:
    return [
        (d["metadata"]["namespace"], d["spec"]["template"]["metadata"]["labels"])
        for d in of(docs, "Deployment")
    ]


def selects(selector: dict[str, str], namespace: str, docs: list[Obj]) -> bool:
    return any(
        ns == namespace and all(labels.get(k) == v for k, v in selector.items())
        for ns, labels in pod_labels(docs)
    )


@pytest.fixture(params=["bank_rendered", "partners_rendered"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    value: Rendered = request.getfixturevalue(request.param)
    return value


def test_selectors_select_the_federation_gateways(rendered: Rendered) -> None:
    for mesh in rendered.meshes:
        docs = objects(rendered, mesh)
        for doc in of(docs, "Gateway"):
            assert selects(doc["spec"]["selector"], doc["metadata"]["namespace"], docs), doc
        for kind in ("AuthorizationPolicy", "Telemetry"):
            for doc in of(docs, kind):
                if doc["metadata"]["namespace"] != "meshfed-system":
                    continue  # an exported workload's guard selects the application's own pods
                labels = doc["spec"]["selector"]["matchLabels"]
                assert selects(labels, doc["metadata"]["namespace"], docs), doc
        for doc in of(docs, "Service"):
            assert selects(doc["spec"]["selector"], doc["metadata"]["namespace"], docs), doc


def test_gateway_servers_are_valid_for_istiod(rendered: Rendered) -> None:
    for mesh in rendered.meshes:
        docs = objects(rendered, mesh)
        secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in of(docs, "Secret")}
        for gateway in of(docs, "Gateway"):
            servers = gateway["spec"]["servers"]
            names = [s["port"]["name"] for s in servers]
            assert len(names) == len(set(names)), "port names in servers must be unique"
            for server in servers:
                for host in server["hosts"]:
                    assert "." in host and "*" not in host and "/" not in host
                credential = server["tls"].get("credentialName")
                if server["tls"]["mode"] == "MUTUAL":
                    assert (gateway["metadata"]["namespace"], credential) in secrets


def test_virtual_services_bind_to_existing_gateways_and_hosts(rendered: Rendered) -> None:
    for mesh in rendered.meshes:
        docs = objects(rendered, mesh)
        gateways = {g["metadata"]["name"]: g for g in of(docs, "Gateway")}
        for vs in of(docs, "VirtualService"):
            for name in vs["spec"]["gateways"]:
                if name == "mesh":
                    continue
                assert name in gateways, f"{vs['metadata']['name']}: no Gateway {name}"
                hosts = {h for s in gateways[name]["spec"]["servers"] for h in s["hosts"]}
                assert set(vs["spec"]["hosts"]) <= hosts


def test_destinations_and_subsets_resolve(rendered: Rendered) -> None:
    plan = rendered.workspace.plan
    for mesh in plan.meshes:
        docs = objects(rendered, mesh.name)
        known = {h for se in of(docs, "ServiceEntry") for h in se["spec"]["hosts"]}
        known |= {
            f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.cluster.local"
            for s in of(docs, "Service")
        }
        known |= {w.fqdn for w in mesh.workloads}
        subsets = {
            (dr["spec"]["host"], s["name"])
            for dr in of(docs, "DestinationRule")
            for s in dr["spec"].get("subsets", [])
        }
        for vs in of(docs, "VirtualService"):
            for kind in ("http", "tcp", "tls"):
                for route in vs["spec"].get(kind, []):
                    for dest in route["route"]:
                        host = dest["destination"]["host"]
                        assert host in known, f"{vs['metadata']['name']}: unknown host {host}"
                        subset = dest["destination"].get("subset")
                        assert subset is None or (host, subset) in subsets


def test_failover_has_what_istio_needs(rendered: Rendered) -> None:
    for mesh in rendered.meshes:
        docs = objects(rendered, mesh)
        entries = {se["spec"]["hosts"][0]: se for se in of(docs, "ServiceEntry")}
        for dr in of(docs, "DestinationRule"):
            policy = dr["spec"].get("trafficPolicy", {})
            locality = policy.get("loadBalancer", {}).get("localityLbSetting")
            if locality:
                # Locality failover does nothing without outlier detection in the same rule.
                assert "outlierDetection" in policy
                assert not ("failover" in locality and "failoverPriority" in locality)
            entry = entries.get(dr["spec"]["host"])
            if entry and entry["spec"]["resolution"] == "STATIC":
                for endpoint in entry["spec"]["endpoints"]:
                    ipaddress.ip_address(endpoint["address"])
                    assert set(endpoint["ports"]) <= {p["name"] for p in entry["spec"]["ports"]}
