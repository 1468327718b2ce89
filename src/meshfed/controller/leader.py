"""Leader election with a ``coordination.k8s.io/v1`` Lease, as Kubernetes' own controllers do.

A replica leads while it renews the Lease; the others watch the record and take it over only
after it has not changed for ``leaseDurationSeconds`` as measured on their own clock (never by
comparing clocks). A leader that cannot renew within ``renew_deadline`` stops acting; one that
stops on purpose releases the Lease so a standby takes over at once. Writes carry the
resourceVersion they read: two replicas can never both win the same round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from meshfed.kube.client import KubeClient
from meshfed.kube.errors import KubeError

Obj = dict[str, Any]
LEASE_API = "coordination.k8s.io/v1"
LEASE_NAME = "meshfed-controller"


def _micro(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Observed:
    """The record as last seen, and when (monotonic) it last changed."""

    record: tuple[str, str] = ("", "")
    """(holderIdentity, renewTime)."""
    changed_at: float = 0.0


Decision = Literal["acquire", "renew", "wait"]


def decide(
    spec: Obj | None, identity: str, observed: Observed, now: float, duration: float
) -> Decision:
    """What to do with the Lease as read (pure)."""
    spec = spec or {}
    holder = str(spec.get("holderIdentity") or "")
    if holder == identity:
        return "renew"
    if not holder:
        return "acquire"
    expired = now - observed.changed_at > duration
    return "acquire" if expired else "wait"


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        identity: str,
        name: str = LEASE_NAME,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.observed = Observed()
        self.leading = threading.Event()

    def _body(self, spec: Obj, version: str | None) -> Obj:
        meta: Obj = {"name": self.name, "namespace": self.namespace}
        if version:
            meta["resourceVersion"] = version
        return {"apiVersion": LEASE_API, "kind": "Lease", "metadata": meta, "spec": spec}

    def try_acquire_or_renew(self) -> bool:
        """One round; True when this replica holds the Lease afterwards."""
        now = datetime.now(UTC)
        lease = self.client.get(LEASE_API, "Lease", self.name, self.namespace)
        spec = (lease or {}).get("spec") or {}
        record = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))
        if record != self.observed.record:
            self.observed = Observed(record, time.monotonic())
        decision = decide(
            spec if lease else None,
            self.identity,
            self.observed,
            time.monotonic(),
            self.lease_duration,
        )
        if decision == "wait":
            return False
        new: Obj = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "renewTime": _micro(now),
            "acquireTime": spec.get("acquireTime") if decision == "renew" else _micro(now),
            "leaseTransitions": int(spec.get("leaseTransitions") or 0)
            + (1 if decision == "acquire" and lease is not None else 0),
        }
        try:
            if lease is None:
                self.client.create(self._body(new, None))
            else:
                self.client.replace(self._body(new, lease["metadata"]["resourceVersion"]))
        except KubeError as exc:
            if exc.status == 409:
                return False  # another replica wrote first
            raise
        self.observed = Observed((self.identity, new["renewTime"]), time.monotonic())
        return True

    def release(self) -> None:
        """Give the Lease up (a standby takes over without waiting for it to expire)."""
        try:
            lease = self.client.get(LEASE_API, "Lease", self.name, self.namespace)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {**lease["spec"], "holderIdentity": "", "renewTime": _micro(datetime.now(UTC))}
            self.client.replace(self._body(spec, lease["metadata"]["resourceVersion"]))
        except KubeError:
            pass

    def run(
        self,
        stop: threading.Event,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        log: Callable[[str], None] = lambda _l: None,
    ) -> None:
        """Wait to lead, then lead until ``stop`` or until renewing fails for
        ``renew_deadline``; calls ``on_started`` once on taking the lead, ``on_stopped`` once
        on losing it."""
        waiting_said = False
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    break
            except KubeError as exc:
                log(f"leader election: {exc}")
            if not waiting_said:
                log(f"waiting for the Lease {self.namespace}/{self.name} (held by another replica)")
                waiting_said = True
            stop.wait(self.retry_period)
        if stop.is_set():
            return
        log(f"leading: {self.identity} holds Lease {self.namespace}/{self.name}")
        self.leading.set()
        on_started()
        last_renew = time.monotonic()
        while not stop.wait(self.retry_period):
            try:
                if self.try_acquire_or_renew():
                    last_renew = time.monotonic()
                    continue
                log("leader election: another replica holds the Lease now")
                break
            except KubeError as exc:
                log(f"leader election: renewing failed: {exc}")
            if time.monotonic() - last_renew > self.renew_deadline:
                log("leader election: could not renew within the deadline")
                break
        self.leading.clear()
        on_stopped()
        if stop.is_set():
            self.release()
