"""Local federation Envoy config: accepted by Envoy itself, and faithful to the plan."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local_helpers import numbered_layout
from meshfed.pki.certs import certs_to_pem
from meshfed.pki.keys import key_to_pem
from meshfed.render.envoy import files, render_local
from meshfed.render.envoy.layout import LocalLayout
from meshfed.render.envoy.process import ProcessConfig
from meshfed.render.envoy.tls import CALLER_CA, LOCAL_CA, PEER_CA
from meshfed.workspace import Workspace, open_workspace

from conftest import EXAMPLES

ENVOY = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))


def envoy_validates(path: Path, config: dict[str, Any], what: str = "") -> None:
    """Envoy itself accepts ``config`` (``--mode validate``), written to ``path``."""
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{what}{result.stdout}{result.stderr}"


def fake_layout(ws: Workspace) -> LocalLayout:
    return numbered_layout(ws.plan)


Rendered = tuple[Workspace, Path, dict[str, ProcessConfig]]


@pytest.fixture(scope="module", params=["bank", "partners"])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    base = tmp_path_factory.mktemp(request.param)
    ws = open_workspace(EXAMPLES / f"{request.param}.yaml", base / "state")
    processes = render_local(ws.plan, fake_layout(ws), base / "run")
    return ws, base / "run", {p.name: p for p in processes}


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def validate_with_envoy(ws: Workspace, run: Path, processes: dict[str, ProcessConfig]) -> None:
    """``envoy --mode validate`` on every process's config, its xDS resources made static."""
    (run / "logs").mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    for process in processes.values():
        folder = files.process_dir(run, process.name)
        (folder / "sds").mkdir(parents=True, exist_ok=True)
        if process.spiffe_id:
            ca = ws.pki.meshes[process.mesh]
            key, cert = ca.issue(process.spiffe_id, ws.plan.workload_ttl, now)
            secret = files.tls_secret(
                certs_to_pem([cert, ca.ca_cert]).decode(), key_to_pem(key).decode()
            )
            (folder / "sds" / "default.json").write_text(json.dumps(secret))
        for name, context in process.trust.items():
            (folder / "sds" / f"{name}.json").write_text(
                json.dumps(files.validation_secret(name, context))
            )
        boot = files.bootstrap(process, run)
        boot.pop("dynamic_resources")

        def strip(resource: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in resource.items() if k != "@type"}

        def inline(value: Any, p: ProcessConfig = process) -> Any:
            """ECDS filters with their configuration inline (validate reads no ECDS file)."""
            if isinstance(value, dict):
                if "config_discovery" in value:
                    return {"name": value["name"], "typed_config": p.extensions[value["name"]]}
                return {k: inline(v) for k, v in value.items()}
            if isinstance(value, list):
                return [inline(v) for v in value]
            return value

        boot["static_resources"] = {
            "listeners": [strip(inline(r)) for r in process.listeners],
            "clusters": [strip(r) for r in process.clusters],
        }
        envoy_validates(folder / "validate.json", boot, f"{process.name}: ")


def test_envoy_accepts_every_process_config(rendered: Rendered) -> None:
    ws, run, processes = rendered
    validate_with_envoy(ws, run, processes)


def _gateway(process: ProcessConfig) -> dict[str, Any]:
    """The process's one socket listener (an ingress also has internal listeners)."""
    (listener,) = [item for item in process.listeners if "address" in item]
    return listener


def test_ingress_chains_are_exactly_the_planned_snis(rendered: Rendered) -> None:
    ws, _, processes = rendered
    for mesh in ws.plan.meshes:
        listener = _gateway(processes[f"{mesh.name}/ingress"])
        assert listener["address"]["socket_address"] == {
            "address": mesh.ingress.address,
            "port_value": mesh.ingress.port,
        }
        names = [c["filter_chain_match"]["server_names"] for c in listener["filter_chains"]]
        # Every exported SNI, and the probe consumers' egress gateways send (no export).
        assert names == [[s.sni] for s in mesh.ingress.servers] + [[mesh.ingress.probe_sni]]
        for chain in listener["filter_chains"]:
            assert chain["transport_socket"]["typed_config"]["require_client_certificate"]
        probe = listener["filter_chains"][-1]
        assert [f["name"] for f in probe["filters"]] == ["envoy.filters.network.tcp_proxy"]
        assert "default_filter_chain" not in listener  # unknown SNI: no chain, reset
        tunnels = [item["name"] for item in processes[f"{mesh.name}/ingress"].listeners][1:]
        assert tunnels == [f"tunnel|{s.sni}" for s in mesh.ingress.servers if s.protocol == "TCP"]


