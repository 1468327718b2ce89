"""Which DestinationRule a sidecar's outbound clusters for a service host come from, as
istiod 1.25 picks it.

istiod takes the rules for a host from ONE namespace (pilot/pkg/model/push_context.go
``destinationRule``): the proxy's own namespace first, then the service's namespace, then the
root namespace; the first that has a rule matching the host wins, and the others are not
consulted (nothing merges across namespaces). Within a namespace ``MostSpecificHostMatch``
(model/config.go) takes the exact host, else the longest wildcard whose suffix the host ends with.

The proxy's own namespace counts every rule of that namespace that is visible there
(``setDestinationRules``: ``exportTo`` empty, ``*``, ``.`` or naming the namespace; a rule with a
``workloadSelector`` is always private), whatever else it exports to. A proxy in the root
namespace looks only at its private rules (``exportTo`` ``.`` or its own name alone; empty when
``meshConfig.defaultDestinationRuleExportTo`` is ``.``) before the service's namespace.

Rules of one namespace for the same host merge (``mergeDestinationRule``, with istiod's default
``ENABLE_ENHANCED_DESTINATIONRULE_MERGE``) only when their ``exportTo`` sets are equal (or the
later one's strictly contains the earlier one's, which is not empty): subsets are added by name
(the first rule's subset of a name is kept), top-level settings come from the first rule
(selector rules first, then by creation time, name, namespace); otherwise the rule is an entry
of its own, and a sidecar that no selector entry selects uses the last entry without a selector
(``SidecarScope.DestinationRule``): of two such rules, the one created last. A rule without a
selector whose ``exportTo`` equals a selector rule's (a selector makes it ``["."]``) is merged
into that rule and has no entry of its own: the sidecars the selector does not pick get
neither. A selected sidecar uses the first selector entry that selects it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, dig, str_list
from meshfed.render.istio.objects import is_ip

__all__ = [
    "CLUSTER_DOMAIN",
    "Entry",
    "catch_all",
    "consolidate",
    "covers",
    "effective_entry",
    "has_selector",
    "in_proxy_pool",
    "most_specific",
    "resolve_host",
]

CLUSTER_DOMAIN = "cluster.local"
"""The domain istiod appends to a short name (``svc.<domain>``); Istio's default."""


def resolve_host(host: str, namespace: str, domain: str = CLUSTER_DOMAIN) -> str:
    """A rule's host as istiod reads it (``ResolveShortnameToFQDN``): a name without a dot is
    a Service of the rule's own namespace; ``*``, IP addresses and any name with a dot (even
    ``svc.ns``) are taken as written."""
    if host == "*" or is_ip(host) or "." in host:
        return host
    return f"{host}.{namespace}.svc.{domain}"


def covers(rule_host: str, service_host: str) -> bool:
    """Whether a resolved rule host matches a service host: exactly, or a wildcard (any first
    label starting with ``*``: ``*``, ``*.local``, ``*-x.ns.svc…``) whose text after the ``*``
    ends the host (``mostSpecificHostWildcardMatch``: a plain suffix test)."""
    if rule_host.startswith("*"):
        return service_host.endswith(rule_host[1:])
    return rule_host == service_host


def most_specific(rule_hosts: set[str], service_host: str) -> str | None:
    """The rule host istiod picks for ``service_host`` among those of one namespace: the exact
    host, else the longest matching wildcard (``host.MoreSpecific``)."""
    if service_host in rule_hosts:
        return service_host
    wild = [h for h in rule_hosts if h.startswith("*") and covers(h, service_host)]
    return max(wild, key=lambda h: (len(h), h)) if wild else None


def export_set(dr: Doc) -> frozenset[str]:
    """The rule's ``exportTo`` as istiod keeps it: a rule with a selector is private."""
    if has_selector(dr):
        return frozenset({"."})
    return frozenset(str_list(dr.spec.get("exportTo")))


