"""Shared fixtures: the bundled examples, their plans, and their rendered Istio output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

from meshfed.render.istio import RenderedMesh
from meshfed.sinks.files import write_rendered
from meshfed.spec.load import load_spec
from meshfed.spec.model import Federation
from meshfed.workspace import Workspace, open_workspace

# No time limit per example: speed is measured in bench/, never asserted in a test (a loaded
# 2-core machine took py-spiffe's first import past hypothesis's 200 ms default).
settings.register_profile("meshfed", deadline=None)
settings.load_profile("meshfed")

pytest_plugins = ["inotify_budget"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def bank() -> Federation:
    return load_spec(EXAMPLES / "bank.yaml")


@pytest.fixture(scope="session")
def partners() -> Federation:
    return load_spec(EXAMPLES / "partners.yaml")


@dataclass(frozen=True)
class Rendered:
    workspace: Workspace
    meshes: dict[str, RenderedMesh]
    out: Path

    def docs(self, mesh: str, kind: str | None = None) -> list[dict]:  # type: ignore[type-arg]
        """The manifests ``kubectl apply -k`` applies, and the kustomization itself."""
        mesh_dir = self.out / mesh
        kustomization = yaml.safe_load((mesh_dir / "kustomization.yaml").read_text())
        found = []
        for name in sorted([*kustomization["resources"], "kustomization.yaml"]):
            for doc in yaml.safe_load_all((mesh_dir / name).read_text()):
                if doc and (kind is None or doc["kind"] == kind):
                    found.append(doc)
        return found

    def install_docs(self, mesh: str) -> dict[str, dict]:  # type: ignore[type-arg]
        """The install settings beside the manifests (IstioOperator, Helm values, Sail)."""
        return {
            name: yaml.safe_load((self.out / mesh / name).read_text())
            for name in self.meshes[mesh].install_files
        }

    def secret_docs(self, mesh: str) -> dict[str, dict]:  # type: ignore[type-arg]
        return {
            p.name: yaml.safe_load(p.read_text())
            for p in sorted((self.out / mesh / "secrets").glob("*.yaml"))
        }


def render_example(name: str, base: Path) -> Rendered:
    ws = open_workspace(EXAMPLES / f"{name}.yaml", base / "state")
    meshes = {rendered.mesh: rendered for rendered in ws.istio()}
    out = base / "out"
    write_rendered(out, list(meshes.values()))
    return Rendered(ws, meshes, out)


@pytest.fixture(scope="session")
def bank_rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render_example("bank", tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="session")
def partners_rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render_example("partners", tmp_path_factory.mktemp("partners"))