def _rbac_config(process: ProcessConfig, chain: dict[str, Any]) -> dict[str, Any]:
    """The RBAC configuration of an ingress chain: inline, or its ECDS resource."""
    rbac: dict[str, Any] = next(
        f
        for f in walk(chain)
        if isinstance(f, dict)
        and (
            f.get("name") in ("envoy.filters.http.rbac", "envoy.filters.network.rbac")
            or "config_discovery" in f
        )
    )
    if "config_discovery" in rbac:
        config: dict[str, Any] = process.extensions[rbac["name"]]
        assert rbac["config_discovery"]["type_urls"] == [config["@type"]]
        return config
    inline: dict[str, Any] = rbac["typed_config"]
    return inline


def test_ingress_rbac_allows_exactly_the_planned_principals(rendered: Rendered) -> None:
    ws, _, processes = rendered
    for mesh in ws.plan.meshes:
        ingress = processes[f"{mesh.name}/ingress"]
        chains = {c["name"]: c for c in _gateway(ingress)["filter_chains"]}
        tunnels = {item["name"]: item for item in ingress.listeners}
        for server in mesh.ingress.servers:
            # TCP: the RBAC sits in the export's tunnel, on the caller header the chain set.
            chain = (
                chains[server.sni] if server.protocol == "HTTP" else tunnels[f"tunnel|{server.sni}"]
            )
            config = _rbac_config(ingress, chain)
            input_name = "uri_san" if server.protocol == "HTTP" else mesh.boundary.caller_header
            assert "rules" not in config  # the matcher (render/envoy/rbac.py), deny by default
            exact = {
                key
                for m in walk(config["matcher"])
                if isinstance(m, dict) and "exact_match_map" in m
                for key in m["exact_match_map"]["map"]
            }
            prefixes = {
                m["single_predicate"]["value_match"]["prefix"] + "*"
                for m in walk(config["matcher"])
                if isinstance(m, dict)
                and m.get("single_predicate", {}).get("input", {}).get("name") == input_name
                and "prefix" in m["single_predicate"]["value_match"]
            }
            assert sorted(exact | prefixes) == sorted(
                str(p) for r in server.allow for p in r.principals
            )
            hcm = [
                f
                for f in walk(chain)
                if isinstance(f, dict) and f.get("forward_client_cert_details")
            ]
            if server.protocol == "HTTP":
                assert hcm[0]["forward_client_cert_details"] == "SANITIZE_SET"


def test_egress_fails_over_in_planned_order(rendered: Rendered) -> None:
    ws, _, processes = rendered
    for mesh in ws.plan.meshes:
        egress = processes[f"{mesh.name}/egress"]
        clusters = {c["name"]: c for c in egress.clusters}
        assert egress.spiffe_id is None  # passthrough: it never holds an identity
        for route in mesh.egress.routes:
            cluster = clusters[f"egress|{route.wire_host}"]
            endpoints = [
                (ep["priority"], e["endpoint"]["address"]["socket_address"]["port_value"])
                for ep in cluster["load_assignment"]["endpoints"]
                for e in ep["lb_endpoints"]
            ]
            assert endpoints == [(s.priority, s.port) for s in route.sources]
            assert cluster["health_checks"] and cluster["outlier_detection"]
        listener = _gateway(egress)
        snis = [c["filter_chain_match"]["server_names"] for c in listener["filter_chains"]]
        assert snis == (
            [[r.wire_host] for r in mesh.egress.routes] or [["nothing-exported.invalid"]]
        )


def test_sidecar_presents_its_own_identity_and_checks_the_exporters(rendered: Rendered) -> None:
    ws, _, processes = rendered
    for mesh in ws.plan.meshes:
        for workload in mesh.workloads:
            sidecar = processes[f"{mesh.name}/sidecar/{workload.ref}"]
            assert sidecar.spiffe_id == workload.spiffe_id
            clusters = {c["name"]: c for c in sidecar.clusters}
            for route in mesh.imports:
                context = clusters[f"outbound|{route.wire_host}"]["transport_socket"][
                    "typed_config"
                ]
                assert context["sni"] == route.wire_host
                validation = context["common_tls_context"]["combined_validation_context"]
                sans = validation["default_validation_context"]["match_typed_subject_alt_names"]
                assert [s["matcher"]["exact"] for s in sans] == list(route.upstream_spiffe_ids)
                assert validation["validation_context_sds_secret_config"]["name"] == PEER_CA


