"""The ``Federation`` CustomResourceDefinition, generated from the spec's pydantic model.

The openAPIV3Schema is the model's JSON Schema (the one ``meshfed schema`` prints) made
structural: references inlined, ``Optional`` as ``nullable``, no ``additionalProperties``
beside ``properties`` (unknown fields are refused by the API server's strict field
validation), and no defaults (the model applies them, and an omitted ``workloads`` must stay
omitted: discovery depends on it). Keys make the lists maps, so the API server itself refuses
two meshes of one name, two exports of one name in a mesh, and so on; the cross-field rules CEL
can express within the API server's cost budget are ``x-kubernetes-validations``, each naming
its field (the budget is estimated from the list bounds and string lengths set here, so rules
that cross-reference lists of lists, such as an import's sources against every export's
consumers, do not fit). Everything else (those references, principals against trust domains,
failover host conflicts) is checked by the controller with the same checks as
``meshfed validate``, and reported in the object's status with the field and the fix.
"""

from __future__ import annotations

import copy
from typing import Any

from meshfed.spec.model import API_VERSION, KIND, Federation

Obj = dict[str, Any]
GROUP, VERSION = API_VERSION.split("/")
PLURAL = "federations"
SINGULAR = "federation"
SHORT_NAMES = ["fed", "feds"]
CRD_NAME = f"{PLURAL}.{GROUP}"

MAX_MESHES = 32
MAX_CLUSTERS = 32
MAX_EXPORTS = 4000
MAX_CONSUMERS = 32
MAX_IMPORTS = 4000
MAX_WORKLOADS = 4000
MAX_PRINCIPALS = 12000
MAX_LIST = 64
"""Bounds on list sizes: the API server estimates each CEL rule's worst-case cost from them
(and refuses a CRD whose rules could exceed its budget). The bench federation (10 meshes x
1,000 exports) fits well inside."""

_LIMITS: dict[tuple[str, ...], int] = {
    ("spec", "meshes"): MAX_MESHES,
    ("spec", "meshes", "*", "clusters"): MAX_CLUSTERS,
    ("spec", "meshes", "*", "workloads"): MAX_WORKLOADS,
    ("spec", "exports"): MAX_EXPORTS,
    ("spec", "exports", "*", "consumers"): MAX_CONSUMERS,
    ("spec", "exports", "*", "consumers", "*", "principals"): MAX_PRINCIPALS,
    ("spec", "imports"): MAX_IMPORTS,
}

MAX_STRING = 253
_LENGTHS: dict[tuple[str, ...], int] = {
    ("spec", "exports", "*", "consumers", "*", "principals", "*"): 512,
    ("spec", "exports", "*", "consumers", "*", "paths", "*"): 1024,
    ("spec", "exports", "*", "workload"): 127,
    ("spec", "imports", "*", "from", "*"): 127,
}

_MAP_KEYS: dict[tuple[str, ...], list[str]] = {
    ("spec", "meshes"): ["name"],
    ("spec", "meshes", "*", "clusters"): ["name"],
    ("spec", "meshes", "*", "workloads"): ["namespace", "name"],
    ("spec", "exports"): ["mesh", "name"],
    ("spec", "exports", "*", "consumers"): ["mesh"],
    ("spec", "imports"): ["mesh", "host"],
}
"""Lists whose items are told apart by these fields (``x-kubernetes-list-type: map``): the API
server refuses duplicates, and server-side apply merges them item by item."""

_HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


def _rule(rule: str, message: str, field_path: str | None = None, reason: str = "") -> Obj:
    out: Obj = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


