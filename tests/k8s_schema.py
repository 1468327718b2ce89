"""Offline validation of rendered manifests, as close to a real kube-apiserver as we can get.

* Istio custom resources are always validated against Istio's CRD schemas from the npm
  registry (``@kubernetes-models/istio``, pinned in ``tests/npm/``; see ``istio_registry``):
  kinds and versions, types, required fields, enums, patterns, formats, and unknown fields.
  This needs nothing beside the checkout, so a user's clone runs it.
* Where the richer bundle ``shared/istio/crd-all.gen.yaml`` is beside the repo checkout
  (:data:`CRD_PATH`, or ``MESHFED_ISTIO_CRDS``), they are also validated against it: served
  versions only, structural-schema semantics (unknown fields are errors, nulls in non-nullable
  fields are pruned, ``x-kubernetes-int-or-string``, ``x-kubernetes-list-type: map`` key
  uniqueness, int32/int64/byte/date-time formats) and the CEL rules
  (``x-kubernetes-validations``), evaluated with ``cel-python`` (module ``celpy``) plus the
  Kubernetes CEL extension functions Istio's rules use. A problem only the registry's schema
  finds is reported too, marked as such.
* Built-in kinds are validated with the strict JSON schemas shipped by
  ``kubernetes-validate`` for :data:`K8S_VERSION`, plus a few apiserver checks that no
  schema expresses (object names, label/annotation keys and values, workload selectors).
* ``kustomization.yaml`` files are checked with :func:`validate_kustomization`.

Every problem is reported as ``"<Kind>/<name>: <path>: <problem>"``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import celpy
import jsonschema
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

from istio_registry import package_label, registry_errors

__all__ = [
    "ALLOWED_SKIPPED_CEL_RULES",
    "CRD_PATH",
    "K8S_VERSION",
    "SKIPPED_CEL_RULES",
    "all_cel_rules",
    "bundle_present",
    "parse_go_duration",
    "validate_all",
    "validate_custom_resource",
    "validate_kustomization",
    "validate_manifest",
]

JSON = Any
Schema = dict[str, Any]

#: Istio's CRD bundle with CEL rules: the ``shared`` directory beside the repo checkout, where
#: there is one (a user's clone has none; the registry schemas are checked either way).
CRD_PATH: Final[Path] = Path(
    os.environ.get(
        "MESHFED_ISTIO_CRDS",
        str(Path(__file__).resolve().parents[2] / "shared/istio/crd-all.gen.yaml"),
    )
)

#: Kubernetes version whose OpenAPI schemas (from kubernetes-validate) are used for built-ins.
K8S_VERSION: Final[str] = "1.37"

#: CEL rules found in the CRDs that this module cannot evaluate: rule -> reason.
#: Filled when the CRDs are loaded; a test pins it to :data:`ALLOWED_SKIPPED_CEL_RULES`.
SKIPPED_CEL_RULES: dict[str, str] = {}

#: The rules that may be skipped (none: every rule in Istio's CRDs is evaluated).
ALLOWED_SKIPPED_CEL_RULES: Final[frozenset[str]] = frozenset()

_ISTIO_GROUP_SUFFIX: Final[str] = "istio.io"


# --------------------------------------------------------------------------------------
# Names, labels, annotations (k8s.io/apimachinery/pkg/util/validation)
# --------------------------------------------------------------------------------------

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _dns1123_label(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1123_LABEL.fullmatch(value):
        return (
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
            "or '-', and must start and end with an alphanumeric character"
        )
    return None


def _dns1123_subdomain(value: str) -> str | None:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return None


def _dns1035_label(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1035_LABEL.fullmatch(value):
        return (
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
            "start with an alphabetic character, and end with an alphanumeric character"
        )
    return None


def _path_segment_name(value: str) -> str | None:
    if value in (".", ".."):
        return f"may not be {value!r}"
    for bad in ("/", "%"):
        if bad in value:
            return f"may not contain {bad!r}"
    return None


def _qualified_name(value: str) -> str | None:
    name = value
    if "/" in value:
        prefix, _, name = value.partition("/")
        if "/" in name:
            return "a qualified name must have at most one '/'"
        if not prefix:
            return "prefix part must be non-empty"
        problem = _dns1123_subdomain(prefix)
        if problem:
            return f"prefix part {problem}"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )
    return None


def _label_value(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE.fullmatch(value):
        return (
            "a valid label value must be an empty string or consist of alphanumeric "
            "characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return None


#: How the apiserver validates metadata.name, per kind (default: DNS-1123 subdomain).
_NAME_RULES: Final[dict[str, Callable[[str], str | None]]] = {
    "Namespace": _dns1123_label,
    "Service": _dns1035_label,
    "Role": _path_segment_name,
    "RoleBinding": _path_segment_name,
    "ClusterRole": _path_segment_name,
    "ClusterRoleBinding": _path_segment_name,
}

_TOTAL_ANNOTATION_SIZE_LIMIT: Final[int] = 256 * 1024


def _metadata_errors(kind: str, metadata: JSON) -> Iterator[tuple[str, str]]:
    """Yield (path, problem) for ObjectMeta checks that no OpenAPI schema expresses."""
    if not isinstance(metadata, dict):
        yield "metadata", "required: metadata must be an object with at least a name"
        return
    name = metadata.get("name")
    if name is None or name == "":
        if not metadata.get("generateName"):
            yield "metadata.name", "Required value: name or generateName is required"
    elif isinstance(name, str):
        problem = _NAME_RULES.get(kind, _dns1123_subdomain)(name)
        if problem:
            yield "metadata.name", f"Invalid value: {name!r}: {problem}"
    namespace = metadata.get("namespace")
    if isinstance(namespace, str) and namespace:
        problem = _dns1123_label(namespace)
        if problem:
            yield "metadata.namespace", f"Invalid value: {namespace!r}: {problem}"
    labels = metadata.get("labels")
    if isinstance(labels, dict):
        for key, value in labels.items():
            problem = _qualified_name(str(key))
            if problem:
                yield f"metadata.labels[{key!r}]", f"Invalid label key: {problem}"
            if isinstance(value, str):
                problem = _label_value(value)
                if problem:
                    yield f"metadata.labels[{key!r}]", f"Invalid value: {value!r}: {problem}"
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):
        total = 0
        for key, value in annotations.items():
            problem = _qualified_name(str(key).lower())
            if problem:
                yield f"metadata.annotations[{key!r}]", f"Invalid annotation key: {problem}"
            total += len(str(key)) + (len(value) if isinstance(value, str) else 0)
        if total > _TOTAL_ANNOTATION_SIZE_LIMIT:
            yield (
                "metadata.annotations",
                f"Too long: must have at most {_TOTAL_ANNOTATION_SIZE_LIMIT} bytes",
            )


# --------------------------------------------------------------------------------------
# JSON schema plumbing (shared by Istio CRDs and built-ins)
# --------------------------------------------------------------------------------------

_FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})",
)


def _is_int32(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**31) <= value < 2**31


def _is_int64(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**63


def _is_byte(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(_RFC3339.fullmatch(value))


for _name, _check in (
    ("int32", _is_int32),
    ("int64", _is_int64),
    ("byte", _is_byte),
    ("date-time", _is_date_time),
):
    _FORMAT_CHECKER.checks(_name)(_check)


def _format_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][\w$-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "<root>"


def _short(value: object, limit: int = 120) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_errors(
    validator: jsonschema.protocols.Validator, instance: JSON, prefix: tuple[str | int, ...] = ()
) -> Iterator[tuple[str, str]]:
    """Yield (path, problem) for every JSON-schema error, with readable messages."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.path])
    for error in errors:
        parts = (*prefix, *error.absolute_path)
        keyword = error.validator
        if keyword == "additionalProperties" and isinstance(error.instance, dict):
            schema = error.schema if isinstance(error.schema, dict) else {}
            known = set(schema.get("properties", {}))
            for extra in sorted(set(error.instance) - known):
                yield (
                    _format_path((*parts, extra)),
                    f'unknown field "{extra}" (not in the schema; the apiserver rejects it '
                    f"with strict field validation)",
                )
            continue
        if keyword == "oneOf" and isinstance(error.validator_value, list):
            alternatives = [
                branch["required"]
                for branch in error.validator_value
                if isinstance(branch, dict) and "required" in branch
            ]
            present = [alt for alt in alternatives if all(k in error.instance for k in alt)]
            if alternatives and len(present) > 1:
                names = sorted({k for alt in present for k in alt})
                yield _format_path(parts), f"only one of {names} may be set (oneOf)"
                continue
        if keyword == "format":
            yield (
                _format_path(parts),
                f"Invalid value: {_short(error.instance)}: not a valid {error.validator_value}",
            )
            continue
        message = error.message
        if len(message) > 300:
            message = message[:297] + "..."
        yield _format_path(parts), f"{message} ({keyword})"


