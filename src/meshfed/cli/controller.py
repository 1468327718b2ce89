"""``meshfed controller run | manifests | install`` and ``meshfed status --kube``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import yaml

from meshfed.cli.common import OUTPUT_FILE, Output, plain_console, reported
from meshfed.cli.controller_run import (
    _CONTEXT,
    _KUBECONFIG,
    _NAMESPACE,
    run_command,
)
from meshfed.controller.crd import GROUP, VERSION
from meshfed.controller.manifests import (
    DEFAULT_IMAGE,
    NAME,
    TOKEN_SECRET,
    ControllerOptions,
    management_manifests,
    target_manifests,
)
from meshfed.kube.client import KubeClient
from meshfed.kube.config import resolve_context
from meshfed.kube.errors import KubeError
from meshfed.kube.remote_secret import istioctl_secret, kubeconfig_text
from meshfed.plan.names import GATEWAY_NAMESPACE

out = Output(plain_console)
err = Output(lambda: plain_console(stderr=True))


@click.group()
def controller() -> None:
    """The federation controller: meshfed running in Kubernetes, reconciling continuously."""


controller.add_command(run_command)


def _dump(objects: list[dict[str, Any]]) -> str:
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def _options(
    namespace: str, image: str, replicas: int, in_cluster: str | None, bundle_port: int | None
) -> ControllerOptions:
    return ControllerOptions(
        namespace, image, replicas, in_cluster_context=in_cluster, bundle_port=bundle_port
    )


_IMAGE = click.option("--image", default=DEFAULT_IMAGE, show_default=True, help="Its image.")
_REPLICAS = click.option("--replicas", type=int, default=2, show_default=True, help="Pods.")
_IN_CLUSTER = click.option(
    "--in-cluster-context",
    default=None,
    help="The context name under which specs refer to the management cluster itself.",
)
_BUNDLE_PORT = click.option(
    "--bundle-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the local meshes' SPIFFE bundles on this port, behind the Service "
    "meshfed-bundles (443). Default: no bundle endpoint.",
)
_ISTIO_NS = click.option(
    "--istio-namespace",
    "istio_namespaces",
    multiple=True,
    default=["istio-system"],
    show_default=True,
    help="Istio namespaces of the mesh clusters (the reader role on remotes is named by it).",
)


@controller.command("manifests")
@_NAMESPACE
@_IMAGE
@_REPLICAS
@_IN_CLUSTER
@_BUNDLE_PORT
@click.option(
    "--target",
    is_flag=True,
    help="Print what each mesh cluster needs instead (identity, rules, token).",
)
@_ISTIO_NS
def manifests_command(
    namespace: str,
    image: str,
    replicas: int,
    in_cluster_context: str | None,
    bundle_port: int | None,
    target: bool,
    istio_namespaces: tuple[str, ...],
) -> None:
    """The CRD, ServiceAccount, least-privilege RBAC and Deployment (or, --target, what a mesh
    cluster needs), as YAML for kubectl apply."""
    if target:
        click.echo(_dump(target_manifests(tuple(istio_namespaces))), nl=False)
        return
    opts = _options(namespace, image, replicas, in_cluster_context, bundle_port)
    click.echo(_dump(management_manifests(opts)), nl=False)


def _apply_all(client: KubeClient, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        client.apply(obj, force=True)
        err.print(
            f"  {client.label}: applied {obj['kind']} {obj['metadata']['name']}", markup=False
        )


@controller.command("install")
@_KUBECONFIG
@_CONTEXT
@_NAMESPACE
@_IMAGE
@_REPLICAS
@_IN_CLUSTER
@_BUNDLE_PORT
@_ISTIO_NS
@click.option(
    "--target-context",
    "targets",
    multiple=True,
    metavar="CONTEXT",
    help="A mesh cluster (kubeconfig context, as the spec names it): give the controller an "
    "identity there and put its remote secret in the management cluster. Repeatable.",
)
@click.option("--no-controller", is_flag=True, help="Only the --target-context clusters.")
def install_command(
    kubeconfig: Path | None,
    context: str | None,
    namespace: str,
    image: str,
    replicas: int,
    in_cluster_context: str | None,
    bundle_port: int | None,
    istio_namespaces: tuple[str, ...],
    targets: tuple[str, ...],
    no_controller: bool,
) -> None:
    """Apply the controller to the management cluster (server-side apply), and for each
    --target-context its identity there plus an Istio-format remote secret reaching it."""
    with reported(KubeError):
        management = KubeClient("management", resolve_context(context, kubeconfig))
        if not no_controller:
            opts = _options(namespace, image, replicas, in_cluster_context, bundle_port)
            objects = management_manifests(opts)
            _apply_all(management, objects[:2])  # namespace and CRD first
            management.wait_for(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                objects[1]["metadata"]["name"],
                None,
                lambda o: any(
                    c.get("type") == "Established" and c.get("status") == "True"
                    for c in (o.get("status") or {}).get("conditions") or []
                ),
            )
            _apply_all(management, objects[2:])
        for target in targets:
            secret = install_target(management, namespace, target, kubeconfig, istio_namespaces)
            err.print(f"  management: remote secret {namespace}/{secret}", markup=False)
    out.print(f"meshfed controller installed in namespace {namespace}", markup=False)


def install_target(
    management: KubeClient,
    namespace: str,
    context: str,
    kubeconfig: Path | None,
    istio_namespaces: tuple[str, ...],
) -> str:
    """The controller's identity on one mesh cluster, and its remote secret (Istio's format,
    key = the context name) in the management cluster. Returns the Secret's name."""
    client = KubeClient.for_context(context, kubeconfig)
    _apply_all(client, target_manifests(istio_namespaces))
    token = client.wait_for(
        "v1",
        "Secret",
        TOKEN_SECRET,
        GATEWAY_NAMESPACE,
        lambda s: bool((s.get("data") or {}).get("token")),
        timeout=60,
    )
    import base64

    data = token["data"]
    text = kubeconfig_text(
        context,
        client.server,
        base64.b64decode(data["ca.crt"]),
        base64.b64decode(data["token"]).decode(),
    )
    secret = istioctl_secret(context, namespace, text)
    secret["metadata"].pop("creationTimestamp", None)
    secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] = NAME
    management.apply(secret, force=True)
    return str(secret["metadata"]["name"])


