"""How Istio was (or will be) installed: its meshConfig and istiod's environment, wherever the
tree says them.

Istio takes its mesh configuration from one of several places, and the audit reads each:

- an ``IstioOperator`` (``istioctl install -f``): ``spec.meshConfig`` and
  ``spec.values.meshConfig``; istiod's environment in ``spec.values.pilot.env`` and
  ``spec.components.pilot.k8s.env``;
- Helm values of the ``istiod`` chart (a YAML document without ``kind``): ``meshConfig`` and
  ``pilot.env``;
- the Sail operator's ``Istio`` / ``IstioRevision`` (``sailoperator.io``):
  ``spec.values.meshConfig`` and ``spec.values.pilot.env``;
- the ``istio`` ConfigMap istiod reads (``istio`` or ``istio-<revision>``): ``data.mesh``;
- a rendered istiod ``Deployment``: the ``discovery`` container's ``env``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshfed.audit.model import Location
from meshfed.audit.sources.manifests import HELM_VALUE_KEYS, Doc
from meshfed.audit.yamlsrc import FieldPath, Obj, as_dict, as_list, as_str, dig
from meshfed.spec.yamlsafe import InputError, load_one

SAIL_KINDS = ("Istio", "IstioRevision")


def is_helm_values(doc: Doc) -> bool:
    """A YAML document of Helm values (no ``kind``) that configures istiod."""
    return "kind" not in doc.obj and any(isinstance(doc.obj.get(k), dict) for k in HELM_VALUE_KEYS)


def _where(doc: Doc) -> str:
    if is_helm_values(doc):
        return f"Helm values {doc.file}"
    return f"{doc.kind} {doc.namespace}/{doc.name}"


@dataclass(frozen=True)
class MeshConfig:
    """A meshConfig fragment: from an IstioOperator, Helm values, Sail or the ``istio``
    ConfigMap."""

    doc: Doc
    config: Obj
    path: FieldPath
    """Field path of the config inside ``doc`` (for locations)."""

    def at(self, *field: str | int) -> Location:
        if self.doc.kind == "ConfigMap":
            return self.doc.at(*self.path, detail=".".join(("mesh", *map(str, field))))
        return self.doc.at(*self.path, *field)

    @property
    def source(self) -> str:
        """Where this meshConfig is set, for messages."""
        return _where(self.doc)


def _sail(doc: Doc) -> bool:
    return doc.kind in SAIL_KINDS and doc.group.startswith("sailoperator.io")


def _config_paths(doc: Doc) -> list[FieldPath]:
    if doc.kind == "IstioOperator":
        return [("spec", "meshConfig"), ("spec", "values", "meshConfig")]
    if _sail(doc):
        return [("spec", "values", "meshConfig")]
    if is_helm_values(doc):
        return [("meshConfig",)]
    return []


def mesh_configs(docs: Iterable[Doc]) -> list[MeshConfig]:
    out = []
    for doc in docs:
        for path in _config_paths(doc):
            cfg = doc.get(*path)
            if isinstance(cfg, dict):
                out.append(MeshConfig(doc, cfg, path))
        if doc.kind == "ConfigMap" and (doc.name == "istio" or doc.name.startswith("istio-")):
            text = doc.get("data", "mesh")
            if not isinstance(text, str):
                continue
            try:
                found = load_one(text, doc.file, plain_text=False)
            except InputError:
                continue  # not read: the checks that need it say so
            cfg = found.data if found is not None else None
            if isinstance(cfg, dict):
                out.append(MeshConfig(doc, cfg, ("data", "mesh")))
    return out


@dataclass(frozen=True)
class EnvSetting:
    """One environment variable of istiod, and where it is set."""

    name: str
    value: str
    doc: Doc
    path: FieldPath

    def at(self) -> Location:
        return self.doc.at(*self.path)

    @property
    def source(self) -> str:
        return _where(self.doc)


def _env_map(doc: Doc, path: FieldPath) -> list[EnvSetting]:
    return [
        EnvSetting(str(k), str(v), doc, (*path, str(k)))
        for k, v in as_dict(doc.get(*path)).items()
        if v is not None
    ]


def _env_list(doc: Doc, path: FieldPath) -> list[EnvSetting]:
    out = []
    for i, item in enumerate(as_list(doc.get(*path))):
        name, value = as_str(as_dict(item).get("name")), as_dict(item).get("value")
        if name and value is not None:
            out.append(EnvSetting(name, str(value), doc, (*path, i, "value")))
    return out


def _istiod(doc: Doc) -> bool:
    return doc.kind == "Deployment" and (doc.name == "istiod" or doc.name.startswith("istiod-"))


def pilot_env(docs: Iterable[Doc]) -> list[EnvSetting]:
    """istiod's environment variables, as the install sets them."""
    out: list[EnvSetting] = []
    for doc in docs:
        if doc.kind == "IstioOperator":
            out += _env_map(doc, ("spec", "values", "pilot", "env"))
            out += _env_list(doc, ("spec", "components", "pilot", "k8s", "env"))
        elif _sail(doc):
            out += _env_map(doc, ("spec", "values", "pilot", "env"))
        elif is_helm_values(doc):
            out += _env_map(doc, ("pilot", "env"))
        elif _istiod(doc):
            containers = as_list(dig(doc.obj, "spec", "template", "spec", "containers"))
            for i, container in enumerate(containers):
                if as_str(as_dict(container).get("name")) == "discovery":
                    path = ("spec", "template", "spec", "containers", i, "env")
                    out += _env_list(doc, path)
    return out


DEFAULT_ROOT_NAMESPACE = "istio-system"


def root_namespace(docs: Iterable[Doc]) -> str:
    """meshConfig.rootNamespace (Istio's default: istio-system, the namespace of istiod)."""
    for cfg in mesh_configs(docs):
        ns = as_str(cfg.config.get("rootNamespace"))
        if ns:
            return ns
    return DEFAULT_ROOT_NAMESPACE