@functools.lru_cache(maxsize=1)
def _k8s_definitions() -> tuple[str, Registry]:
    """(schema dir, registry with the shared definitions) for :data:`K8S_VERSION`."""
    versions = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) == K8S_VERSION]
    if not versions:
        raise RuntimeError(
            f"kubernetes-validate ships no schemas for Kubernetes {K8S_VERSION} "
            f"(it has {', '.join(kv_utils.all_versions())})"
        )
    schema_dir = f"kubernetes-json-schema/v{versions[-1]}-local-strict"
    definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", K8S_VERSION)
    registry: Registry = Resource.from_contents(definitions) @ Registry()
    return schema_dir, registry


_OBJECT_META_REF: Final[str] = (
    "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
)


@functools.lru_cache(maxsize=1)
def _object_meta_validator() -> jsonschema.protocols.Validator:
    _, registry = _k8s_definitions()
    return jsonschema.Draft202012Validator(
        {"$ref": _OBJECT_META_REF}, registry=registry, format_checker=_FORMAT_CHECKER
    )


@functools.lru_cache(maxsize=256)
def _builtin_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    schema_dir, registry = _k8s_definitions()
    # Same file naming as kubernetes_validate.validate: rbac.authorization.k8s.io/v1 -> rbac-v1
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv_utils.schema_contents(f"{schema_dir}/{kind.lower()}-{api}.json", K8S_VERSION)
    except FileNotFoundError:
        return None
    registry = Resource.from_contents(schema) @ registry
    return jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=_FORMAT_CHECKER
    )