# -- status --kube ------------------------------------------------------------------------------


def _conditions(conds: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{c.get('type')}={c.get('status')}" + (f" ({c.get('reason')})" if c.get("reason") else "")
        for c in conds
    )


def print_kube_status(
    federation: str | None, kubeconfig: Path | None, context: str | None, as_json: bool
) -> None:
    """The Federation objects' status, as the controller wrote it."""
    from rich.table import Table

    with reported(KubeError):
        client = KubeClient("management", resolve_context(context, kubeconfig))
        if federation:
            found = client.get(f"{GROUP}/{VERSION}", "Federation", federation)
            if found is None:
                raise KubeError(f"no Federation {federation!r} in the management cluster")
            items = [found]
        else:
            items = client.list(f"{GROUP}/{VERSION}", "Federation")
    if as_json:
        click.echo(
            json.dumps(
                [{"name": i["metadata"]["name"], **(i.get("status") or {})} for i in items],
                indent=2,
            )
        )
        return
    for item in items:
        status = item.get("status") or {}
        name = item["metadata"]["name"]
        gen = item["metadata"].get("generation")
        seen = status.get("observedGeneration")
        out.print(
            f"Federation {name} (generation {gen}, observed {seen}, last reconcile "
            f"{status.get('lastReconcile', 'never')})",
            markup=False,
        )
        for cond in status.get("conditions") or []:
            message = f": {cond['message']}" if cond.get("message") else ""
            out.print(
                f"  {cond['type']}={cond['status']} {cond.get('reason', '')}{message}", markup=False
            )
        table = Table(title=f"meshes of {name}")
        for column in ("mesh", "cluster", "conditions"):
            table.add_column(column, overflow="fold")
        for mesh in status.get("meshes") or []:
            table.add_row(mesh["name"], "", _conditions(mesh.get("conditions") or []))
            for cluster in mesh.get("clusters") or []:
                table.add_row("", cluster["name"], _conditions(cluster.get("conditions") or []))
        out.print(table)
        imports = Table(title=f"imports of {name}")
        for column in ("mesh", "local name", "served by", "why", "failover order"):
            imports.add_column(column, overflow="fold")
        for imp in status.get("imports") or []:
            imports.add_row(
                imp.get("mesh", ""),
                imp.get("host", ""),
                imp.get("servedBy", "-"),
                imp.get("reason", ""),
                " > ".join(imp.get("sources") or []),
            )
        out.print(imports)


def wait_ready(client: KubeClient, name: str, timeout: float) -> dict[str, Any]:
    """The Federation once its Ready condition is True for its current generation."""
    deadline = time.monotonic() + timeout
    while True:
        found = client.get(f"{GROUP}/{VERSION}", "Federation", name) or {}
        status = found.get("status") or {}
        gen = (found.get("metadata") or {}).get("generation")
        ready = any(
            c.get("type") == "Ready"
            and c.get("status") == "True"
            and c.get("observedGeneration") == gen
            for c in status.get("conditions") or []
        )
        if ready:
            return found
        if time.monotonic() > deadline:
            conditions = _conditions(status.get("conditions") or [])
            raise KubeError(f"Federation {name} not Ready after {timeout:.0f}s: {conditions}")
        time.sleep(0.2)


