"""Golden files for each shape of policy, like Istio's own authorization builder tests
(pilot/pkg/security/authz/builder/testdata/*-in.yaml / *-out.yaml): a small federation in
(tests/fixtures/istio_authz/<shape>-in.yaml), the exporting meshes' authorization objects out
(<shape>-out.yaml: Gateway servers, ingress VirtualServices, AuthorizationPolicies of the
ingress and of the exported workloads (their guards), the ingress EnvoyFilter). A change of the
Istio output shows here as a diff to review; what the objects mean is checked for every shape by
the oracle (tests/test_authz_matrix.py).

Regenerate after an intended change: ``MESHFED_UPDATE_GOLDEN=1 pytest tests/test_istio_golden.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.sinks.yaml_out import dump_all
from meshfed.spec.load import load_spec
from meshfed.workspace import preview_istio
from test_authz_matrix import run_matrix

GOLDEN = Path(__file__).parent / "fixtures" / "istio_authz"
SHAPES = sorted(p.name.removesuffix("-in.yaml") for p in GOLDEN.glob("*-in.yaml"))
KINDS = ("Gateway", "VirtualService", "AuthorizationPolicy", "EnvoyFilter")


def _authz_objects(spec: Path) -> list[dict[str, Any]]:
    out = []
    for rendered in preview_istio(load_spec(spec)):
        for name in ("ingress-gateway.yaml", "exports.yaml", "envoy-filters.yaml", "guards.yaml"):
            out += [d for d in rendered.files.get(name, []) if d["kind"] in KINDS]
    return out


def test_every_shape_has_both_files() -> None:
    assert len(SHAPES) >= 9
    for shape in SHAPES:
        assert (GOLDEN / f"{shape}-out.yaml").exists(), shape


@pytest.mark.parametrize("shape", SHAPES)
def test_rendered_authorization_matches_golden(shape: str) -> None:
    got = _authz_objects(GOLDEN / f"{shape}-in.yaml")
    out = GOLDEN / f"{shape}-out.yaml"
    if os.environ.get("MESHFED_UPDATE_GOLDEN"):
        out.write_text(dump_all(got))
    assert got == [d for d in yaml.safe_load_all(out.read_text()) if d], (
        f"{out.name} differs; review, then MESHFED_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_means_what_the_plan_says(shape: str) -> None:
    seen = run_matrix(load_spec(GOLDEN / f"{shape}-in.yaml"))
    assert seen["allowed"] and seen["cases"] > seen["allowed"]
    assert bool(seen["tcp-not-pinned"]) == (shape == "tcp-prefix")
