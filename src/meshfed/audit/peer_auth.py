"""The mTLS mode Istio gives a workload, composed from PeerAuthentication as istiod does.

istiod (``ComposePeerAuthentication``) picks at most one policy per level -- mesh (root
namespace, no selector), namespace (no selector), workload (a selector, outside the root
namespace) -- the oldest when several compete, then applies them in that order: a level whose
mode is ``UNSET`` (or absent) inherits from the one above, and with no mesh policy the start is
``PERMISSIVE``. ``portLevelMtls`` is read from the workload policy only; an ``UNSET`` port
inherits the workload's mode. Selector policies in the root namespace are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import as_dict, as_str, dig, str_map

DEFAULT_MODE = "PERMISSIVE"
WEAK_MODES = ("PERMISSIVE", "DISABLE")


def mode_of(pa: Doc) -> str | None:
    """The policy's own mode; None for UNSET (inherit)."""
    mode = as_str(dig(pa.spec, "mtls", "mode"))
    return None if mode in (None, "UNSET") else mode


def port_modes(pa: Doc) -> list[tuple[str, str | None]]:
    """(workload port, its own mode or None for UNSET) of ``portLevelMtls``."""
    out: list[tuple[str, str | None]] = []
    for port, setting in as_dict(pa.spec.get("portLevelMtls")).items():
        mode = as_str(as_dict(setting).get("mode"))
        out.append((str(port), None if mode in (None, "UNSET") else mode))
    return out


def has_selector(pa: Doc) -> bool:
    return bool(str_map(dig(pa.spec, "selector", "matchLabels")))


def _created(doc: Doc) -> str:
    return as_str(dig(doc.obj, "metadata", "creationTimestamp")) or ""


def oldest(candidates: list[Doc]) -> Doc | None:
    """The policy istiod picks among several at one level: the oldest by creationTimestamp.
    Manifests rarely carry one; then the first in the tree stands in (see ``competing``)."""
    if not candidates:
        return None
    if all(_created(d) for d in candidates):
        return min(candidates, key=_created)
    return candidates[0]


@dataclass(frozen=True)
class MtlsDecision:
    """The effective mode for one workload (or a namespace's default) and what set it."""

    mode: str
    by: Doc | None
    """The PeerAuthentication that decided the mode; None: Istio's default (PERMISSIVE)."""
    ports: dict[str, tuple[str, Doc]] = field(default_factory=dict)
    """Workload port -> (mode, policy) from ``portLevelMtls``."""

    @property
    def strict(self) -> bool:
        return self.mode == "STRICT" and all(m == "STRICT" for m, _ in self.ports.values())


def mesh_policy(pas: Iterable[Doc], root: str) -> Doc | None:
    return oldest([p for p in pas if p.namespace == root and not has_selector(p)])


def namespace_policy(pas: Iterable[Doc], root: str, namespace: str) -> Doc | None:
    if namespace == root:
        return None
    return oldest([p for p in pas if p.namespace == namespace and not has_selector(p)])


def workload_policy(
    pas: Iterable[Doc], root: str, namespace: str, labels: Mapping[str, str]
) -> Doc | None:
    if namespace == root:
        return None
    matching = [
        p
        for p in pas
        if p.namespace == namespace
        and has_selector(p)
        and all(
            labels.get(k) == v for k, v in str_map(dig(p.spec, "selector", "matchLabels")).items()
        )
    ]
    return oldest(matching)


def decide(
    pas: Iterable[Doc], root: str, namespace: str, labels: Mapping[str, str] | None = None
) -> MtlsDecision:
    """The mode of a workload with ``labels`` in ``namespace`` (None: the namespace default)."""
    pas = list(pas)
    mode, by = DEFAULT_MODE, None
    chain = [mesh_policy(pas, root), namespace_policy(pas, root, namespace)]
    workload = workload_policy(pas, root, namespace, labels) if labels is not None else None
    for pa in [*chain, workload]:
        if pa is not None and mode_of(pa) is not None:
            mode, by = mode_of(pa) or mode, pa
    ports: dict[str, tuple[str, Doc]] = {}
    if workload is not None:
        for port, port_mode in port_modes(workload):
            ports[port] = (port_mode or mode, workload)
    return MtlsDecision(mode, by, ports)


def competing(pas: Iterable[Doc], root: str) -> list[list[Doc]]:
    """Groups of selector-less policies in one namespace (istiod uses only the oldest) whose
    modes differ."""
    groups: dict[str, list[Doc]] = {}
    for pa in pas:
        if not has_selector(pa):
            groups.setdefault(pa.namespace, []).append(pa)
    return [g for g in groups.values() if len(g) > 1 and len({mode_of(p) for p in g}) > 1]
