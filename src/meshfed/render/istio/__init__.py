"""Render the plan as Istio and Kubernetes manifests, one directory per mesh."""

from __future__ import annotations

from dataclasses import dataclass

from meshfed.credentials import MeshCredentials
from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.render.istio import boundary, gateways, imports, multicluster, trust
from meshfed.render.istio.objects import Obj

__all__ = ["RenderedMesh", "render_mesh"]


@dataclass(frozen=True)
class RenderedMesh:
    """Documents per file, relative to the mesh's directory. ``secret_files`` hold keys."""

    mesh: str
    files: dict[str, list[Obj]]
    secret_files: dict[str, list[Obj]]

    def kustomization(self) -> Obj:
        return {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": sorted(self.files),
        }


def render_mesh(plan: FederationPlan, mesh: MeshPlan, creds: MeshCredentials) -> RenderedMesh:
    files: dict[str, list[Obj]] = {
        "namespace.yaml": [gateways.namespace(plan, mesh)],
        "ingress-gateway.yaml": gateways.ingress(plan, mesh),
        "egress-gateway.yaml": gateways.egress(plan, mesh),
        "exports.yaml": boundary.routes(plan, mesh) + boundary.authorization(plan, mesh),
        "mtls.yaml": boundary.peer_authentication(plan, mesh),
        "telemetry.yaml": boundary.access_logging(plan, mesh),
        "imports.yaml": imports.consumer(plan, mesh),
    }
    if mesh.remotes:
        files["eastwest-gateway.yaml"] = multicluster.eastwest_gateway(plan, mesh)
    secret_files = {
        "cacerts.yaml": [trust.cacerts(plan, mesh, creds)],
        "ingress-credential.yaml": [trust.ingress_credential(plan, mesh, creds)],
        "istio-operator.yaml": [trust.mesh_config(plan, mesh)],
        **multicluster.settings_files(mesh),
    }
    return RenderedMesh(
        mesh.name,
        {name: docs for name, docs in files.items() if docs},
        secret_files,
    )
