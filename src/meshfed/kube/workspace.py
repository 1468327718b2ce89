"""A run against real clusters: the spec (workloads discovered where it leaves them out), its
PKI and plan, each mesh rendered, and the rollout of those objects to the clusters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from meshfed.kube.apply import Connect, Progress, Rollout
from meshfed.kube.client import Obj
from meshfed.kube.discover import AddressFound, Discovery, with_discovered
from meshfed.kube.state import canonical_json
from meshfed.kube.targets import ClusterTarget, cluster_targets
from meshfed.render.istio import RenderedMesh
from meshfed.spec.load import load_spec
from meshfed.spec.model import Federation
from meshfed.workspace import Workspace, workspace_for


@dataclass(frozen=True)
class KubeWorkspace:
    ws: Workspace
    roots: dict[str, str]
    discovered: list[Discovery]
    connect: Connect
    addresses: list[AddressFound] = field(default_factory=list)

    def rendered(self) -> dict[str, RenderedMesh]:
        return {rendered.mesh: rendered for rendered in self.ws.istio()}

    def targets(self, meshes: Iterable[str] | None = None) -> list[ClusterTarget]:
        return cluster_targets(self.ws.plan, self.rendered(), meshes)

    def rollout(
        self,
        targets: list[ClusterTarget],
        *,
        prune: bool = True,
        store_state: bool = True,
        retire: bool = False,
        forget: Iterable[str] = (),
        progress: Progress | None = None,
        prunable: Callable[[ClusterTarget, Obj], bool] | None = None,
        settled: Callable[[ClusterTarget, Obj], bool] | None = None,
        present: Callable[[ClusterTarget], list[Obj] | None] | None = None,
        live: Callable[[ClusterTarget, Obj], Obj | None] | None = None,
        canonical: Callable[[Obj], str] = canonical_json,
        workers: int = 1,
        state_known: bool = False,
    ) -> Rollout:
        return Rollout(
            self.ws.federation,
            self.ws.plan,
            self.roots,
            targets,
            self.connect,
            prune=prune,
            store_state=store_state,
            retire=retire,
            forget=forget,
            progress=progress,
            prunable=prunable,
            settled=settled,
            present=present,
            live=live,
            canonical=canonical,
            workers=workers,
            state_known=state_known,
        )

    def pki_targets(self, meshes: Iterable[str] | None = None) -> list[ClusterTarget]:
        """Every cluster of each mesh gets the mesh's ``cacerts`` (one intermediate per mesh)."""
        out = []
        for target in self.targets(meshes):
            cacerts = [
                o
                for o in target.objects
                if o["kind"] == "Secret" and o["metadata"]["name"] == "cacerts"
            ]
            out.append(ClusterTarget(target.mesh, target.cluster, cacerts))
        return out


def open_kube_workspace(spec_path: Path, state_dir: Path | None, connect: Connect) -> KubeWorkspace:
    """Load the spec, discover omitted workloads, create missing PKI, resolve the plan."""
    fed = load_spec(spec_path, discovery_pending=True)
    fed, found, addresses = with_discovered(fed, connect, str(spec_path))
    return kube_workspace(fed, spec_path, state_dir, connect, found, addresses)


def kube_workspace(
    fed: Federation,
    origin: Path,
    state_dir: Path | None,
    connect: Connect,
    found: list[Discovery] | None = None,
    addresses: list[AddressFound] | None = None,
) -> KubeWorkspace:
    """A complete spec (discovery done) with its PKI (created where missing) and plan."""
    ws = workspace_for(origin, fed, state_dir)
    return KubeWorkspace(ws, ws.roots, found or [], connect, addresses or [])
