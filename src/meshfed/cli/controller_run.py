"""``meshfed controller run``: the controller process (and the management-cluster options the
other ``controller`` commands share)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from meshfed.cli.common import reported
from meshfed.controller.clusters import Connector
from meshfed.controller.leader import LeaderElector
from meshfed.controller.manifests import DEFAULT_NAMESPACE, allocator
from meshfed.kube.client import KubeClient
from meshfed.kube.config import resolve_context
from meshfed.kube.errors import KubeError

_KUBECONFIG = click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="kubeconfig of the management cluster (default: in-cluster, else $KUBECONFIG / "
    "~/.kube/config as kubectl).",
)
_CONTEXT = click.option("--context", default=None, help="Context of the management cluster.")
_NAMESPACE = click.option(
    "--namespace", default=DEFAULT_NAMESPACE, show_default=True, help="The controller's namespace."
)


def _management(kubeconfig: Path | None, context: str | None) -> KubeClient:
    from meshfed.controller.clusters import in_cluster_config

    if kubeconfig is None and context is None:
        config = in_cluster_config()
        if config is not None:
            return KubeClient("management", config)
    return KubeClient("management", resolve_context(context, kubeconfig))


@click.command("run")
@_KUBECONFIG
@_CONTEXT
@_NAMESPACE
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Private directory the PKI state is checked out to (default: a new temporary one).",
)
@click.option(
    "--in-cluster-context",
    default=None,
    help="The context name under which specs refer to the management cluster itself.",
)
@click.option("--resync", type=float, default=300.0, show_default=True, help="Seconds.")
@click.option("--health-port", type=int, default=8080, show_default=True, help="0: none.")
@click.option("--lease-duration", type=float, default=15.0, show_default=True, help="Seconds.")
@click.option(
    "--bundle-web-ca",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Peers' https_web bundle endpoints: a CA bundle to trust instead of the system's.",
)
@click.option(
    "--bundle-listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve each local mesh's SPIFFE bundle here (the path of its bundleEndpoint.url), "
    "as `meshfed trust serve` does; every replica serves, the leader numbers changes.",
)
@click.option(
    "--bundle-web-cert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="https_web bundle endpoints: the Web PKI certificate chain (PEM), re-read on change.",
)
@click.option(
    "--bundle-web-key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="https_web bundle endpoints: its private key (PEM).",
)
def run_command(
    kubeconfig: Path | None,
    context: str | None,
    namespace: str,
    work_dir: Path | None,
    in_cluster_context: str | None,
    resync: float,
    health_port: int,
    lease_duration: float,
    bundle_web_ca: Path | None,
    bundle_listen: str | None,
    bundle_web_cert: Path | None,
    bundle_web_key: Path | None,
) -> None:
    """Watch Federations and keep every mesh's cluster as they say (one replica acts at a
    time: leader election with a Lease in NAMESPACE)."""
    import logging
    import tempfile

    from meshfed.controller.operator import Controller, identity, run, serve_health
    from meshfed.pki.files import mkdir_private

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx2", "httpcore2", "httpx", "httpcore"):  # a line per request: too much
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with reported(KubeError):
        management = _management(kubeconfig, context)
        management.version()
        config = management.config
    if work_dir is None:
        work_dir = Path(tempfile.mkdtemp(prefix="meshfed-controller-"))
    mkdir_private(work_dir)
    connector = Connector(management, namespace, kubeconfig, in_cluster_context)
    ctl = Controller(management, config, namespace, work_dir, connector, resync)
    ctl.web_ca = bundle_web_ca
    stop = threading.Event()
    if bundle_listen:
        from meshfed.controller.publish import BundlePublisher, parse_listen

        with reported(ValueError, OSError):
            host, port = parse_listen(bundle_listen)
            publisher = BundlePublisher(
                management, namespace, work_dir / ".publish", ctl.log, bundle_web_cert,
                bundle_web_key,
            )  # fmt: skip
            publisher.serve(host, port)
        ctl.publisher = publisher
        threading.Thread(target=publisher.run, args=(stop,), daemon=True, name="bundles").start()
        ctl.log(f"serving local meshes' bundles on {host}:{port}")
    if health_port:
        serve_health(health_port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    who = identity()
    elector = LeaderElector(
        management,
        namespace,
        who,
        lease_duration=lease_duration,
        renew_deadline=lease_duration * 2 / 3,
        retry_period=max(lease_duration / 7, 0.5),
    )
    ctl.log(f"meshfed controller {who} starting (namespace {namespace}; memory: {allocator()})")
    sys.exit(run(ctl, stop, elector))