# --------------------------------------------------------------------------------------
# Istio CRDs
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _istio_crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CRD, parsed once per session."""
    if not CRD_PATH.is_file():
        raise FileNotFoundError(
            f"Istio CRD bundle not found at {CRD_PATH}: expected shared/istio/crd-all.gen.yaml "
            "beside the repo checkout (or set MESHFED_ISTIO_CRDS)"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crds: dict[tuple[str, str], dict[str, Any]] = {}
    with CRD_PATH.open(encoding="utf-8") as fh:
        for doc in yaml.load_all(fh, Loader=loader):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                crds[(spec["group"], spec["names"]["kind"])] = doc
    _inventory_cel_rules(crds)
    return crds


def _close_schema(node: JSON, top: bool = False) -> JSON:
    """Structural schema -> JSON schema: close objects, honour nullable/int-or-string."""
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key in ("description", "x-kubernetes-validations"):
            continue
        if key == "properties":
            out[key] = {name: _close_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _close_schema(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [_close_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(node.get("type"), str):
        out["type"] = [node["type"], "null"]
    if (
        node.get("type") == "object"
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in node
    ):
        out["additionalProperties"] = False
    if top:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = {"type": "object"}  # validated as ObjectMeta separately
    return out


@functools.lru_cache(maxsize=128)
def _crd_validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    schema = _crd_version(group, kind, version)["schema"]["openAPIV3Schema"]
    return jsonschema.Draft202012Validator(
        _close_schema(schema, top=True), format_checker=_FORMAT_CHECKER
    )


def _crd_version(group: str, kind: str, version: str) -> dict[str, Any]:
    crd = _istio_crds()[(group, kind)]
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return dict(entry)
    raise KeyError(version)


def _prune_nulls(value: JSON, node: JSON) -> JSON:
    """Drop null object fields whose schema is not nullable, like the apiserver does."""
    if not isinstance(node, dict):
        return value
    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, sub in value.items():
            sub_schema = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None and isinstance(sub_schema, dict) and not sub_schema.get("nullable"):
                continue
            out[key] = _prune_nulls(sub, sub_schema)
        return out
    if isinstance(value, list):
        return [_prune_nulls(item, node.get("items")) for item in value]
    return value


def _list_map_errors(
    value: JSON, node: JSON, path: tuple[str | int, ...]
) -> Iterator[tuple[str, str]]:
    """x-kubernetes-list-type: map / set uniqueness."""
    if not isinstance(node, dict):
        return
    if isinstance(value, list):
        list_type = node.get("x-kubernetes-list-type")
        seen: dict[str, int] = {}
        for index, item in enumerate(value):
            if list_type == "map" and isinstance(item, dict):
                keys = node.get("x-kubernetes-list-map-keys") or []
                ident = json.dumps([item.get(k) for k in keys], sort_keys=True)
            elif list_type == "set":
                ident = json.dumps(item, sort_keys=True)
            else:
                ident = ""
            if ident:
                if ident in seen:
                    yield _format_path((*path, index)), f"Duplicate value: {ident}"
                seen[ident] = index
            yield from _list_map_errors(item, node.get("items"), (*path, index))
    elif isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = props.get(key, extra if isinstance(extra, dict) else None)
            yield from _list_map_errors(sub, sub_schema, (*path, key))


# --------------------------------------------------------------------------------------
# CEL (x-kubernetes-validations)
# --------------------------------------------------------------------------------------

_GO_DURATION_UNITS: Final[dict[str, int]] = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,  # micro sign
    "\u03bcs": 10**3,  # Greek mu
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> int:
    """Go's time.ParseDuration (what Kubernetes' CEL ``duration()`` uses), in nanoseconds."""
    rest, sign = text, 1
    if rest[:1] in ("-", "+"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total = Fraction(0)
    pos = 0
    while pos < len(rest):
        match = _GO_DURATION_PART.match(rest, pos)
        if not match:
            raise ValueError(f"invalid duration {text!r}")
        total += Fraction(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        pos = match.end()
    nanos = int(total) * sign
    if not -(2**63) <= nanos < 2**63:
        raise ValueError(f"invalid duration {text!r}: out of range")
    return nanos


def _cel_error(message: str) -> CELEvalError:
    return CELEvalError(message)


def _cel_duration(value: Any) -> Any:
    if isinstance(value, celtypes.DurationType):
        return value
    if not isinstance(value, str):
        return _cel_error(f"no such overload: duration({type(value).__name__})")
    try:
        nanos = parse_go_duration(str(value))
    except ValueError as exc:
        return _cel_error(str(exc))
    return celtypes.DurationType(nanos // 10**9, nanos % 10**9)


def _cel_int(value: Any) -> Any:
    if isinstance(value, str):
        # strconv.ParseInt(s, 10, 64): no whitespace, no underscores
        if not re.fullmatch(r"[+-]?[0-9]+", str(value)):
            return _cel_error(f"cannot convert {str(value)!r} to int")
        number = int(str(value))
        if not -(2**63) <= number < 2**63:
            return _cel_error("int out of range")
        return celtypes.IntType(number)
    try:
        return celtypes.IntType(value)
    except (TypeError, ValueError) as exc:
        return _cel_error(str(exc))


def _cel_substring(value: Any, start: Any, end: Any = None) -> Any:
    text = str(value)
    begin = int(start)
    stop = len(text) if end is None else int(end)
    if begin < 0 or begin > len(text):
        return _cel_error(f"index out of range: {begin}")
    if stop < begin or stop > len(text):
        return _cel_error(f"index out of range: {stop}")
    return celtypes.StringType(text[begin:stop])


def _cel_index_of(value: Any, needle: Any, offset: Any = 0) -> Any:
    return celtypes.IntType(str(value).find(str(needle), int(offset)))


def _cel_last_index_of(value: Any, needle: Any) -> Any:
    return celtypes.IntType(str(value).rfind(str(needle)))


def _cel_split(value: Any, sep: Any, limit: Any = -1) -> Any:
    n = int(limit)
    if n == 0:
        return celtypes.ListType([])
    parts = str(value).split(str(sep), n - 1 if n > 0 else -1)
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def _cel_join(value: Any, sep: Any = "") -> Any:
    return celtypes.StringType(str(sep).join(str(v) for v in value))


def _cel_replace(value: Any, old: Any, new: Any, limit: Any = -1) -> Any:
    return celtypes.StringType(str(value).replace(str(old), str(new), int(limit)))


def _ascii_lower(value: Any) -> Any:
    return celtypes.StringType("".join(c.lower() if c.isascii() else c for c in str(value)))


def _ascii_upper(value: Any) -> Any:
    return celtypes.StringType("".join(c.upper() if c.isascii() else c for c in str(value)))


class _CelURL(celtypes.StringType):
    """Value of Kubernetes' CEL ``url()``."""

    scheme: str
    host: str
    path: str
    query: str


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_URL_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+(%[^\]]*)?\]|[^\[\]@/?#:]*)(:[0-9]*)?")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _parse_request_uri(text: str) -> tuple[str, str, str, str]:
    """Go's url.ParseRequestURI, enough for isURL()/url(): (scheme, host, path, query)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("invalid control character in URL")
    scheme, rest = "", text
    match = _URL_SCHEME.match(text)
    if text.startswith(":"):
        raise ValueError("missing protocol scheme")
    if match and text[match.end() : match.end() + 1] == ":":
        scheme, rest = match.group(0).lower(), text[match.end() + 1 :]
    rest, _, query = rest.partition("?")
    if not rest.startswith("/"):
        if scheme:
            return scheme, "", "", query  # opaque, e.g. mailto:x
        raise ValueError("invalid URI for request")
    host, path = "", rest
    if scheme and rest.startswith("//") and not rest.startswith("///"):
        authority, slash, tail = rest[2:].partition("/")
        path = slash + tail
        _, _, hostport = authority.rpartition("@")
        if not _URL_HOST.fullmatch(hostport):
            raise ValueError(f"invalid host {hostport!r}")
        host = hostport
    if _BAD_ESCAPE.search(path) or _BAD_ESCAPE.search(host):
        raise ValueError("invalid URL escape")
    return scheme, host, path, query


def _cel_is_url(value: Any) -> Any:
    try:
        _parse_request_uri(str(value))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _cel_url(value: Any) -> Any:
    try:
        scheme, host, path, query = _parse_request_uri(str(value))
    except ValueError as exc:
        return _cel_error(f"URL parse error during conversion from string: {exc}")
    url = _CelURL(str(value))
    url.scheme, url.host, url.path, url.query = scheme, host, path, query
    return url


def _url_part(attr: str) -> Callable[[Any], Any]:
    def get(value: Any) -> Any:
        if not isinstance(value, _CelURL):
            return _cel_error(f"no such overload: {attr} on {type(value).__name__}")
        return celtypes.StringType(getattr(value, attr))

    return get


def _cel_hostname(value: Any) -> Any:
    if not isinstance(value, _CelURL):
        return _cel_error("no such overload: getHostname")
    host = value.host
    if host.startswith("["):
        return celtypes.StringType(host[1 : host.index("]")])
    return celtypes.StringType(host.partition(":")[0])


def _cel_port(value: Any) -> Any:
    if not isinstance(value, _CelURL):
        return _cel_error("no such overload: getPort")
    host = value.host
    if host.startswith("["):
        host = host[host.index("]") + 1 :]
    return celtypes.StringType(host.rpartition(":")[2] if ":" in host else "")


#: Kubernetes' CEL library functions we add to (or override in) celpy.
_CEL_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "duration": _cel_duration,
    "int": _cel_int,
    "substring": _cel_substring,
    "indexOf": _cel_index_of,
    "lastIndexOf": _cel_last_index_of,
    "split": _cel_split,
    "join": _cel_join,
    "replace": _cel_replace,
    "lowerAscii": _ascii_lower,
    "upperAscii": _ascii_upper,
    "trim": lambda value: celtypes.StringType(str(value).strip()),
    "isURL": _cel_is_url,
    "url": _cel_url,
    "getScheme": _url_part("scheme"),
    "getHost": _url_part("host"),
    "getEscapedPath": _url_part("path"),
    "getQuery": _url_part("query"),
    "getHostname": _cel_hostname,
    "getPort": _cel_port,
}

#: Functions and macros celpy itself implements with Kubernetes' semantics.
_CEL_BUILTINS: Final[frozenset[str]] = frozenset(
    {
        "has",
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "all",
        "exists",
        "exists_one",
        "map",
        "filter",
        "string",
        "double",
        "uint",
        "bool",
        "bytes",
        "type",
        "timestamp",
    }
)
_SUPPORTED_CEL_FUNCTIONS: Final[frozenset[str]] = _CEL_BUILTINS | frozenset(_CEL_FUNCTIONS)

_CEL_STRING_LITERAL = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_CEL_CALL = re.compile(r"([A-Za-z_]\w*)\s*\(")


def _cel_functions_used(rule: str) -> set[str]:
    return set(_CEL_CALL.findall(_CEL_STRING_LITERAL.sub('""', rule)))


@functools.lru_cache(maxsize=1)
def _cel_env() -> celpy.Environment:
    return celpy.Environment()


@functools.lru_cache(maxsize=1024)
def _cel_program(rule: str) -> celpy.Runner:
    env = _cel_env()
    return env.program(env.compile(rule), functions=dict(_CEL_FUNCTIONS))


def _iter_rules(node: JSON) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield from node.get("x-kubernetes-validations") or []
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    yield from _iter_rules(sub)
            elif key in ("items", "additionalProperties"):
                yield from _iter_rules(value)


def _inventory_cel_rules(crds: Mapping[tuple[str, str], dict[str, Any]]) -> None:
    """Compile every rule once; record the ones we cannot evaluate."""
    for crd in crds.values():
        for version in crd["spec"]["versions"]:
            for rule in _iter_rules(version["schema"]["openAPIV3Schema"]):
                text = rule["rule"]
                unsupported = _cel_functions_used(text) - _SUPPORTED_CEL_FUNCTIONS
                if unsupported:
                    SKIPPED_CEL_RULES[text] = f"unsupported functions: {sorted(unsupported)}"
                    continue
                try:
                    _cel_program(text)
                except Exception as exc:  # celpy raises CELParseError / others
                    SKIPPED_CEL_RULES[text] = f"does not compile with celpy: {exc}"


def all_cel_rules() -> set[str]:
    """Every CEL rule text in the Istio CRDs (all versions)."""
    return {
        rule["rule"]
        for crd in _istio_crds().values()
        for version in crd["spec"]["versions"]
        for rule in _iter_rules(version["schema"]["openAPIV3Schema"])
    }


_JSON_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _type_ok(value: JSON, node: Schema) -> bool:
    expected = node.get("type")
    if not isinstance(expected, str):
        return True
    if expected in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _JSON_TYPES.get(expected, (object,)))


def _evaluate_rule(rule: dict[str, Any], value: JSON) -> str | None:
    """None when the rule holds, else the problem."""
    text = rule["rule"]
    message = rule.get("message") or f"failed rule: {text}"
    try:
        result = _cel_program(text).evaluate({"self": json_to_cel(value)})
    except CELEvalError as exc:
        return f"Invalid value: {_short(value)}: {message} (rule {text!r} raised: {exc.args[0]})"
    if isinstance(result, CELEvalError):
        return f"Invalid value: {_short(value)}: {message} (rule {text!r} raised: {result.args[0]})"
    if result != celtypes.BoolType(True):
        return f"Invalid value: {_short(value)}: {message} (rule: {text})"
    return None


def _cel_errors(value: JSON, node: JSON, path: tuple[str | int, ...]) -> Iterator[tuple[str, str]]:
    if not isinstance(node, dict) or value is None or not _type_ok(value, node):
        return
    for rule in node.get("x-kubernetes-validations") or []:
        text = rule["rule"]
        if text in SKIPPED_CEL_RULES:
            continue
        if "oldSelf" in text and not rule.get("optionalOldSelf"):
            continue  # transition rule: never evaluated on create
        problem = _evaluate_rule(rule, value)
        if problem:
            field_path = rule.get("fieldPath") or ""
            yield _format_path(path) + field_path, problem
    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key, sub in value.items():
            if key in props:
                yield from _cel_errors(sub, props[key], (*path, key))
            elif isinstance(extra, dict):
                yield from _cel_errors(sub, extra, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _cel_errors(item, node.get("items"), (*path, index))


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def bundle_present() -> bool:
    """Whether the CRD bundle (with its CEL rules) is there to check against too."""
    return CRD_PATH.is_file()


def _covered(path: str, seen: set[str]) -> bool:
    return any(path == p or path.startswith((p + ".", p + "[")) for p in seen)


def _istio_errors(
    obj: dict[str, Any], group: str, version: str, kind: str
) -> Iterator[tuple[str, str]]:
    registry = [
        (_format_path(path), problem)
        for path, problem in registry_errors(obj, group, version, kind)
        if path[:1] != ("metadata",)
    ]
    if not bundle_present():
        yield from registry
        if "metadata" in obj and not any(p in ("kind", "apiVersion") for p, _ in registry):
            yield from _schema_errors(_object_meta_validator(), obj["metadata"], ("metadata",))
        return
    found = list(_bundle_errors(obj, group, version, kind))
    yield from found
    seen = {path for path, _ in found}
    for path, problem in registry:
        if not _covered(path, seen):
            yield path, f"{problem} (by {package_label()}; the bundle accepts it)"


def _bundle_errors(
    obj: dict[str, Any], group: str, version: str, kind: str
) -> Iterator[tuple[str, str]]:
    crds = _istio_crds()
    if (group, kind) not in crds:
        known = sorted(k for g, k in crds if g == group)
        hint = (
            f"kinds served in {group}: {', '.join(known)}"
            if known
            else (f"no Istio CRD defines group {group} (removed API?)")
        )
        yield "kind", f'no matches for kind "{kind}" in version "{group}/{version}" ({hint})'
        return
    versions = crds[(group, kind)]["spec"]["versions"]
    served = [v["name"] for v in versions if v.get("served")]
    entry = next((v for v in versions if v["name"] == version), None)
    if entry is None or not entry.get("served"):
        state = "not served" if entry is not None else "not defined (removed?)"
        yield (
            "apiVersion",
            f"version {version} of {kind}.{group} is {state}; served versions: {', '.join(served)}",
        )
        return
    schema = entry["schema"]["openAPIV3Schema"]
    body = {k: v for k, v in obj.items() if k != "metadata"}
    if "status" in (entry.get("subresources") or {}):
        body.pop("status", None)  # reset by the apiserver on create
    body = _prune_nulls(body, schema)
    yield from _schema_errors(_crd_validator(group, kind, version), body)
    yield from _list_map_errors(body, schema, ())
    yield from _cel_errors(body, schema, ())
    if "metadata" in obj:
        yield from _schema_errors(_object_meta_validator(), obj["metadata"], ("metadata",))


def validate_custom_resource(obj: dict[str, Any], crd: dict[str, Any]) -> list[str]:
    """Problems the apiserver would report for creating ``obj`` as a resource of ``crd`` (a
    CRD this test suite has in hand, e.g. one meshfed generates): structural schema, list-map
    keys and every CEL rule, the root's rules seeing ``metadata.name``."""
    group, version = _split_api_version(str(obj.get("apiVersion", "")))
    if group != crd["spec"]["group"] or obj.get("kind") != crd["spec"]["names"]["kind"]:
        return [f"{obj.get('kind')}: kind: not a {crd['metadata']['name']} resource"]
    entry = next((v for v in crd["spec"]["versions"] if v["name"] == version), None)
    if entry is None:
        return [f"{obj.get('kind')}: apiVersion: version {version} is not defined"]
    schema = entry["schema"]["openAPIV3Schema"]
    body = {k: v for k, v in obj.items() if k != "metadata"}
    if "status" in (entry.get("subresources") or {}):
        body.pop("status", None)
    body = _prune_nulls(body, schema)
    validator = jsonschema.Draft202012Validator(
        _close_schema(schema, top=True), format_checker=_FORMAT_CHECKER
    )
    problems = [
        *_schema_errors(validator, body),
        *_list_map_errors(body, schema, ()),
        *_cel_errors({**body, "metadata": {"name": _name_of(obj)}}, schema, ()),
    ]
    return [f"{obj.get('kind')}/{_name_of(obj)}: {path}: {problem}" for path, problem in problems]


_WORKLOAD_KINDS: Final[frozenset[str]] = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
)


