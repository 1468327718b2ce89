"""The composition root: load -> plan -> issue credentials -> render, assembled in one place.

Everything that turns a spec into documents goes through here: the CLI, the kube sink, the local
runtime, the audit, the graph, the benchmarks and the tests. ``build_plan`` is called here only,
and so is the pairing of the Istio renderer with the credentials step.

    spec (spec/) + PKI material (pki/)  ->  plan (plan/)  ->  credentials (credentials.py)
        ->  render/istio (manifests), render/envoy (local Envoy xDS)  ->  sinks, local, kube
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshfed.bundles.config import followed_pems
from meshfed.credentials import NO_CREDENTIALS, MeshCredentials, issue_credentials, mesh_credentials
from meshfed.pki import PKIMaterial, PKIStore
from meshfed.plan.build import build_plan
from meshfed.plan.model import FederationPlan
from meshfed.plan.trust import root_pems, trust_request
from meshfed.render.istio import RenderedMesh, render_mesh
from meshfed.spec.load import load_spec
from meshfed.spec.model import Federation

if TYPE_CHECKING:
    from meshfed.render.envoy import LocalLayout, ProcessConfig

__all__ = [
    "Workspace",
    "default_state_dir",
    "fetch_command",
    "init_pki",
    "open_workspace",
    "plan_of",
    "preview_istio",
    "render_istio",
    "workspace_for",
]


def default_state_dir(fed: Federation) -> Path:
    return Path(".meshfed") / fed.name


def plan_of(
    fed: Federation,
    roots: Mapping[str, str] | None = None,
    followed: Mapping[str, str] | None = None,
) -> FederationPlan:
    """The plan of ``fed``; ``roots`` maps each mesh to the PEM of the root(s) it chains to,
    ``followed`` each peer a mesh follows to the PEM of its last accepted bundle
    (`meshfed.bundles.config.followed_pems`).

    Without ``roots`` the plan carries no trust material (every bundle empty): enough for what
    only asks who may call what (the graph, the audit of what ``render`` would write)."""
    if roots is None:
        roots = {m.name: "" for m in fed.spec.meshes}
    return build_plan(fed, roots, followed)


def render_istio(
    plan: FederationPlan, credentials: Mapping[str, MeshCredentials]
) -> list[RenderedMesh]:
    """Every mesh's Istio manifests, in the plan's order."""
    return [render_mesh(plan, m, credentials[m.name]) for m in plan.meshes]


def preview_istio(fed: Federation | FederationPlan) -> list[RenderedMesh]:
    """What ``meshfed render`` writes for ``fed`` (or its plan without trust material, see
    `plan_of`), without trust material: nothing is issued, every Secret is empty."""
    plan = fed if isinstance(fed, FederationPlan) else plan_of(fed)
    return render_istio(plan, {m.name: NO_CREDENTIALS for m in plan.meshes})


@dataclass(frozen=True)
class Workspace:
    """One run's context: the spec, its state directory, its trust material and its plan."""

    spec_path: Path
    federation: Federation
    state_dir: Path
    pki: PKIMaterial
    plan: FederationPlan

    @property
    def roots(self) -> dict[str, str]:
        """The root PEMs the plan was resolved with, by mesh (what a cluster's state records):
        the PKI's, and for a partner mesh the roots of its followed bundle."""
        return {**followed_pems(self.federation, self.state_dir), **root_pems(self.pki)}

    def credentials(self) -> dict[str, MeshCredentials]:
        """Issue (or keep, while still good) every mesh's credentials in the state directory."""
        return issue_credentials(self.state_dir, self.plan, self.pki)

    def istio(self) -> list[RenderedMesh]:
        """Every mesh's Istio manifests, credentials issued first."""
        return render_istio(self.plan, self.credentials())

    def istio_with(self, mesh: str, credentials: Mapping[str, MeshCredentials]) -> RenderedMesh:
        """One mesh's Istio manifests with credentials issued already (``credentials()``)."""
        return render_mesh(self.plan, self.plan.mesh(mesh), credentials[mesh])

    def istio_mesh(self, mesh: str) -> RenderedMesh:
        """One mesh's Istio manifests (only that mesh's credentials are issued)."""
        planned = self.plan.mesh(mesh)
        creds = mesh_credentials(self.state_dir, self.plan, planned, self.pki)
        return render_mesh(self.plan, planned, creds)

    def envoy(self, layout: LocalLayout, runtime_dir: Path) -> list[ProcessConfig]:
        """Every Envoy of the local federation on ``layout`` (files under ``runtime_dir``)."""
        from meshfed.render.envoy import render_local  # not loaded by the controller

        return render_local(self.plan, layout, runtime_dir)


def workspace_for(spec_path: Path, fed: Federation, state_dir: Path | None = None) -> Workspace:
    """Create any missing PKI material of a loaded spec, and resolve its plan.

    Peers' bundles are read first: without one a local mesh follows there is no plan, and the
    error (naming the exact ``meshfed trust fetch`` to run) leaves the state directory as it
    was."""
    state = state_dir if state_dir is not None else default_state_dir(fed)
    followed = followed_pems(fed, state, fetch_command(spec_path, state_dir))
    material = PKIStore(state).ensure(trust_request(fed))
    plan = plan_of(fed, root_pems(material), followed)
    return Workspace(spec_path, fed, state, material, plan)


def init_pki(fed: Federation, state_dir: Path | None = None) -> tuple[Path, PKIMaterial]:
    """Create any missing PKI material of a loaded spec (``meshfed pki init``): the state
    directory and its CAs. Nothing of a peer's is needed for that (no plan is resolved):
    ``unfetched`` says which followed bundles ``render``, ``up`` and ``apply`` still need."""
    state = state_dir if state_dir is not None else default_state_dir(fed)
    return state, PKIStore(state).ensure(trust_request(fed))


def fetch_command(spec_path: Path, state_dir: Path | None) -> str:
    """The ``meshfed trust fetch`` that accepts the peers' bundles for this spec and state."""
    command = f"meshfed trust fetch {shlex.quote(str(spec_path))}"
    return command if state_dir is None else f"{command} --state {shlex.quote(str(state_dir))}"


def open_workspace(spec_path: Path, state_dir: Path | None = None) -> Workspace:
    """Load the spec, create any missing PKI material, and resolve the plan."""
    return workspace_for(spec_path, load_spec(spec_path), state_dir)