def in_proxy_pool(dr: Doc, root: str, default_private: bool) -> bool:
    """Whether istiod consults the rule first for the sidecars of its own namespace."""
    ex = export_set(dr)
    if dr.namespace != root:
        return not ex or bool(ex & {"*", ".", dr.namespace})
    if not ex:
        return default_private
    return len(ex) == 1 and bool(ex & {".", dr.namespace})


def selector(dr: Doc) -> dict[str, str]:
    labels = dig(dr.obj, "spec", "workloadSelector", "matchLabels")
    return {str(k): str(v) for k, v in as_dict(labels).items()}


def has_selector(dr: Doc) -> bool:
    """The rule has a ``workloadSelector`` (istiod: ``GetWorkloadSelector() != nil``)."""
    return isinstance(dr.spec.get("workloadSelector"), dict)


@dataclass
class Entry:
    """One consolidated rule of a namespace for one host (istiod's ``ConsolidatedDestRule``):
    its first rule (whose selector and top-level settings it keeps), the rules merged into it,
    and the subsets it ends up with (by name, first wins)."""

    exports: frozenset[str]
    rules: list[Doc] = field(default_factory=list)
    subsets: dict[str, Obj] = field(default_factory=dict)

    @property
    def base(self) -> Doc:
        return self.rules[0]

    @property
    def selected(self) -> bool:
        """Only the sidecars its first rule's ``workloadSelector`` selects use it."""
        return has_selector(self.base)

    def add(self, dr: Doc) -> None:
        self.rules.append(dr)
        for s in as_list(dr.spec.get("subsets")):
            name = as_str(as_dict(s).get("name"))
            if name is not None and name not in self.subsets:
                self.subsets[name] = as_dict(s)


def _order(dr: Doc) -> tuple[bool, str, str, str]:
    """istiod's order (``sortConfigBySelectorAndCreationTime``): rules with a selector first,
    then by creation time, name, namespace. A rule without ``creationTimestamp`` (a file not
    yet applied) sorts first among its peers: on a cluster, the time it is created decides."""
    created = as_str(dig(dr.obj, "metadata", "creationTimestamp")) or ""
    return (not has_selector(dr), created, dr.name, dr.namespace)


def consolidate(rules: list[Doc]) -> list[Entry]:
    """istiod's ``mergeDestinationRule`` over the rules of one namespace for one host, in its
    order: a rule merges into each entry whose ``exportTo`` equals its own or is strictly
    contained in it (unless both have selectors that differ); it is kept on its own unless
    the last entry compared took it in with an equal ``exportTo``, or with both rules
    without a selector (or with equal selectors). So a rule without a selector whose
    ``exportTo`` equals that of a selector rule before it (a selector makes a rule's
    ``exportTo`` ``["."]``) is merged into it and leaves no entry of its own."""
    entries: list[Entry] = []
    for dr in sorted(rules, key=_order):
        ex = export_set(dr)
        separate = True
        for entry in entries:
            if ex == entry.exports:
                separate = False
            elif entry.exports and ex > entry.exports:
                separate = True
            else:
                separate = True
                continue
            mine, theirs = has_selector(dr), entry.selected
            if mine and theirs and selector(dr) != selector(entry.base):
                separate = True
                continue
            if mine == theirs:
                separate = False
            entry.add(dr)
        if separate:
            entry = Entry(ex)
            entry.add(dr)
            entries.append(entry)
    return entries


def catch_all(entries: list[Entry]) -> Entry | None:
    """What a sidecar that no selector entry selects uses (``SidecarScope.DestinationRule``):
    the last entry whose first rule has no selector; None: no rule at all for the host."""
    found = [e for e in entries if not e.selected]
    return found[-1] if found else None


def effective_entry(rules: list[Doc]) -> Entry | None:
    """What a sidecar that no selector rule selects gets from rules of one namespace and one
    host."""
    return catch_all(consolidate(rules))
