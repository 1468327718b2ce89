"""XFCC only from the ingress, on Istio: the EnvoyFilter on each exported HTTP workload's sidecar
(render/istio/workload.py ``xfcc_filters``).

Istio's sidecar appends its own element for the direct peer to whatever XFCC arrived
(APPEND_FORWARD, ``By`` first) before any filter runs, and AuthorizationPolicy cannot match
"one element only"; seen on istiod 1.25.5, a mesh workload speaking mTLS with its own
certificate put a forged element first and it reached the workload. The rendered Envoy RBAC
filter refuses, from every peer but the ingress, an XFCC holding an element before the
sidecar's. Evaluated here with Envoy's RBAC semantics (a DENY policy matches when any
permission and any principal match; ``contains`` on the header's value) over peers x what they
send, and validated by Envoy 1.40 inside a sidecar-shaped connection manager; the live test
(tests/test_istio_live.py) sends the forged header to a real sidecar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshfed.render.istio.workload import XFCC, xfcc_filter
from test_render_envoy import envoy_validates

from conftest import Rendered

INGRESS = "spiffe://payments.bank.example/ns/meshfed-system/sa/federation-ingress"
SELF = "spiffe://payments.bank.example/ns/cards/sa/tokenizer"
PEERS = {
    "ingress": INGRESS,
    "mesh workload": "spiffe://payments.bank.example/ns/cards/sa/vault",
}
SUBJECTS = ['""', '"O=SPIRE,C=US"']
"""Istio's CA issues an empty subject; SPIRE's carries a comma (quoted by Envoy)."""
SENT: dict[str, str | None] = {
    "nothing": None,
    "a forged element": "By=spiffe://x;URI=spiffe://web.bank.example/ns/shop/sa/checkout",
    "a forged element with an open quote": 'URI=spiffe://web.bank.example/ns/shop/sa/checkout;Subject="',
    "a forged element copying the sidecar's": f'By={SELF};Hash=00;Subject="";URI=spiffe://x',
    "an empty element then a comma": ",",
}


def _arrives(peer: str, subject: str, sent: str | None) -> str:
    """The XFCC the sidecar's filters see: what came, then the sidecar's own element."""
    own = f"By={SELF};Hash={'ab' * 32};Subject={subject};URI={peer}"
    return own if sent is None else f"{sent},{own}"


def _denied(config: dict[str, Any], peer: str, xfcc: str) -> bool:
    """Envoy's RBAC (rules, DENY): a policy matches when any permission and any principal do."""
    rules = config["typed_config"]["rules"]
    assert rules["action"] == "DENY"
    for policy in rules["policies"].values():
        permission = any(
            p["header"]["name"] == XFCC and p["header"]["string_match"]["contains"] in xfcc
            for p in policy["permissions"]
        )
        principal = any(
            p["not_id"]["authenticated"]["principal_name"]["exact"] != peer
            for p in policy["principals"]
        )
        if permission and principal:
            return True
    return False


def test_only_the_ingress_passes_an_xfcc_on(bank_rendered: Rendered) -> None:
    (guard,) = bank_rendered.workspace.plan.mesh("payments").workload_guards[:1]
    assert guard.forwarder == INGRESS
    config = xfcc_filter(guard)
    for (name, peer), subject, (what, sent) in [
        (p, s, x) for p in PEERS.items() for s in SUBJECTS for x in SENT.items()
    ]:
        denied = _denied(config, peer, _arrives(peer, subject, sent))
        expected = name != "ingress" and sent is not None
        assert denied == expected, (name, subject, what)


def test_one_filter_per_exported_http_workload_before_the_router(
    bank_rendered: Rendered, tmp_path: Path
) -> None:
    plan = bank_rendered.workspace.plan
    for mesh in plan.meshes:
        filters = {
            f["metadata"]["name"]: f
            for f in bank_rendered.docs(mesh.name, "EnvoyFilter")
            if f["metadata"]["name"].startswith("meshfed-xfcc-")
        }
        guards = mesh.workload_guards
        assert len(filters) == len(guards)
        for guard in guards:
            ef = filters[f"meshfed-xfcc-{guard.workload.name}"]
            assert ef["metadata"]["namespace"] == guard.workload.namespace
            assert ef["spec"]["workloadSelector"] == {"labels": {"app": guard.workload.name}}
            (patch,) = ef["spec"]["configPatches"]
            assert patch["applyTo"] == "HTTP_FILTER"
            assert patch["patch"]["operation"] == "INSERT_BEFORE"  # adds; rewrites nothing
            match = patch["match"]
            assert match["context"] == "SIDECAR_INBOUND"
            assert match["listener"]["portNumber"] == guard.workload.port
            sub = match["listener"]["filterChain"]["filter"]["subFilter"]
            assert sub == {"name": "envoy.filters.http.router"}
            value = patch["patch"]["value"]
            assert value == xfcc_filter(guard)
            _validate(value, tmp_path / f"{mesh.name}-{guard.workload.name}.json")
    # only exported HTTP workloads: the bank's TCP ledger has none
    names = [f["metadata"]["name"] for f in bank_rendered.docs("payments", "EnvoyFilter")]
    assert "meshfed-xfcc-ledger" not in names


def _validate(rbac_filter: dict[str, Any], path: Path) -> None:
    """Envoy 1.40 accepts the filter where istiod puts it: before the router of a sidecar's
    inbound connection manager (which appends to XFCC as Istio's does)."""
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound_8080",
            "forward_client_cert_details": "APPEND_FORWARD",
            "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True},
            "route_config": {"name": "inbound"},
            "http_filters": [
                rbac_filter,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                        "Router"
                    },
                },
            ],
        },
    }
    listener = {
        "name": "inbound_8080",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
        "filter_chains": [{"filters": [hcm]}],
    }
    envoy_validates(path, {"static_resources": {"listeners": [listener]}})
