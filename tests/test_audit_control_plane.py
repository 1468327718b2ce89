"""A gateway that only passes TLS through to istiod (primary-remote) is Istio's own pattern:
flagged low with advice, while the same shape in front of anything else stays high."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.audit import Severity, audit_manifests, audit_spec

from conftest import EXAMPLES

GATEWAY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: eastwest, namespace: meshfed-system}
spec:
  selector: {matchLabels: {istio: eastwest}}
  template:
    metadata:
      labels: {istio: eastwest, sidecar.istio.io/inject: "true"}
      annotations: {inject.istio.io/templates: gateway}
    spec: {containers: [{name: istio-proxy, image: auto}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istiod-gateway, namespace: meshfed-system}
spec:
  selector: {istio: eastwest}
  servers:
  - port: {number: 15012, name: tls-istiod, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: istiod-vs, namespace: meshfed-system}
spec:
  hosts: ["*"]
  gateways: [istiod-gateway]
  tls:
  - match: [{port: 15012, sniHosts: ["*"]}]
    route: [{destination: {host: DEST, port: {number: 15012}}}]
"""


@pytest.mark.parametrize(
    ("destination", "worst"),
    [
        ("istiod.istio-system.svc.cluster.local", Severity.LOW),
        ("vault.cards.svc.cluster.local", Severity.HIGH),
    ],
)
def test_istiod_only_gateway(tmp_path: Path, destination: str, worst: Severity) -> None:
    (tmp_path / "gw.yaml").write_text(GATEWAY.replace("DEST", destination))
    report = audit_manifests(tmp_path)
    hosts = [f for f in report.findings if f.check == "gateway-wildcard-host"]
    assert hosts and max(f.severity.rank for f in hosts) == worst.rank


def test_primary_remote_render_has_no_high_finding(tmp_path: Path) -> None:
    text = (
        (EXAMPLES / "bank.yaml")
        .read_text()
        .replace(
            "      kubernetes: {context: pci-admin, istioNamespace: istio-system}\n",
            "      clusters:\n        - {name: pci-a, context: pci-a, role: primary}\n"
            "        - {name: pci-b, context: pci-b, role: remote}\n",
            1,
        )
    )
    spec = tmp_path / "bank.yaml"
    spec.write_text(text)
    report = audit_spec(spec, tmp_path / "state")
    assert [f for f in report.findings if f.severity.rank >= Severity.MEDIUM.rank] == []
