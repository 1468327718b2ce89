"""The specs and plan a reconcile starts from, kept between reconciles of one Federation.

At a thousand exports, parsing the Federation object takes a second or more, and parsing
the stored spec and planning it again several; most reconciles are for something else (a
Service, a load-balancer address, drift), so each is done once per version:

- the object's spec, by the digest of its JSON;
- the stored state's spec, by the digest of its text;
- the stored state's plan: when this controller stored that text, the plan it applied then.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from meshfed.kube.client import Obj
from meshfed.kube.state import StoredState
from meshfed.plan.model import FederationPlan
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.spec.model import Federation


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stored_spec(stored: StoredState | None) -> Federation | None:
    if stored is None:
        return None
    try:
        return parse_spec(stored.spec_text, f"stored on {stored.cluster}")
    except SpecError:
        return None


@dataclass
class SpecMemo:
    parsed: dict[str, tuple[str, Federation]] = field(default_factory=dict)
    """Per federation: the digest of the object's spec and the spec parsed from it."""
    stored: dict[str, tuple[str, Federation | None]] = field(default_factory=dict)
    """Per federation: the digest of the stored spec's text and that spec parsed."""
    plans: dict[str, tuple[str, FederationPlan]] = field(default_factory=dict)
    """Per federation: the digest of the spec text this controller stored last, and the plan
    it applied then."""

    _parsing: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def parse(self, name: str, document: Obj, parse: Callable[[], Federation]) -> Federation:
        """``parse()`` of the Federation object's spec ``document``, once per version, also
        when two threads ask at once (the worker's first reconcile and the peer follower
        start together: each parsed it, and the follower kept its own 3 MB copy)."""
        digest = sha(json.dumps(document, sort_keys=True, separators=(",", ":")))
        with self._parsing:
            found = self.parsed.get(name)
            if found is not None and found[0] == digest:
                return found[1]
            fed = parse()
            self.parsed[name] = (digest, fed)
            return fed

    def old(self, name: str, stored: StoredState | None) -> tuple[Federation | None, str]:
        """The stored spec, parsed once per text; and the text's digest."""
        if stored is None:
            return None, ""
        digest = sha(stored.spec_text)
        found = self.stored.get(name)
        if found is None or found[0] != digest:
            found = (digest, stored_spec(stored))
            self.stored[name] = found
        return found[1], digest

    def old_plan(self, name: str, stored: StoredState | None, digest: str) -> FederationPlan | None:
        """The plan of the stored state: the one applied, when this controller stored it."""
        if stored is None:
            return None
        found = self.plans.get(name)
        if found is not None and found[0] == digest:
            return found[1]
        return stored.plan()

    def remembered(self, name: str) -> tuple[Federation, FederationPlan] | None:
        """The spec and plan this controller stored last. Between full checks that is the
        state on the clusters (the watches report a change to it, and drift repair puts it
        back): no need to read it again."""
        spec, plan = self.stored.get(name), self.plans.get(name)
        if spec is None or plan is None or spec[0] != plan[0] or spec[1] is None:
            return None
        return spec[1], plan[1]

    def stored_now(self, name: str, text: str, fed: Federation, plan: FederationPlan) -> None:
        """This controller stored ``text`` (``fed`` as YAML) after applying ``plan``."""
        digest = sha(text)
        self.stored[name] = (digest, fed)
        self.plans[name] = (digest, plan)

    def forget(self, name: str) -> None:
        self.plans.pop(name, None)


def release_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere
    nothing). A reconcile of a thousand exports reads and renders far more than it keeps,
    and an idle controller should hold only what it keeps."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


__all__ = ["SpecMemo", "release_memory", "sha", "stored_spec"]
