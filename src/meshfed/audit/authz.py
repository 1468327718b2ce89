"""How Istio matches an AuthorizationPolicy rule: which sources name a caller's identity, which
match everyone, which match only by exclusion. Shared by the authorization checks.

A rule matches when one of its ``from`` sources, one of its ``to`` operations and every ``when``
condition match; a missing list matches anything, so an empty rule ``{}`` matches every request.
Fields inside one source (or operation) are ANDed. Identity fields (``principals``,
``namespaces``, ``serviceAccounts``, ``trustDomains``) come from the peer certificate: a
plaintext caller has none, so it never matches them -- and always matches their ``not*`` forms.
"""

from __future__ import annotations

from typing import Any

from meshfed.audit.yamlsrc import Obj, as_dict, as_list, str_list

IDENTITY = ("principals", "namespaces", "serviceAccounts", "trustDomains")
POSITIVE_SOURCE = (*IDENTITY, "requestPrincipals", "ipBlocks", "remoteIpBlocks")
NEGATIVE_SOURCE = tuple(f"not{f[0].upper()}{f[1:]}" for f in POSITIVE_SOURCE)
POSITIVE_OPERATION = ("hosts", "ports", "methods", "paths")
NEGATIVE_OPERATION = tuple(f"not{f[0].upper()}{f[1:]}" for f in POSITIVE_OPERATION)
_ANY_ADDRESS = ("0.0.0.0/0", "::/0")


def _set(obj: Obj, fields: tuple[str, ...]) -> list[str]:
    return [f for f in fields if str_list(obj.get(f))]


def empty_rule(rule: Any) -> bool:
    """A rule that matches every request."""
    if rule is None:
        return True
    rule = as_dict(rule)
    return not any(as_list(rule.get(k)) for k in ("from", "to", "when"))


def sources(rule: Any) -> list[Obj]:
    return [as_dict(as_dict(f).get("source")) for f in as_list(as_dict(rule).get("from"))]


def operations(rule: Any) -> list[Obj]:
    return [as_dict(as_dict(t).get("operation")) for t in as_list(as_dict(rule).get("to"))]


def names_identity(source: Obj) -> bool:
    """The source requires a peer identity (mTLS) in some positive form."""
    return bool(_set(source, IDENTITY))


def negative_only(fields: Obj, positive: tuple[str, ...], negative: tuple[str, ...]) -> list[str]:
    """The negative fields set, when no positive field is (else [])."""
    return [] if _set(fields, positive) else _set(fields, negative)


def matches_everyone(source: Obj) -> str | None:
    """Why a source admits every caller of some kind, or None."""
    for name in ("namespaces", "trustDomains"):
        if "*" in str_list(source.get(name)):
            return f"{name}: ['*'] matches every authenticated caller of every trusted domain"
    blocks = str_list(source.get("ipBlocks")) + str_list(source.get("remoteIpBlocks"))
    if any(b in _ANY_ADDRESS for b in blocks) and not _set(source, IDENTITY):
        return "an ipBlocks of 0.0.0.0/0 (or ::/0) matches every address"
    return None


_CALLER_KEYS = ("source.", "request.auth.", "remote.ip")


def conditions_name_caller(rule: Any) -> bool:
    """A ``when`` condition on the caller (``source.*``, ``request.auth.*``, ``remote.ip``)."""
    keys = [str(as_dict(c).get("key") or "") for c in as_list(as_dict(rule).get("when"))]
    return any(k.startswith(_CALLER_KEYS) for k in keys)


def rule_constrains_caller(rule: Any) -> bool:
    """Every source of the rule names the caller positively (identity, JWT or address)."""
    found = sources(rule)
    return bool(found) and all(_set(s, POSITIVE_SOURCE) for s in found)
