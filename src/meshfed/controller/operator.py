"""The controller process: leader election, then kopf watching Federations.

kopf handles the management cluster: it watches ``federations.meshfed.dev``, runs one daemon per
Federation (started on create or resume, stopped on deletion), keeps a finalizer so a deleted
Federation's clusters are cleaned up first, and posts Events. The handlers below only hand the
work to ``worker.py``; the decisions are in ``ordering.py``, ``drift.py`` and ``status.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kopf
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import User

from meshfed.controller.clusters import Connector
from meshfed.controller.crd import GROUP, PLURAL, VERSION
from meshfed.controller.follow import PeerFollowing, spec_source
from meshfed.controller.leader import LeaderElector
from meshfed.controller.publish import BundlePublisher
from meshfed.controller.reconcile import Reconciler
from meshfed.controller.retire import retire_federation
from meshfed.controller.statuswriter import StatusWriter
from meshfed.controller.worker import FederationWorker
from meshfed.kube.client import KubeClient, Obj
from meshfed.kube.errors import KubeError

RESOURCE = (GROUP, VERSION, PLURAL)
logger = logging.getLogger("meshfed.controller")


def connection_info(config: SingleConfig, namespace: str) -> kopf.ConnectionInfo:
    """kopf's credentials from the same kubeconfig context meshfed's client uses."""
    cluster = config.cluster
    user = config.user or User()
    token = user.token
    if user.token_file:  # read again at each login: a ServiceAccount token is rotated
        token = Path(user.token_file).read_text().strip()
    return kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=cluster.certificate_auth,
        ca_data=cluster.certificate_auth_data,
        insecure=cluster.insecure or None,
        token=token,
        scheme="Bearer" if token else None,
        certificate_path=user.client_cert,
        certificate_data=user.client_cert_data,
        private_key_path=user.client_key,
        private_key_data=user.client_key_data,
        default_namespace=namespace,
    )


@dataclass
class Controller:
    management: KubeClient
    config: SingleConfig
    namespace: str
    work_dir: Path
    connector: Connector
    resync: float = 300.0
    workers: dict[str, FederationWorker] = field(default_factory=dict)
    followings: dict[str, PeerFollowing] = field(default_factory=dict)
    web_ca: Path | None = None
    publisher: BundlePublisher | None = None
    """Serves local meshes' bundles (every replica); numbers changed ones while leading."""
    """https_web bundle endpoints of peers: a private CA to trust instead of the system's."""
    log: Callable[[str], None] = logger.info

    def patcher(self, name: str) -> Callable[[Obj], None]:
        res = self.management.resource(f"{GROUP}/{VERSION}", "Federation")

        def patch(status: Obj) -> None:
            self.management.request(
                "PATCH",
                res.path(None, name) + "/status",
                body={"status": status},
                content_type="application/merge-patch+json",
                what=f"status of Federation {name}",
            )

        return patch

    def annotator(self, name: str) -> Callable[[dict[str, str | None]], None]:
        res = self.management.resource(f"{GROUP}/{VERSION}", "Federation")

        def annotate(values: dict[str, str | None]) -> None:
            self.management.request(
                "PATCH",
                res.path(None, name),
                body={"metadata": {"annotations": values}},
                content_type="application/merge-patch+json",
                what=f"annotations of Federation {name}",
            )

        return annotate

    def registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        ctl = self

        @kopf.on.startup(registry=registry)
        def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
            settings.persistence.diffbase_storage = DigestDiffBase(
                prefix=GROUP, key="last-handled-digest"
            )
            settings.posting.level = logging.INFO
            settings.watching.server_timeout = 240
            settings.watching.client_timeout = 270
            settings.execution.max_workers = 64

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return connection_info(ctl.config, ctl.namespace)

        @kopf.on.create(*RESOURCE, registry=registry)
        @kopf.on.update(*RESOURCE, registry=registry)
        def changed(name: str, reason: str, **_: Any) -> None:
            worker = ctl.workers.get(name)
            if worker is not None:
                worker.kick(f"Federation {reason}")
            following = ctl.followings.get(name)
            if following is not None:
                following.wake.set()

        @kopf.on.delete(*RESOURCE, registry=registry)
        def deleted(name: str, body: kopf.Body, **_: Any) -> None:
            worker = ctl.workers.pop(name, None)
            ctl.followings.pop(name, None)
            if worker is not None and worker.watches is not None:
                worker.watches.close()
            done = retire_federation(ctl.reconciler(), dict(body))
            kopf.info(body, reason="Deleted", message=done)

        @kopf.daemon(*RESOURCE, registry=registry, cancellation_timeout=5.0)
        def federation(name: str, body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
            def emit(kind: str, reason: str, message: str) -> None:
                kopf.event(body, type=kind, reason=reason, message=message)

            # The status is written from a thread of its own (``statuswriter.py``).
            writer = StatusWriter(ctl.patcher(name), lambda line: ctl.log(f"{name}: {line}"))
            worker = FederationWorker(
                name, ctl.reconciler(), emit, writer.submit, ctl.log, ctl.resync
            )
            worker.annotate = ctl.annotator(name)
            following = ctl.following(name, lambda: _plain(body), worker, emit)
            ctl.workers[name] = worker
            # Its own thread, in kopf's context (Events are posted through it).
            context = contextvars.copy_context()
            threading.Thread(
                target=context.run,
                args=(following.run, lambda: bool(stopped)),
                name=f"follow-{name}",
                daemon=True,
            ).start()
            try:
                worker.run(lambda: _plain(body), lambda: bool(stopped))
            finally:
                writer.close()

        return registry

    def following(
        self,
        name: str,
        body: Callable[[], Obj],
        worker: FederationWorker,
        emit: Callable[[str, str, str], None],
    ) -> PeerFollowing:
        """The peers' bundles followed beside ``worker``; its status writes carry theirs."""
        following = PeerFollowing(
            name,
            self.management,
            self.namespace,
            self.work_dir / ".follow",
            spec_source(body, worker.reconciler.specs),
            worker.kick,
            emit,
            self.log,
            web_ca=self.web_ca,
        )
        worker.patch_status = following.patcher(worker.patch_status)
        self.followings[name] = following
        return following

    def reconciler(self) -> Reconciler:
        return Reconciler(self.management, self.namespace, self.work_dir, self.connector, self.log)

    async def operate(self, stop: asyncio.Event) -> None:
        await kopf.operator(
            registry=self.registry(),
            clusterwide=True,
            standalone=True,  # the Lease decides who acts, not kopf's peering
            stop_flag=stop,
        )


class DigestDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf keeps the last handled state to tell an update from a no-op; by default the whole
    object, in an annotation, which holds at most 256 KiB (a federation of a thousand exports
    is larger). The handlers here need to know only that something changed: a digest does."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        text = json.dumps(essence, sort_keys=True, separators=(",", ":"))
        return {"spec": {"sha256": hashlib.sha256(text.encode()).hexdigest()}}


def _plain(body: kopf.Body) -> Obj:
    """A plain copy of kopf's live view of the object."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.metadata),
        "spec": dict(body.spec),
        "status": dict(body.status),
    }


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path in ("/healthz", "/readyz")
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"ok\n" if ok else b"not found\n")

    def log_message(self, *_args: Any) -> None:
        pass


def serve_health(port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("0.0.0.0" if port else "127.0.0.1", port), _Health)
    threading.Thread(target=server.serve_forever, daemon=True, name="health").start()
    return server


def identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def run(controller: Controller, stop: threading.Event, elector: LeaderElector) -> int:
    """Lead (or wait to), operate while leading; return the exit code."""
    loop = asyncio.new_event_loop()
    kopf_stop = asyncio.Event()
    lost = threading.Event()
    operator_thread: list[threading.Thread] = []

    def started() -> None:
        if controller.publisher is not None:
            controller.publisher.leading.set()

        def operate() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(controller.operate(kopf_stop))

        thread = threading.Thread(target=operate, name="kopf", daemon=True)
        operator_thread.append(thread)
        thread.start()

    def stopped() -> None:
        if controller.publisher is not None:
            controller.publisher.leading.clear()
        lost.set()
        loop.call_soon_threadsafe(kopf_stop.set)
        for thread in operator_thread:
            thread.join(timeout=30)

    try:
        elector.run(stop, started, stopped, controller.log)
    except KubeError as exc:
        controller.log(f"leader election failed: {exc}")
        return 1
    finally:
        controller.connector.close()
    # Leadership ended: by request (stop), or lost. A lost leader exits so that its
    # Deployment restarts it as a standby, as Kubernetes' own controllers do.
    return 0 if stop.is_set() else 1
