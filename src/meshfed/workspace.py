"""One run's context: the spec, its state directory, its trust material and its plan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshfed.pki import PKIMaterial, PKIStore
from meshfed.plan.build import build_plan
from meshfed.plan.model import FederationPlan
from meshfed.plan.trust import root_pems, trust_request
from meshfed.spec.load import load_spec
from meshfed.spec.model import Federation


def default_state_dir(fed: Federation) -> Path:
    return Path(".meshfed") / fed.name


@dataclass(frozen=True)
class Workspace:
    spec_path: Path
    federation: Federation
    state_dir: Path
    pki: PKIMaterial
    plan: FederationPlan


def open_workspace(spec_path: Path, state_dir: Path | None = None) -> Workspace:
    """Load the spec, create any missing PKI material, and resolve the plan."""
    fed = load_spec(spec_path)
    state = state_dir if state_dir is not None else default_state_dir(fed)
    material = PKIStore(state).ensure(trust_request(fed))
    plan = build_plan(fed, root_pems(material))
    return Workspace(spec_path, fed, state, material, plan)
