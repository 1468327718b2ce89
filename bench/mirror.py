"""What the API servers hold of one kind in one namespace, kept current by watches.

The controller benchmark waits for its changes to show on ten clusters. Listing every
ServiceEntry of ten clusters every 50 ms to find out loaded the same two cores the API servers
and the controller run on, during the very seconds it measured. A watch per cluster costs
nothing until an event arrives, and the moment a condition first holds is the arrival time of
the event that made it hold, not the next poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from meshfed.kube.client import KubeClient, Obj
from meshfed.kube.errors import KubeError

Objects = Mapping[tuple[str, str], Obj]
"""(cluster, object name) -> the object."""


class Mirror:
    """Objects of ``kind`` in ``namespace`` on each cluster of ``clients`` (a client each, its
    own: a watch holds its connection)."""

    def __init__(
        self, clients: Mapping[str, KubeClient], api_version: str, kind: str, namespace: str
    ) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        for cluster, client in clients.items():
            thread = threading.Thread(
                target=self._follow,
                args=(cluster, client, api_version, kind, namespace),
                name=f"mirror-{cluster}",
                daemon=True,
            )
            self.threads.append(thread)
        self.ready = threading.Barrier(len(self.threads) + 1)
        for thread in self.threads:
            thread.start()
        self.ready.wait(timeout=300)

    def _follow(
        self, cluster: str, client: KubeClient, api_version: str, kind: str, namespace: str
    ) -> None:
        first = True
        while not self.stopping.is_set():
            try:
                listed = client.request("GET", client.resource(api_version, kind).path(namespace))
                with self.changed:
                    for key in [k for k in self.objects if k[0] == cluster]:
                        del self.objects[key]
                    for item in listed.get("items") or []:
                        self.objects[(cluster, item["metadata"]["name"])] = item
                    self.changed.notify_all()
                if first:
                    first = False
                    self.ready.wait(timeout=300)
                version = str((listed.get("metadata") or {}).get("resourceVersion", ""))
                for event, obj in client.watch(
                    api_version, kind, namespace=namespace, resource_version=version,
                    timeout_seconds=60,
                ):  # fmt: skip
                    if self.stopping.is_set():
                        return
                    if event == "BOOKMARK":
                        continue
                    key = (cluster, obj["metadata"]["name"])
                    with self.changed:
                        if event == "DELETED":
                            self.objects.pop(key, None)
                        else:
                            self.objects[key] = obj
                        self.changed.notify_all()
            except KubeError:
                time.sleep(0.2)  # e.g. a 410: list again

    def until(self, check: Callable[[Objects], bool], timeout: float = 600.0) -> float:
        """The monotonic time at which ``check`` first held (of the objects as watched)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not check(self.objects):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                self.changed.wait(left)
            return time.monotonic()

    def close(self) -> None:
        """Stop (each watch ends at its next event or its 60 s timeout; daemon threads)."""
        self.stopping.set()
