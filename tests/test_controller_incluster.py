"""In-cluster settings: the ServiceAccount directory can be moved
(MESHFED_SERVICE_ACCOUNT_DIR), and outside a cluster nothing is guessed. Run for real in
test_controller_incluster_integration.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.controller.clusters import SERVICE_ACCOUNT_DIR_ENV, Connector, in_cluster_config
from meshfed.controller.operator import connection_info
from meshfed.kube.errors import KubeError


def account(tmp_path: Path, token: str = "first") -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "token").write_text(token)
    (tmp_path / "ca.crt").write_text("not read here")
    (tmp_path / "namespace").write_text("meshfed-system")
    return tmp_path


def test_outside_a_cluster_there_is_no_in_cluster_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv(SERVICE_ACCOUNT_DIR_ENV, str(account(tmp_path)))
    assert in_cluster_config() is None
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setenv(SERVICE_ACCOUNT_DIR_ENV, str(tmp_path / "missing"))
    assert in_cluster_config() is None
    with pytest.raises(KubeError, match="in-cluster context self: not running in a cluster"):
        Connector(None, "meshfed-system", None, "self").config_for("self")


def test_the_service_account_directory_and_a_rotated_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    directory = account(tmp_path / "sa")
    monkeypatch.setenv(SERVICE_ACCOUNT_DIR_ENV, str(directory))
    config = in_cluster_config()
    assert config is not None
    assert config.cluster.server == "https://[::1]:6443"
    assert config.cluster.certificate_auth == str(directory / "ca.crt")
    assert config.namespace == "meshfed-system"
    assert connection_info(config, "meshfed-system").token == "first"
    (directory / "token").write_text("rotated by the kubelet\n")
    assert connection_info(config, "meshfed-system").token == "rotated by the kubelet"