_RULES: dict[tuple[str, ...], list[Obj]] = {
    (): [
        _rule(
            "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')",
            "metadata.name must be a DNS-1123 label (at most 63 lower-case letters, digits, '-'): "
            "it is part of every export's default host",
        )
    ],
    ("spec",): [
        _rule(
            "!has(self.exports) || self.exports.all(e, self.meshes.exists(m, m.name == e.mesh))",
            "every exports[].mesh must name a mesh of spec.meshes",
            ".exports",
        ),
        _rule(
            "!has(self.imports) || self.imports.all(i, self.meshes.exists(m, m.name == i.mesh))",
            "every imports[].mesh must name a mesh of spec.meshes",
            ".imports",
        ),
    ],
    ("spec", "meshes", "*"): [
        _rule(
            "self.trustDomain != 'cluster.local'",
            "'cluster.local' is Istio's default trust domain, not unique to this mesh: choose "
            "one of its own",
            ".trustDomain",
        ),
        _rule(
            "!has(self.clusters) || !has(self.kubernetes) || !has(self.kubernetes.context)",
            "set either kubernetes.context or clusters, not both",
            ".clusters",
        ),
        _rule(
            "!has(self.clusters) || self.clusters.filter(c, c.role == 'primary').size() == 1",
            "a mesh spanning clusters has exactly one cluster with role primary",
            ".clusters",
        ),
        _rule(
            "!has(self.clusters) || self.clusters.all(c, c.role == 'primary' || "
            "!has(c.discoveryAddress))",
            "only the primary cluster has a discoveryAddress (remotes use the primary's)",
            ".clusters",
        ),
    ],
    ("spec", "exports", "*"): [
        _rule(
            "!has(self.host) || !self.host.endsWith('.local')",
            "an export's host must not be a mesh-internal (.local) name: use a public name such "
            "as <export>.<mesh>.<federation>.global",
            ".host",
        ),
    ],
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline ``$ref``s and make the schema structural (see the module's docstring)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) == 1 and len(options) < len(node["anyOf"]):
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            inner = _resolve(options[0], defs)
            return {**inner, **_resolve(rest, defs), "nullable": True}
    out: Obj = {}
    for key, value in node.items():
        if key in ("title", "default", "additionalProperties", "$defs", "$schema", "$id"):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _resolve(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _at(node: Obj, path: tuple[str, ...]) -> Obj:
    for part in path:
        node = node["items"] if part == "*" else node["properties"][part]
    return node


def _status_schema() -> Obj:
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer", "format": "int64"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }
    conditions = {
        "type": "array",
        "items": condition,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    }
    counts = {"type": "integer", "format": "int32"}
    return {
        "type": "object",
        "description": "What the controller observed and did (written by the controller only).",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "conditions": conditions,
            "summary": {
                "type": "object",
                "properties": {"meshes": counts, "exports": counts, "imports": counts},
            },
            "meshes": {
                "type": "array",
                "description": "Per mesh: its clusters, and whether each is applied, reachable "
                "and free of drift (with the reason and object).",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "conditions": conditions,
                        "clusters": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "context": {"type": "string"},
                                    "role": {"type": "string"},
                                    "conditions": conditions,
                                },
                            },
                        },
                        "ingressAddress": {"type": "string"},
                        "certificates": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "notAfter": {"type": "string"},
                                    "renewAt": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
            "imports": {
                "type": "array",
                "description": "Per import: which exporter serves it now, in failover order.",
                "items": {
                    "type": "object",
                    "properties": {
                        "mesh": {"type": "string"},
                        "host": {"type": "string"},
                        "servedBy": {"type": "string"},
                        "sources": {"type": "array", "items": {"type": "string"}},
                        "reason": {"type": "string"},
                    },
                },
            },
            "rotation": {
                "type": "object",
                "description": "A trust rotation under way (as `meshfed rotate status`).",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "peerBundles": {
                "type": "array",
                "description": "Per followed peer: the sequence of its bundle in force, and "
                "whether the last fetch was accepted (else why not).",
                "items": {
                    "type": "object",
                    "properties": {
                        "peer": {"type": "string"},
                        "ok": {"type": "boolean"},
                        "sequence": {"type": "integer", "format": "int64", "nullable": True},
                        "message": {"type": "string"},
                    },
                },
            },
            "lastReconcile": {"type": "string", "format": "date-time"},
        },
    }


def federation_schema() -> Obj:
    """The structural openAPIV3Schema of ``Federation``."""
    doc = Federation.model_json_schema(by_alias=True, mode="validation")
    schema: Obj = _resolve(doc, doc.get("$defs", {}))
    props = schema["properties"]
    props["metadata"] = {"type": "object"}
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["status"] = _status_schema()
    schema["required"] = ["spec"]  # the API server sets apiVersion, kind and metadata
    for path, limit in _LIMITS.items():
        _at(schema, path)["maxItems"] = limit
    for path, keys in _MAP_KEYS.items():
        node = _at(schema, path)
        node["x-kubernetes-list-type"] = "map"
        node["x-kubernetes-list-map-keys"] = keys
    for node in _string_lists(schema):
        node.setdefault("maxItems", MAX_LIST)
    for path, length in _LENGTHS.items():
        _at(schema, path)["maxLength"] = length
    consumer = ("spec", "exports", "*", "consumers", "*")
    _at(schema, (*consumer, "methods", "*"))["enum"] = list(_HTTP_METHODS)
    # A path starts with '/', may end in '*' (a prefix), holds no query or fragment (paths are
    # matched without them) and no space: a pattern, which costs nothing in CEL's budget.
    _at(schema, (*consumer, "paths", "*"))["pattern"] = r"^/[^?#*\s]*\*?$"
    for node in _strings(schema):
        node.setdefault("maxLength", MAX_STRING)
    for path, rules in _RULES.items():
        _at(schema, path).setdefault("x-kubernetes-validations", []).extend(copy.deepcopy(rules))
    return schema


def _strings(node: Any) -> list[Obj]:
    """Every string node of the schema (CEL costs are estimated from their maxLength)."""
    found: list[Obj] = []
    if isinstance(node, dict):
        if node.get("type") == "string" and "enum" not in node:
            found.append(node)
        for key, value in node.items():
            if key != "status":
                found += _strings(value)
    elif isinstance(node, list):
        for item in node:
            found += _strings(item)
    return found


def _string_lists(node: Any) -> list[Obj]:
    """Every array node whose items are plain strings (methods, paths, from ...)."""
    found: list[Obj] = []
    if isinstance(node, dict):
        if node.get("type") == "array" and (node.get("items") or {}).get("type") == "string":
            found.append(node)
        for value in node.values():
            found += _string_lists(value)
    elif isinstance(node, list):
        for item in node:
            found += _string_lists(item)
    return found


PRINTER_COLUMNS: list[Obj] = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "priority": 1,
    },
    {"name": "Meshes", "type": "integer", "jsonPath": ".status.summary.meshes"},
    {"name": "Exports", "type": "integer", "jsonPath": ".status.summary.exports"},
    {"name": "Imports", "type": "integer", "jsonPath": ".status.summary.imports", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def federation_crd() -> Obj:
    """The CustomResourceDefinition ``federations.meshfed.dev`` (cluster-scoped: a
    federation's name is global, it names the objects on every cluster it reaches)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "meshfed", "app.kubernetes.io/part-of": "meshfed"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["meshfed"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": federation_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }
