"""The controller's bundle endpoint: its decisions (listen address, routes, how long a
rotation waits for partners), the read-only sequence a standby serves, and the manifests it
adds only when enabled. Served for real in test_controller_bundles_integration.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from meshfed.bundles.model import Endpoint, PublishedMesh
from meshfed.bundles.state import publish, published_bundle, published_since
from meshfed.controller.manifests import BUNDLES_SERVICE, ControllerOptions, management_manifests
from meshfed.controller.publish import (
    AHEAD,
    INTERVAL,
    Served,
    parse_listen,
    publish_wait,
    route_table,
)
from meshfed.pki.certs import make_root_ca
from meshfed.pki.keys import generate_key

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def root(name: str) -> x509.Certificate:
    return make_root_ca(name, generate_key("ECDSA_P256"), timedelta(days=30), NOW)


def test_listen_address() -> None:
    assert parse_listen("0.0.0.0:8443") == ("0.0.0.0", 8443)
    assert parse_listen(":8443") == ("0.0.0.0", 8443)
    assert parse_listen("[::1]:8443") == ("::1", 8443)
    for bad in ("8443", "host:", "host:0", "host:70000", "host:https"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def served(fed: str, mesh: str, url: str) -> Served:
    endpoint = Endpoint(url, "https_spiffe", f"spiffe://{mesh}.example/bundle")
    return Served(fed, PublishedMesh(mesh, f"{mesh}.example", endpoint, 60), b"{}", None)


def test_routes_by_path_and_a_clash_is_reported_once_kept_by_the_first() -> None:
    table, clashes = route_table(
        [
            served("b", "acme", "https://x.example/acme"),
            served("a", "acme", "https://x.example/acme"),
            served("a", "initech", "https://y.example:8443/initech/bundle"),
        ]
    )
    assert set(table) == {"/acme", "/initech/bundle"}
    assert table["/acme"].federation == "a"
    assert len(clashes) == 1 and "a/acme" in clashes[0] and "b/acme" in clashes[0]
    assert table["/initech/bundle"].host == "y.example"


def test_a_rotation_waits_three_refresh_hints_and_one_look_after_publishing() -> None:
    since = NOW
    assert publish_wait(None, 60, NOW) == 0.0
    assert publish_wait(since, 60, NOW) == AHEAD * 60 + INTERVAL
    assert publish_wait(since, 60, NOW + timedelta(seconds=100)) == AHEAD * 60 + INTERVAL - 100
    assert publish_wait(since, 60, NOW + timedelta(hours=1)) == 0.0


def test_a_standby_serves_only_what_the_leader_numbered(tmp_path: Path) -> None:
    old, new = root("old"), root("new")
    assert published_bundle(tmp_path, "acme", "acme.example", [old], 60) is None
    first = publish(tmp_path, "acme", "acme.example", [old], 60, NOW)
    assert published_since(tmp_path, "acme") == NOW
    seen = published_bundle(tmp_path, "acme", "acme.example", [old], 60)
    assert seen is not None and seen.sequence == first.sequence == 1
    # The roots changed (a rotation's trust step) but the leader has not numbered it yet.
    assert published_bundle(tmp_path, "acme", "acme.example", [old, new], 60) is None
    later = NOW + timedelta(minutes=5)
    second = publish(tmp_path, "acme", "acme.example", [old, new], 60, later)
    assert second.sequence == 2 and published_since(tmp_path, "acme") == later
    again = publish(tmp_path, "acme", "acme.example", [old, new], 60, later + timedelta(hours=1))
    assert again.sequence == 2 and published_since(tmp_path, "acme") == later


def test_manifests_add_the_bundle_port_and_service_only_when_enabled() -> None:
    plain = management_manifests(ControllerOptions())
    assert not [o for o in plain if o["kind"] == "Service"]
    deployment = next(o for o in plain if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--bundle-listen" not in container["args"]
    enabled = management_manifests(ControllerOptions(bundle_port=8443))
    service = next(o for o in enabled if o["kind"] == "Service")
    assert service["metadata"]["name"] == BUNDLES_SERVICE
    assert service["spec"]["ports"][0]["targetPort"] == "bundles"
    container = next(o for o in enabled if o["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["args"][-2:] == ["--bundle-listen", "0.0.0.0:8443"]
    assert {"name": "bundles", "containerPort": 8443} in container["ports"]
    # Serving needs nothing the controller could not do already: the same RBAC.
    rbac = [o for o in plain if o["kind"] in ("Role", "ClusterRole")]
    assert rbac == [o for o in enabled if o["kind"] in ("Role", "ClusterRole")]