def test_sidecars_let_out_only_imports_as_the_plan_says(rendered: Rendered) -> None:
    """The plan's outbound policy (REGISTRY_ONLY, Istio's meshConfig.outboundTrafficPolicy):
    the outbound listener routes each HTTP import's local name, and answers any other host
    itself with 502, as Istio's ``block_all`` virtual host does."""
    ws, _, processes = rendered
    for mesh in ws.plan.meshes:
        assert mesh.boundary.outbound == "REGISTRY_ONLY"
        imports = sorted(r.local_host for r in mesh.imports if r.protocol == "HTTP")
        for workload in mesh.workloads:
            sidecar = processes[f"{mesh.name}/sidecar/{workload.ref}"]
            (outbound,) = [x for x in sidecar.listeners if x["name"] == "outbound"]
            (hcm,) = outbound["filter_chains"][0]["filters"]
            hosts = hcm["typed_config"]["route_config"]["virtual_hosts"]
            *routed, catch_all = hosts
            assert sorted(d for h in routed for d in h["domains"]) == imports
            assert catch_all["domains"] == ["*"] and catch_all["name"] == "block_all"
            assert [r["direct_response"] for r in catch_all["routes"]] == [{"status": 502}]


def test_sidecars_retry_imports_as_the_plan_says(rendered: Rendered) -> None:
    """The plan's retries of a call that reached no workload, the same as the Istio output's
    (`RetryPolicy`): attempts, what is retried, Envoy's default back-off."""
    ws, _, processes = rendered
    for mesh in ws.plan.meshes:
        by_host = {r.local_host: r for r in mesh.imports if r.protocol == "HTTP"}
        for workload in mesh.workloads:
            sidecar = processes[f"{mesh.name}/sidecar/{workload.ref}"]
            (outbound,) = [x for x in sidecar.listeners if x["name"] == "outbound"]
            (hcm,) = outbound["filter_chains"][0]["filters"]
            for host in hcm["typed_config"]["route_config"]["virtual_hosts"][:-1]:
                retries = by_host[host["name"]].retries
                assert retries is not None
                probe, route = host["routes"]
                assert route["route"]["retry_policy"] == {
                    "retry_on": ",".join(retries.retry_on),
                    "num_retries": retries.attempts,
                    "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
                }
                # A marked probe (`ProbeMarking`): the same route, without the sidecar's
                # retries (the probe retries itself, a fresh mark each time).
                assert probe["match"]["headers"] == [
                    {"name": mesh.probes.header, "present_match": True}
                ]
                assert "retry_policy" not in probe["route"]
                assert {**probe["route"], "cluster": route["route"]["cluster"]} == {
                    k: v for k, v in route["route"].items() if k != "retry_policy"
                }


def test_a_marked_probe_leaves_the_sidecar_on_a_connection_of_its_own(
    rendered: Rendered,
) -> None:
    """The plan's `ProbeMarking`: a marked request's cluster is the import's own (the same
    egress, TLS, SNI, server identities), one request per connection; the sidecar logs marked
    requests only, with their upstream connection's addresses (what ties the egress's line of
    that connection to the probe)."""
    ws, _, processes = rendered
    for mesh in ws.plan.meshes:
        assert mesh.probes.own_connection and mesh.probes.header == "x-meshfed-probe"
        http = [r for r in mesh.imports if r.protocol == "HTTP"]
        for workload in mesh.workloads:
            sidecar = processes[f"{mesh.name}/sidecar/{workload.ref}"]
            clusters = {c["name"]: c for c in sidecar.clusters}
            for route in http:
                own, shared = clusters[f"probe|{route.wire_host}"], clusters[
                    f"outbound|{route.wire_host}"]  # fmt: skip
                options = own["typed_extension_protocol_options"]
                common = next(iter(options.values()))["common_http_protocol_options"]
                assert common["max_requests_per_connection"] == 1
                assert own["transport_socket"] == shared["transport_socket"]
                assert own["load_assignment"]["endpoints"] == shared["load_assignment"]["endpoints"]
            (outbound,) = [x for x in sidecar.listeners if x["name"] == "outbound"]
            (hcm,) = outbound["filter_chains"][0]["filters"]
            logs = hcm["typed_config"]["access_log"]
            if not http:
                assert logs == [] and not any(n.startswith("probe|") for n in clusters)
                continue
            (log,) = logs
            assert log["filter"] == {
                "header_filter": {"header": {"name": "x-meshfed-probe", "present_match": True}}
            }
            fields = log["typed_config"]["log_format"]["json_format"]
            assert fields["probe"] == "%REQ(x-meshfed-probe)%"
            assert fields["upstream_local"] == "%UPSTREAM_LOCAL_ADDRESS%"
            assert fields["upstream"] == "%UPSTREAM_HOST%"


