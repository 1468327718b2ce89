"""Render the plan as Istio and Kubernetes manifests, one directory per mesh."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshfed.credentials import MeshCredentials
from meshfed.plan.model import FederationPlan, MeshPlan
from meshfed.render.istio import (
    boundary,
    filters,
    gateways,
    imports,
    install,
    limits,
    multicluster,
    trust,
    workload,
)
from meshfed.render.istio.objects import Obj

__all__ = ["RenderedMesh", "render_mesh"]


@dataclass(frozen=True)
class RenderedMesh:
    """Documents per file, relative to the mesh's directory.

    ``files`` are the manifests (the kustomization lists them); ``secret_files`` hold keys (in
    ``secrets/``, applied first); ``install_files`` are the mesh's Istio install settings
    (IstioOperator, istiod Helm values, Sail ``Istio``): beside the manifests, never applied
    with them.
    """

    mesh: str
    files: dict[str, list[Obj]]
    secret_files: dict[str, list[Obj]]
    install_files: dict[str, list[Obj]] = field(default_factory=dict)

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
        "envoy-filters.yaml": filters.ingress_filter(plan, mesh)
        + filters.workload_filters(plan, mesh),
        "imports.yaml": imports.consumer(plan, mesh),
        "limits.yaml": limits.objects(plan, mesh),
        "guards.yaml": workload.guard_policies(plan, mesh) + workload.xfcc_filters(plan, mesh),
    }
    if mesh.remotes:
        files["eastwest-gateway.yaml"] = multicluster.eastwest_gateway(plan, mesh)
    secret_files = {
        "cacerts.yaml": [trust.cacerts(plan, mesh, creds)],
        "ingress-credential.yaml": [trust.ingress_credential(plan, mesh, creds)],
    }
    return RenderedMesh(
        mesh.name,
        {name: docs for name, docs in files.items() if docs},
        secret_files,
        install.install_files(plan, mesh),
    )