def _builtin_extra_errors(obj: dict[str, Any], kind: str) -> Iterator[tuple[str, str]]:
    spec = obj.get("spec")
    if kind in _WORKLOAD_KINDS and isinstance(spec, dict):
        selector = spec.get("selector")
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not isinstance(selector, dict) or not (
            selector.get("matchLabels") or selector.get("matchExpressions")
        ):
            yield "spec.selector", "Invalid value: empty selector is invalid for " + kind.lower()
        elif isinstance(selector.get("matchLabels"), dict) and isinstance(labels, dict):
            for key, value in selector["matchLabels"].items():
                if labels.get(key) != value:
                    yield (
                        "spec.template.metadata.labels",
                        f"Invalid value: selector {key}={value} does not match template labels",
                    )


def _name_of(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return str(name) if name else "<unnamed>"


def validate_manifest(obj: dict[str, Any]) -> list[str]:
    """Problems the apiserver (with Istio's CRDs) would report for creating ``obj``."""
    if not isinstance(obj, dict):
        return [f"?/?: <root>: not an object: {_short(obj)}"]
    kind = obj.get("kind")
    api_version = obj.get("apiVersion")
    label = f"{kind or '?'}/{_name_of(obj)}"
    if not isinstance(kind, str) or not kind:
        return [f"{label}: kind: Required value: kind must be a non-empty string"]
    if not isinstance(api_version, str) or not api_version:
        return [f"{label}: apiVersion: Required value: apiVersion must be a non-empty string"]
    group, version = _split_api_version(api_version)
    if kind == "Kustomization" and group.startswith("kustomize.config.k8s.io"):
        return validate_kustomization(obj, None)

    problems: list[tuple[str, str]] = []
    if group == _ISTIO_GROUP_SUFFIX or group.endswith("." + _ISTIO_GROUP_SUFFIX):
        problems.extend(_istio_errors(obj, group, version, kind))
    else:
        validator = _builtin_validator(api_version, kind)
        if validator is None:
            problems.append(
                (
                    "kind",
                    f'no matches for kind "{kind}" in version "{api_version}" (not an Istio '
                    f"CRD and no Kubernetes {K8S_VERSION} schema in kubernetes-validate)",
                )
            )
        else:
            problems.extend(_schema_errors(validator, obj))
            problems.extend(_builtin_extra_errors(obj, kind))
    if not any(p.startswith(("kind", "apiVersion")) for p, _ in problems):
        problems.extend(_metadata_errors(kind, obj.get("metadata")))
    return [f"{label}: {path}: {problem}" for path, problem in problems]


def validate_all(objs: Iterable[dict[str, Any]]) -> list[str]:
    """validate_manifest for each object, plus duplicate-object detection."""
    errors: list[str] = []
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objs:
        if obj is None:  # empty YAML document
            continue
        errors.extend(validate_manifest(obj))
        if not isinstance(obj, dict):
            continue
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        assert isinstance(metadata, dict)
        group = _split_api_version(str(obj.get("apiVersion", "")))[0]
        key = (group, str(obj.get("kind")), str(metadata.get("namespace", "")), _name_of(obj))
        if key in seen:
            errors.append(
                f"{key[1]}/{key[3]}: metadata.name: Duplicate value: another {key[1]} "
                f"named {key[3]!r} in namespace {key[2] or '<default>'!r} (AlreadyExists)"
            )
        seen.add(key)
    return errors


_KUSTOMIZATION_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "apiVersion",
        "kind",
        "metadata",
        "resources",
        "components",
        "crds",
        "bases",
        "namespace",
        "namePrefix",
        "nameSuffix",
        "commonLabels",
        "labels",
        "commonAnnotations",
        "patches",
        "patchesStrategicMerge",
        "patchesJson6902",
        "images",
        "replicas",
        "replacements",
        "configMapGenerator",
        "secretGenerator",
        "generatorOptions",
        "generators",
        "transformers",
        "validators",
        "configurations",
        "openapi",
        "vars",
        "buildMetadata",
        "helmCharts",
        "helmGlobals",
        "sortOptions",
    }
)


