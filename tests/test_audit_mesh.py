"""The whole-mesh audit: Istio's attachment and composition rules, the install sources it reads,
and the shapes it must NOT flag (each weakening's failing case is in the corpus,
tests/fixtures/audit/manifests/bad/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.audit import audit_manifests
from meshfed.audit.attach import attachment
from meshfed.audit.install import mesh_configs, pilot_env
from meshfed.audit.model import Finding, Report, Severity
from meshfed.audit.peer_auth import decide
from meshfed.audit.sources.manifests import Doc, docs_from_text


def docs(text: str) -> list[Doc]:
    return docs_from_text(text, "t.yaml", ".")


def audit(tmp_path: Path, text: str) -> Report:
    (tmp_path / "mesh.yaml").write_text(text)
    return audit_manifests(tmp_path)


def hits(report: Report, check: str) -> list[Finding]:
    return [f for f in report.findings if f.check == check]


def status(report: Report, check: str) -> str:
    return next(r.status for r in report.results if r.info.id == check)


def pa(name: str, ns: str, mode: str | None, selector: str = "", ports: str = "") -> str:
    spec = f"  selector: {{matchLabels: {{{selector}}}}}\n" if selector else ""
    spec += f"  mtls: {{mode: {mode}}}\n" if mode else "  mtls: {}\n"
    spec += f"  portLevelMtls: {{{ports}}}\n" if ports else ""
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n"
    )


# --- PeerAuthentication composed as istiod does (ComposePeerAuthentication) --------------------


@pytest.mark.parametrize(
    ("policies", "labels", "mode", "ports"),
    [
        ("", {}, "PERMISSIVE", {}),  # nothing: Istio's default
        (pa("m", "istio-system", "STRICT"), {}, "STRICT", {}),
        (pa("m", "istio-system", None), {}, "PERMISSIVE", {}),  # UNSET at mesh: PERMISSIVE
        (pa("m", "istio-system", "STRICT") + pa("n", "shop", "UNSET"), {}, "STRICT", {}),
        (pa("m", "istio-system", "STRICT") + pa("n", "shop", "PERMISSIVE"), {}, "PERMISSIVE", {}),
        # a selector in the root namespace is ignored
        (pa("m", "istio-system", "STRICT", "app: web"), {"app": "web"}, "PERMISSIVE", {}),
        # workload over namespace; an UNSET port inherits the workload's mode
        (
            pa("n", "shop", "PERMISSIVE") + pa("w", "shop", "STRICT", "app: web", "8080: {}"),
            {"app": "web"},
            "STRICT",
            {"8080": "STRICT"},
        ),
        (
            pa("w", "shop", None, "app: web", "9000: {mode: DISABLE}")
            + pa("m", "istio-system", "STRICT"),
            {"app": "web"},
            "STRICT",
            {"9000": "DISABLE"},
        ),
        # a workload policy of another workload does not apply
        (pa("w", "shop", "DISABLE", "app: db"), {"app": "web"}, "PERMISSIVE", {}),
    ],
)
def test_mtls_composition(
    policies: str, labels: dict[str, str], mode: str, ports: dict[str, str]
) -> None:
    decision = decide(docs(policies), "istio-system", "shop", labels)
    assert decision.mode == mode
    assert {p: m for p, (m, _) in decision.ports.items()} == ports


def test_oldest_policy_wins_when_timestamps_say_so() -> None:
    text = pa("newer", "shop", "PERMISSIVE") + pa("older", "shop", "STRICT")
    text = text.replace(
        "name: newer,", "name: newer, creationTimestamp: '2026-02-01T00:00:00Z',"
    ).replace("name: older,", "name: older, creationTimestamp: '2025-01-01T00:00:00Z',")
    assert decide(docs(text), "istio-system", "shop").mode == "STRICT"


# --- scope (attachment) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "spec", "described", "reaches"),
    [
        (
            "{name: p, namespace: istio-system}",
            "{}",
            "mesh-wide (root namespace istio-system)",
            True,
        ),
        ("{name: p, namespace: shop}", "{}", "namespace shop", True),
        ("{name: p, namespace: cards}", "{}", "namespace cards", False),
        (
            "{name: p, namespace: istio-system}",
            "{selector: {matchLabels: {app: web}}}",
            "workloads app=web in every namespace",
            True,
        ),
        (
            "{name: p, namespace: shop}",
            "{selector: {matchLabels: {app: db}}}",
            "workloads app=db in namespace shop",
            False,
        ),
        (
            "{name: p, namespace: shop}",
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]}",
            "Gateway shop/gw",
            False,
        ),
    ],
)
def test_authorization_policy_scope(meta: str, spec: str, described: str, reaches: bool) -> None:
    (doc,) = docs(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {meta}\nspec: {spec}\n"
    )
    scope = attachment(doc, "istio-system")
    assert scope.describe() == described
    assert scope.reaches("shop", {"app": "web"}) is reaches


def test_root_namespace_comes_from_mesh_config(tmp_path: Path) -> None:
    report = audit(
        tmp_path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
        "data:\n  mesh: |-\n    rootNamespace: istio-config\n    trustDomain: a.example\n---\n"
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: open, namespace: istio-config}\nspec: {rules: [{}]}\n",
    )
    (finding,) = hits(report, "authz-allow-open")
    assert finding.severity == Severity.CRITICAL
    assert "mesh-wide (root namespace istio-config)" in finding.message


# --- where the mesh config comes from --------------------------------------------------------


INSTALLS = {
    "IstioOperator values": """\
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: x, namespace: istio-system}
spec:
  values:
    meshConfig: {trustDomain: a.example}
  components:
    pilot:
      k8s:
        env: [{name: PILOT_SKIP_VALIDATE_TRUST_DOMAIN, value: "true"}]