def test_each_root_is_trusted_only_for_its_trust_domains(rendered: Rendered) -> None:
    ws, _, processes = rendered
    roots = {name: cert for name, cert in ws.pki.roots.items()}
    for mesh in ws.plan.meshes:
        ingress = processes[f"{mesh.name}/ingress"]
        domains = {d for b in mesh.ingress.trusted for d in b.trust_domains}
        if domains:
            config = ingress.trust[CALLER_CA]["custom_validator_config"]["typed_config"]
            assert {t["name"] for t in config["trust_domains"]} == domains
        local = ingress.trust[LOCAL_CA]["custom_validator_config"]["typed_config"]
        assert [t["name"] for t in local["trust_domains"]] == [mesh.trust_domain]
    assert roots  # the material exists


def test_no_private_key_in_generated_config(rendered: Rendered) -> None:
    _, _, processes = rendered
    for process in processes.values():
        text = json.dumps([process.listeners, process.clusters, process.trust])
        assert "PRIVATE KEY" not in text


def test_tcp_exports_admit_only_allowed_identities_to_the_handshake(rendered: Rendered) -> None:
    """Network RBAC acts on the first client byte; a server-first workload would greet a
    denied caller first. The handshake itself must refuse everyone not allowed."""
    ws, _, processes = rendered
    for mesh in ws.plan.meshes:
        ingress = processes[f"{mesh.name}/ingress"]
        chains = {c["name"]: c for c in _gateway(ingress)["filter_chains"]}
        for server in mesh.ingress.servers:
            common = chains[server.sni]["transport_socket"]["typed_config"]["common_tls_context"]
            combined = common["combined_validation_context"]
            # What Envoy checks: the SDS validation secret merged over the inline default.
            secret = ingress.trust[combined["validation_context_sds_secret_config"]["name"]]
            effective = {**combined["default_validation_context"], **secret}
            assert "match_typed_subject_alt_names" not in combined["default_validation_context"]
            sans = effective.get("match_typed_subject_alt_names", [])
            if server.protocol == "TCP":
                expected = {str(p) for r in server.allow for p in r.principals}
                got = {s["matcher"].get("exact") or s["matcher"]["prefix"] + "*" for s in sans}
                assert got == expected
            else:
                assert sans == []  # HTTP: RBAC answers 403 with a reason


def local_reply_body(config: dict[str, Any], status: int) -> str | None:
    """What Envoy's ``local_reply_config`` makes of a local reply's body with ``status``: the
    first mapper whose status filter matches (None: Envoy's own body stays)."""
    compare = {"EQ": int.__eq__, "GE": int.__ge__, "LE": int.__le__}
    for mapper in config.get("mappers", []):
        comparison = mapper["filter"]["status_code_filter"]["comparison"]
        # Without a runtime key Envoy uses the default value, and no runtime layer moves it.
        assert set(comparison["value"]) == {"default_value"}
        if compare[comparison["op"]](status, comparison["value"]["default_value"]):
            assert "status_code" not in mapper  # the status is never changed
            body: str = mapper["body"]["inline_string"]
            return body
    return None


def _managers(listener: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        f["typed_config"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"
    ]


def test_replies_the_ingress_makes_itself_say_only_the_status(rendered: Rendered) -> None:
    """The plan's local-reply bodies on every HTTP chain of the ingress, and on the inbound of
    each exported HTTP workload's sidecar (whose answers the ingress passes on); nowhere else."""
    ws, _, processes = rendered
    for mesh in ws.plan.meshes:
        policy = mesh.boundary.local_replies
        http = [s for s in mesh.ingress.servers if s.protocol == "HTTP"]
        managers = _managers(_gateway(processes[f"{mesh.name}/ingress"]))
        assert len(managers) == len(http)
        for workload in mesh.workloads:
            inbound = next(
                r
                for r in processes[f"{mesh.name}/sidecar/{workload.ref}"].listeners
                if r["name"] == "inbound"
            )
            exported = mesh.guard(workload.ref) is not None and policy.at_exported_workloads
            for manager in _managers(inbound):
                assert ("local_reply_config" in manager) == exported, workload.ref
                if exported:
                    managers.append(manager)
        for manager in managers:
            config = manager["local_reply_config"]
            for status in (400, 403, 404, 413, 431, 500, 502, 503, 504, 418, 599):
                assert local_reply_body(config, status) == policy.body(status)
            assert local_reply_body(config, 503) == "service unavailable\n"
            assert local_reply_body(config, 418) == "request failed\n"
            # Envoy's own replies below 400 (redirects, direct responses) say nothing of the mesh.
            for status in (200, 301, 302, 399):
                assert local_reply_body(config, status) is None
            text = json.dumps(config).lower()
            assert "upstream" not in text and "rbac" not in text and "envoy" not in text
        for name in (f"{mesh.name}/egress",):
            for listener in processes[name].listeners:
                assert "local_reply_config" not in json.dumps(listener)