def _kustomize_ref_present(entry: str, files_present: set[str]) -> bool:
    normalized = os.path.normpath(entry)
    present = {os.path.normpath(f) for f in files_present}
    if normalized in present:
        return True
    return any(
        os.path.join(normalized, name) in present
        for name in ("kustomization.yaml", "kustomization.yml", "Kustomization")
    )


def validate_kustomization(obj: dict[str, Any], files_present: set[str] | None) -> list[str]:
    """Check a kustomization.yaml document.

    ``files_present`` holds the paths (relative to the kustomization's directory) that
    exist; every ``resources``/``components``/``crds`` entry and every patch ``path`` must be
    among them (a directory entry needs its own kustomization file). ``None`` skips the
    existence checks (structure only).
    """
    has_name = isinstance(obj.get("metadata"), dict)
    label = "Kustomization/" + (_name_of(obj) if has_name else "kustomization.yaml")
    problems: list[tuple[str, str]] = []
    if obj.get("apiVersion") not in (
        "kustomize.config.k8s.io/v1beta1",
        "kustomize.config.k8s.io/v1",
    ):
        problems.append(("apiVersion", f"unexpected apiVersion {obj.get('apiVersion')!r}"))
    if obj.get("kind") != "Kustomization":
        problems.append(("kind", f"expected Kustomization, got {obj.get('kind')!r}"))
    for key in sorted(set(obj) - _KUSTOMIZATION_FIELDS):
        problems.append((key, f'unknown field "{key}" in Kustomization'))

    refs: list[tuple[str, Any]] = []
    for field in ("resources", "components", "crds", "bases", "patchesStrategicMerge"):
        entries = obj.get(field)
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.append((field, "must be a list of paths"))
            continue
        refs.extend((f"{field}[{i}]", entry) for i, entry in enumerate(entries))
    for field in ("patches", "patchesJson6902"):
        for i, patch in enumerate(obj.get(field) or []):
            if isinstance(patch, dict) and "path" in patch:
                refs.append((f"{field}[{i}].path", patch["path"]))
    for path, entry in refs:
        if isinstance(entry, str) and "\n" in entry:
            continue  # inline patch
        if not isinstance(entry, str) or not entry:
            problems.append((path, f"must be a non-empty string, got {_short(entry)}"))
        elif "://" in entry or entry.startswith(("github.com/", "git@")):
            problems.append((path, f"remote resource {entry!r} cannot be checked offline"))
        elif os.path.isabs(entry):
            problems.append((path, f"absolute path {entry!r} is not allowed by kustomize"))
        elif files_present is not None and not _kustomize_ref_present(entry, files_present):
            problems.append((path, f"{entry!r} does not exist"))
    return [f"{label}: {path}: {problem}" for path, problem in problems]