""",
    "Sail Istio": """\
apiVersion: sailoperator.io/v1
kind: Istio
metadata: {name: default}
spec:
  values:
    meshConfig: {trustDomain: a.example}
    pilot:
      env: {PILOT_SKIP_VALIDATE_TRUST_DOMAIN: "true"}
""",
    "Helm values": """\
meshConfig:
  trustDomain: a.example
pilot:
  env:
    PILOT_SKIP_VALIDATE_TRUST_DOMAIN: "true"
""",
    "istiod Deployment and istio ConfigMap": """\
apiVersion: v1
kind: ConfigMap
metadata: {name: istio-canary, namespace: istio-system}
data:
  mesh: "trustDomain: a.example"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: istiod, namespace: istio-system}
spec:
  template:
    spec:
      containers:
        - name: discovery
          env: [{name: PILOT_SKIP_VALIDATE_TRUST_DOMAIN, value: "true"}]
""",
}


@pytest.mark.parametrize("text", INSTALLS.values(), ids=list(INSTALLS))
def test_install_sources(text: str, tmp_path: Path) -> None:
    found = docs(text)
    assert [c.config.get("trustDomain") for c in mesh_configs(found)] == ["a.example"]
    assert [(e.name, e.value) for e in pilot_env(found)] == [
        ("PILOT_SKIP_VALIDATE_TRUST_DOMAIN", "true")
    ]
    (finding,) = hits(audit(tmp_path, text), "mesh-trust-settings")
    assert finding.location.file == "mesh.yaml" and finding.location.line is not None
    line = (tmp_path / "mesh.yaml").read_text().splitlines()[finding.location.line - 1]
    assert "true" in line


# --- shapes that must not be flagged ----------------------------------------------------------

INGRESS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: public-ingress, namespace: web}
spec:
  template:
    metadata:
      labels: {istio: public-ingress}
      annotations: {inject.istio.io/templates: gateway}
    spec: {containers: [{name: istio-proxy, image: auto}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: web}
spec:
  selector: {istio: public-ingress}
  servers:
    - port: {number: 443, name: https, protocol: HTTPS}
      hosts: [shop.example.com]
      tls: {mode: SIMPLE, credentialName: shop-cert}
    - port: {number: 80, name: http, protocol: HTTP}
      hosts: [shop.example.com]
      tls: {httpsRedirect: true}
"""


def test_public_https_ingress_is_a_note_not_a_failure(tmp_path: Path) -> None:
    report = audit(tmp_path, INGRESS)
    assert [f.severity for f in hits(report, "gateway-tls")] == [Severity.INFO]
    assert status(report, "gateway-tls") == "pass"


