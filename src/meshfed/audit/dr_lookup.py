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
later one's is a superset): subsets are added by name (the first rule's subset of a name is
kept), top-level settings come from the first rule (selector rules first, then by creation
time, name, namespace); otherwise the rule is an entry of its own, and a sidecar that no
selector rule of the namespace selects uses the last entry without a selector
(``SidecarScope.DestinationRule``). Rules with selectors are not modelled beyond that: each
applies to the workloads it selects.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meshfed.audit.sources.manifests import Doc
from meshfed.audit.yamlsrc import Obj, as_dict, as_list, as_str, dig, str_list

__all__ = [
    "CLUSTER_DOMAIN",
    "Entry",
    "covers",
    "effective_entry",
    "in_proxy_pool",
    "most_specific",
    "resolve_host",
]

CLUSTER_DOMAIN = "cluster.local"
"""The domain istiod appends to a short name (``svc.<domain>``); Istio's default."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_host(host: str, namespace: str, domain: str = CLUSTER_DOMAIN) -> str:
    """A rule's host as istiod reads it (``ResolveShortnameToFQDN``): a name without a dot is
    a Service of the rule's own namespace; ``*``, IP addresses and any name with a dot (even
    ``svc.ns``) are taken as written."""
    if host == "*" or _is_ip(host) or "." in host:
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
    if as_dict(dr.spec.get("workloadSelector")):
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


@dataclass
class Entry:
    """One consolidated rule of a namespace for one host: the rules merged into it, and the
    subsets it ends up with (by name, first wins)."""

    exports: frozenset[str]
    rules: list[Doc] = field(default_factory=list)
    subsets: dict[str, Obj] = field(default_factory=dict)

    def add(self, dr: Doc) -> None:
        self.rules.append(dr)
        for s in as_list(dr.spec.get("subsets")):
            name = as_str(as_dict(s).get("name"))
            if name is not None and name not in self.subsets:
                self.subsets[name] = as_dict(s)


def _order(dr: Doc) -> tuple[bool, str, str, str]:
    created = as_str(dig(dr.obj, "metadata", "creationTimestamp")) or ""
    return (not selector(dr), created, dr.name, dr.namespace)


def effective_entry(rules: list[Doc]) -> Entry | None:
    """What a sidecar that no selector rule selects gets from rules of one namespace and one
    host: the last consolidated entry without a selector; None when every rule has one (such a
    sidecar then gets no rule at all for the host)."""
    entries: list[Entry] = []
    for dr in sorted((r for r in rules if not selector(r)), key=_order):
        ex = export_set(dr)
        separate = True  # as istiod's appendSeparately: the last entry compared decides
        for entry in entries:
            if ex == entry.exports or (entry.exports and ex > entry.exports):
                entry.add(dr)
                separate = False
            else:
                separate = True
        if separate:
            entry = Entry(ex)
            entry.add(dr)
            entries.append(entry)
    return entries[-1] if entries else None