# -- rotation and split custody against the controller's state ---------------------------------


@controller.command("rotate")
@click.argument("federation")
@click.argument("kind", type=click.Choice(["intermediate", "root", "abort"]))
@click.option("--mesh", default=None, help="intermediate: the mesh; root: Federated only.")
@_KUBECONFIG
@_CONTEXT
def rotate_command(
    federation: str,
    kind: str,
    mesh: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Ask the controller for a staged rotation (the annotation meshfed.dev/rotate); it runs
    the steps of `meshfed rotate`, applying after each; `meshfed status --kube` follows it."""
    from meshfed.controller.rotation import ANNOTATION, parse_request

    value = kind if kind == "abort" else (f"{kind}/{mesh}" if mesh else kind)
    with reported(KubeError, ValueError):
        parse_request(value)
        client = KubeClient("management", resolve_context(context, kubeconfig))
        res = client.resource(f"{GROUP}/{VERSION}", "Federation")
        client.request(
            "PATCH",
            res.path(None, federation),
            body={"metadata": {"annotations": {ANNOTATION: value}}},
            content_type="application/merge-patch+json",
            what=f"Federation {federation}",
        )
    out.print(f"asked the controller for: {value} (Federation {federation})", markup=False)


def _state_session(
    federation: str, kubeconfig: Path | None, context: str | None, namespace: str
) -> tuple[Any, Any]:
    import tempfile

    from meshfed.controller.pkistate import SecretState
    from meshfed.controller.reconcile import parse_federation

    client = KubeClient("management", resolve_context(context, kubeconfig))
    found = client.get(f"{GROUP}/{VERSION}", "Federation", federation)
    if found is None:
        raise KubeError(f"no Federation {federation!r} in the management cluster")
    fed = parse_federation(found)
    work = Path(tempfile.mkdtemp(prefix="meshfed-state-"))
    return fed, SecretState(client, namespace, federation, work)


@controller.command("pki-request")
@click.argument("federation")
@click.option("--mesh", required=True, help="The mesh whose intermediate key is made.")
@click.option("-o", "--output", type=OUTPUT_FILE, required=True, help="Where to write the CSR.")
@_KUBECONFIG
@_CONTEXT
@_NAMESPACE
def pki_request_command(
    federation: str,
    mesh: str,
    output: Path,
    kubeconfig: Path | None,
    context: str | None,
    namespace: str,
) -> None:
    """Split custody: MESH's intermediate key is made in the controller's state Secret (it
    never leaves it); the CSR goes to OUTPUT for the root holder (`meshfed pki sign`)."""
    from datetime import UTC, datetime

    from meshfed.pki import PKIStore
    from meshfed.pki.errors import PKIError
    from meshfed.pki.signing import request_intermediate
    from meshfed.plan.trust import trust_request

    with reported(KubeError, PKIError):
        fed, state = _state_session(federation, kubeconfig, context, namespace)
        with state.session() as state_dir:
            csr = request_intermediate(
                PKIStore(state_dir), trust_request(fed), mesh, datetime.now(UTC)
            )
            output.write_bytes(csr.read_bytes())
    out.print(f"CSR for mesh {mesh} written to {output}; its key stays in the Secret", markup=False)


@controller.command("pki-import")
@click.argument("federation")
@click.argument("cert", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_KUBECONFIG
@_CONTEXT
@_NAMESPACE
def pki_import_command(
    federation: str,
    cert: Path,
    kubeconfig: Path | None,
    context: str | None,
    namespace: str,
) -> None:
    """Split custody: the signed intermediate goes beside its key in the state Secret (or as
    a rotation's new one); the controller goes on at its next reconcile."""
    from datetime import UTC, datetime

    from meshfed.pki import PKIStore
    from meshfed.pki.errors import PKIError
    from meshfed.pki.signing import import_certificate

    with reported(KubeError, PKIError):
        _, state = _state_session(federation, kubeconfig, context, namespace)
        with state.session() as state_dir:
            imported = import_certificate(
                PKIStore(state_dir), cert.read_bytes(), str(cert), datetime.now(UTC)
            )
    out.print(
        f"imported the {imported.mesh} intermediate into the controller's state", markup=False
    )


def register(group: click.Group) -> None:
    group.add_command(controller)
