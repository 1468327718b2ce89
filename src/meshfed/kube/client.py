"""One cluster's API server, for any kind: discovery, get, list, server-side apply, delete.

lightkube builds the connection from the kubeconfig context (server, CA, client certificate,
token or exec plugin); requests go to the REST paths that discovery gives for each kind, so
Istio's custom resources are handled like built-in kinds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpcore2
import httpx2
from lightkube.config.client_adapter import ConnectionParams
from lightkube.config.kubeconfig import SingleConfig

from meshfed.kube.config import resolve_context
from meshfed.kube.errors import KubeError

Obj = dict[str, Any]
FIELD_MANAGER = "meshfed"
READ_BYTES = 16 * 1024
"""What one read of a connection asks for. A read waiting for data holds a buffer this size,
and a watch stream waits in one for minutes: httpcore's 64 KiB on 150 watch streams was
10 MB of an idle controller. A TLS record carries at most 16 KiB, so a read returns as much
as before."""
httpcore2.HTTP11Connection.READ_NUM_BYTES = READ_BYTES


@dataclass(frozen=True)
class Resource:
    """Where a kind lives on a server."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name is not None else base


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def describe(obj: Obj) -> str:
    """``Kind namespace/name`` (or ``Kind name``), as error messages name an object."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name") or meta.get("generateName", "?")
    return f"{obj.get('kind', '?')} {ns}/{name}" if ns else f"{obj.get('kind', '?')} {name}"


def _status_error(response: httpx2.Response, what: str) -> KubeError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or response.text.strip() or response.reason_phrase)
    reason = str(body.get("reason") or "")
    causes = body.get("details", {}).get("causes") if isinstance(body.get("details"), dict) else []
    cause_text = "; ".join(
        f"{c.get('field', '')}: {c.get('message', '')}".strip(": ")
        for c in causes or []
        if isinstance(c, dict) and c.get("field") and c.get("message", "") not in message
    )
    if response.status_code == 403 and reason == "Forbidden":
        message = f"forbidden (RBAC): {message}"
    return KubeError(
        f"{what}: {message}", status=response.status_code, reason=reason, causes=cause_text
    )


class Cluster(Protocol):
    """What meshfed needs of a cluster: ``KubeClient``, or a fake in unit tests."""

    name: str
    server: str

    @property
    def label(self) -> str: ...
    def version(self) -> str: ...
    def find(self, api_version: str, kind: str) -> Resource | None: ...
    def resource(self, api_version: str, kind: str) -> Resource: ...
    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None: ...
    def list(
        self,
        api_version: str,
        kind: str,
        *,
        namespace: str | None = None,
        labels: str | None = None,
    ) -> list[Obj]: ...
    def apply(
        self,
        obj: Obj,
        *,
        dry_run: bool = False,
        force: bool = False,
        namespace: str | None = None,
    ) -> Obj: ...
    def delete(self, obj: Obj, *, dry_run: bool = False) -> bool: ...
    def namespace_exists(self, name: str) -> bool: ...
    def can(self, verb: str, resource: Resource, namespace: str | None, name: str = "") -> bool: ...
    def create(self, obj: Obj, *, dry_run: bool = False) -> Obj: ...
    def wait_for(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        ready: Callable[[Obj], bool],
        timeout: float = 30.0,
    ) -> Obj: ...


KEEP_ALIVE = httpx2.Limits(
    max_connections=None, max_keepalive_connections=None, keepalive_expiry=60
)
"""Connections to an API server are kept 60 s between requests (httpx's default is 5 s; the
API server closes them after 90 s idle, ``secure_serving.go``): the controller's reconciles
come seconds apart, and each opened its eight connections per cluster again, a TLS handshake
each, at the start of its dry-run."""


class KubeClient:
    """A cluster reached through a kubeconfig context. ``name`` labels it in messages."""

    def __init__(self, name: str, config: SingleConfig, timeout: float = 15.0) -> None:
        self.name = name
        self.config = config
        self.context = config.context_name
        self.server = config.cluster.server
        params = ConnectionParams(timeout=httpx2.Timeout(timeout), trust_env=False)
        try:
            self._http = httpx2.Client(**params.httpx_params(config), limits=KEEP_ALIVE)
        except Exception as exc:  # lightkube raises several kinds for bad credentials
            raise KubeError(f"cannot use context {self.context!r}: {exc}") from None
        self._groups: dict[str, dict[str, Resource] | None] = {}

    @classmethod
    def for_context(
        cls, context: str | None, kubeconfig: Path | str | None = None, name: str | None = None
    ) -> KubeClient:
        config = resolve_context(context, kubeconfig)
        return cls(name or config.context_name, config)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def label(self) -> str:
        return f"{self.name} (context {self.context})" if self.name != self.context else self.name

    # -- transport -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Obj | None = None,
        content_type: str = "application/json",
        what: str = "",
    ) -> Obj:
        headers = {"Accept": "application/json"}
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            response = self._http.request(
                method, path, params=params or {}, content=content, headers=headers
            )
        except httpx2.HTTPError as exc:
            raise KubeError(f"{self.server} unreachable: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            raise _status_error(response, what or f"{method} {path}")
        if not response.content:
            return {}
        data = response.json()
        return data if isinstance(data, dict) else {}

    def watch(
        self,
        api_version: str,
        kind: str,
        *,
        namespace: str | None = None,
        labels: str | None = None,
        resource_version: str = "",
        timeout_seconds: int = 300,
    ) -> Iterator[tuple[str, Obj]]:
        """Watch events (``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK``) from
        ``resource_version`` until the server ends the watch (``timeout_seconds``). A 410
        (``ERROR`` event with code 410: the version is too old) raises KubeError status 410:
        list again and watch from there."""
        res = self.resource(api_version, kind)
        params = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if labels:
            params["labelSelector"] = labels
        if resource_version:
            params["resourceVersion"] = resource_version
        timeout = httpx2.Timeout(15.0, read=timeout_seconds + 30.0)
        try:
            with self._http.stream(
                "GET", res.path(namespace), params=params, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _status_error(response, f"watch {kind}")
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    body = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise KubeError(
                            f"watch {kind}: {body.get('message', 'error')}",
                            status=int(body.get("code") or 500),
                            reason=str(body.get("reason") or ""),
                        )
                    yield (
                        str(event.get("type")),
                        {"apiVersion": res.api_version, "kind": kind, **body},
                    )
        except httpx2.HTTPError as exc:
            raise KubeError(f"{self.server} unreachable: {exc or type(exc).__name__}") from None

    def list_pages(
        self,
        api_version: str,
        kind: str,
        *,
        labels: str | None = None,
        limit: int = 500,
    ) -> Iterator[tuple[list[Obj], str]]:
        """Objects of a kind in all namespaces, a page at a time (each object with apiVersion
        and kind), and the list's resourceVersion to watch from: the pages are one snapshot,
        the version comes with the last page (``""`` before). A thousand objects with their
        managedFields are tens of MB."""
        res = self.resource(api_version, kind)
        params = {"labelSelector": labels} if labels else {}
        token = ""
        while True:
            page = dict(params, limit=str(limit))
            if token:
                page["continue"] = token
            doc = self.request("GET", res.path(None), params=page, what=f"list {kind}")
            items = [
                {"apiVersion": res.api_version, "kind": kind, **i} for i in doc.pop("items", [])
            ]
            meta = doc.get("metadata") or {}
            token = str(meta.get("continue") or "")
            yield items, "" if token else str(meta.get("resourceVersion") or "")
            if not token:
                return

    def version(self) -> str:
        return str(self.request("GET", "/version", what="version").get("gitVersion", "?"))

    # -- discovery -------------------------------------------------------------------------

    def _group(self, api_version: str) -> dict[str, Resource] | None:
        if api_version not in self._groups:
            group, version = split_api_version(api_version)
            path = f"/apis/{group}/{version}" if group else f"/api/{version}"
            try:
                doc = self.request("GET", path, what=f"discovery of {api_version}")
            except KubeError as exc:
                if exc.status != 404:
                    raise
                self._groups[api_version] = None
                return None
            kinds: dict[str, Resource] = {}
            for item in doc.get("resources", []):
                if "/" in item.get("name", ""):
                    continue  # subresources
                kinds[item["kind"]] = Resource(
                    group, version, item["kind"], item["name"], bool(item.get("namespaced"))
                )
            self._groups[api_version] = kinds
        return self._groups[api_version]

    def rediscover(self) -> None:
        """Forget what discovery found (a CRD was installed since)."""
        self._groups.clear()

    def find(self, api_version: str, kind: str) -> Resource | None:
        """The kind on this server, or None when the server does not serve it."""
        kinds = self._group(api_version)
        return kinds.get(kind) if kinds else None

    def resource(self, api_version: str, kind: str) -> Resource:
        found = self.find(api_version, kind)
        if found is None:
            hint = " (are Istio's CRDs installed?)" if "istio.io" in api_version else ""
            raise KubeError(f"the server has no kind {kind} in {api_version}{hint}", status=404)
        return found

    # -- objects ---------------------------------------------------------------------------

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        res = self.resource(api_version, kind)
        try:
            obj = self.request("GET", res.path(namespace, name), what=f"get {kind} {name}")
        except KubeError as exc:
            if exc.not_found:
                return None
            raise
        return obj

    def list(
        self,
        api_version: str,
        kind: str,
        *,
        namespace: str | None = None,
        labels: str | None = None,
    ) -> list[Obj]:
        """Objects of a kind (all namespaces unless ``namespace``), with apiVersion and kind."""
        res = self.resource(api_version, kind)
        params = {"labelSelector": labels} if labels else {}
        items: list[Obj] = []
        token = ""
        while True:
            page = dict(params, limit="500")
            if token:
                page["continue"] = token
            doc = self.request("GET", res.path(namespace), params=page, what=f"list {kind}")
            for item in doc.get("items", []):
                items.append({"apiVersion": res.api_version, "kind": kind, **item})
            token = str((doc.get("metadata") or {}).get("continue") or "")
            if not token:
                return items

    def apply(
        self,
        obj: Obj,
        *,
        dry_run: bool = False,
        force: bool = False,
        namespace: str | None = None,
    ) -> Obj:
        """Server-side apply as field manager ``meshfed``; returns the resulting object.

        ``namespace`` overrides the object's namespace (a dry-run stand-in for one that does
        not exist yet).
        """
        res = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata") or {}
        ns = namespace or meta.get("namespace")
        body = obj
        if namespace is not None:
            body = {**obj, "metadata": {**meta, "namespace": namespace}}
        params = {"fieldManager": FIELD_MANAGER}
        if force:
            params["force"] = "true"
        if dry_run:
            params["dryRun"] = "All"
        return self.request(
            "PATCH",
            res.path(ns, meta["name"]),
            params=params,
            body=body,
            content_type="application/apply-patch+yaml",
            what=describe(obj),
        )

    def create(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        res = self.resource(obj["apiVersion"], obj["kind"])
        params = {"fieldManager": FIELD_MANAGER}
        if dry_run:
            params["dryRun"] = "All"
        ns = (obj.get("metadata") or {}).get("namespace")
        return self.request("POST", res.path(ns), params=params, body=obj, what=describe(obj))

    def replace(self, obj: Obj, manager: str = FIELD_MANAGER) -> Obj:
        """PUT the whole object; its ``metadata.resourceVersion`` (when set) is a precondition:
        a conflict (409) means someone else wrote it since it was read."""
        res = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata") or {}
        return self.request(
            "PUT",
            res.path(meta.get("namespace"), meta["name"]),
            params={"fieldManager": manager},
            body=obj,
            what=describe(obj),
        )

    def delete(self, obj: Obj, *, dry_run: bool = False) -> bool:
        """Delete (foreground for owned objects); False when it was already gone."""
        res = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata") or {}
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if meta.get("uid"):
            body["preconditions"] = {"uid": meta["uid"]}
        if dry_run:
            body["dryRun"] = ["All"]
        try:
            self.request(
                "DELETE",
                res.path(meta.get("namespace"), meta["name"]),
                body=body,
                what=f"delete {describe(obj)}",
            )
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def namespace_exists(self, name: str) -> bool:
        return self.get("v1", "Namespace", name) is not None

    def can(self, verb: str, resource: Resource, namespace: str | None, name: str = "") -> bool:
        """SelfSubjectAccessReview: may this user do ``verb`` there? (writes nothing)"""
        attrs: Obj = {"verb": verb, "group": resource.group, "resource": resource.plural}
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        review = self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs},
            },
            what="access review",
        )
        return bool((review.get("status") or {}).get("allowed"))

    def wait_for(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        ready: Callable[[Obj], bool],
        timeout: float = 30.0,
    ) -> Obj:
        """Poll until ``ready(obj)`` holds; KubeError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(api_version, kind, name, namespace)
            if obj is not None and ready(obj):
                return obj
            if time.monotonic() > deadline:
                raise KubeError(f"{kind} {namespace}/{name} not ready after {timeout:.0f}s")
            time.sleep(0.2)