def test_a_policy_naming_principals_makes_mutual_needed(tmp_path: Path) -> None:
    policy = """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-partner, namespace: web}
spec:
  selector: {matchLabels: {istio: public-ingress}}
  action: DENY
  rules: [{from: [{source: {principals: [partner.example/ns/x/sa/y]}}]}]
"""
    (finding,) = hits(audit(tmp_path, INGRESS + policy), "gateway-tls")
    assert finding.severity == Severity.HIGH
    assert "DENY policy deny-partner matches callers by identity" in finding.message


EGRESS_IMPORT = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: imported, namespace: meshfed-system}
spec:
  hosts: [ledger.shop.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 9000, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: imported, namespace: meshfed-system}
spec:
  hosts: [ledger.shop.svc.cluster.local]
  tcp:
    - match: [{port: 9000}]
      route: [{destination: {host: federation-egress.meshfed-system.svc.cluster.local}}]
"""


def test_resolution_none_routed_to_the_egress_gateway_opens_nothing(tmp_path: Path) -> None:
    assert hits(audit(tmp_path, EGRESS_IMPORT), "egress-service-entry-open") == []
    back_to_itself = EGRESS_IMPORT.replace(
        "federation-egress.meshfed-system.svc.cluster.local", "ledger.shop.svc.cluster.local"
    )
    (finding,) = hits(audit(tmp_path, back_to_itself), "egress-service-entry-open")
    assert "0.0.0.0:9000" in finding.message


QUIET = {
    "DENY by identity under STRICT": pa("m", "istio-system", "STRICT")
    + "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
    "metadata: {name: d, namespace: shop}\n"
    "spec: {action: DENY, rules: [{from: [{source: {principals: [a/ns/b/sa/c]}}]}]}\n",
    "Sidecar ALLOW_ANY through an egress proxy": "apiVersion: networking.istio.io/v1\n"
    "kind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec:\n"
    "  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n"
    "    egressProxy: {host: istio-egressgateway.istio-system.svc.cluster.local}\n",
    "plaintext to an external host": "apiVersion: networking.istio.io/v1\n"
    "kind: DestinationRule\nmetadata: {name: d, namespace: shop}\n"
    "spec: {host: www.example.org, trafficPolicy: {tls: {mode: DISABLE}}}\n",
    "a STRICT selector policy in its namespace": pa("m", "istio-system", "STRICT")
    + pa("w", "shop", "STRICT", "app: web", "8080: {mode: STRICT}"),
    "an EnvoyFilter adding a header": "apiVersion: networking.istio.io/v1alpha3\n"
    "kind: EnvoyFilter\nmetadata: {name: e, namespace: istio-system}\nspec:\n"
    "  configPatches:\n  - applyTo: ROUTE_CONFIGURATION\n    patch:\n      operation: MERGE\n"
    "      value: {response_headers_to_add: [{header: {key: x, value: y}}]}\n",
    "an ALLOW rule naming operations for one workload": "apiVersion: security.istio.io/v1\n"
    "kind: AuthorizationPolicy\nmetadata: {name: health, namespace: shop}\n"
    "spec: {selector: {matchLabels: {app: web}},\n"
    "       rules: [{to: [{operation: {paths: [/health]}}]}]}\n",
}


@pytest.mark.parametrize("text", QUIET.values(), ids=list(QUIET))
def test_sound_configurations_pass(text: str, tmp_path: Path) -> None:
    report = audit(tmp_path, text)
    assert [(f.check, f.message) for f in report.findings if f.severity >= Severity.LOW] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: a, namespace: shop}\nspec: {action: AUDIT, rules: [{}]}\n",
            "allows and denies nothing",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: c, namespace: shop}\n"
            "spec: {action: CUSTOM, provider: {name: nowhere}, rules: [{}]}\n",
            "fail closed",
        ),
        (pa("ignored", "istio-system", "PERMISSIVE", "app: web"), None),
    ],
)
def test_notes_that_do_not_fail(text: str, expected: str | None, tmp_path: Path) -> None:
    report = audit(tmp_path, text)
    found = [f for f in report.findings if f.severity >= Severity.LOW]
    assert found == [], [(f.check, f.message) for f in found]
    notes = [f.message for f in report.findings if f.severity == Severity.INFO]
    assert (expected is None and notes == []) or any(expected in n for n in notes if expected)
