"""The federation spec as users write it (``meshfed.dev/v1alpha1`` ``Federation``).

Field names are a contract: users' files depend on them. Add optional fields; never rename.
Type-level rules live here; rules that need the whole document live in ``check.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr
from pydantic.alias_generators import to_camel

from meshfed.spec.duration import DURATION_PATTERN, parse_duration

API_VERSION = "meshfed.dev/v1alpha1"
KIND = "Federation"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


DnsLabel = Annotated[
    str,
    Field(
        pattern=DNS_LABEL,
        max_length=63,
        description="DNS-1123 label: lower-case letters, digits and '-', at most 63",
    ),
]
DnsName = Annotated[
    str,
    Field(
        pattern=DNS_NAME,
        max_length=253,
        description="DNS-1123 subdomain, lower case, e.g. payments.bank.example",
    ),
]
GoDuration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, description="Go-style duration as in Istio: 24h, 90m, 1h30m"),
    AfterValidator(_check_duration),
]
Port = Annotated[int, Field(ge=1, le=65535)]
Protocol = Literal["HTTP", "TCP"]
KeyAlgorithm = Literal["ECDSA_P256", "RSA_2048", "RSA_4096"]
TrustMode = Literal["SharedRoot", "Federated"]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


class Trust(_Model):
    """How the meshes' certificate authorities relate."""

    mode: TrustMode = Field(
        "SharedRoot",
        description="SharedRoot: one root, an intermediate per mesh. Federated: each mesh its own "
        "root; meshes trust each other only where federated.",
    )
    key_algorithm: KeyAlgorithm = "ECDSA_P256"
    root_ttl: GoDuration = Field("87600h", alias="rootTTL")
    intermediate_ttl: GoDuration = Field("8760h", alias="intermediateTTL")
    workload_ttl: GoDuration = Field("24h", alias="workloadTTL")
    gateway_ttl: GoDuration = Field(
        "2160h",
        alias="gatewayTTL",
        description="Lifetime of the federation ingress gateway's server certificate.",
    )

    def ttl(self, which: Literal["root", "intermediate", "workload", "gateway"]) -> timedelta:
        return parse_duration(getattr(self, f"{which}_ttl"))


class Ingress(_Model):
    """Where peer meshes reach this mesh's federation ingress gateway."""

    address: Annotated[
        str | None,
        Field(
            min_length=1,
            description="IP address or DNS name. Omitted with kubernetes or clusters set: read "
            "from the load balancer of the federation-ingress Service on the mesh's primary "
            "cluster (apply, diff, and the controller, which follows it when it changes).",
        ),
    ] = None
    port: Port = 15443


class Kubernetes(_Model):
    """The cluster this mesh runs in (used by apply)."""

    context: str | None = Field(None, description="kubeconfig context, as kubectl uses it")
    istio_namespace: DnsLabel = "istio-system"


ClusterRole = Literal["primary", "remote"]


class Cluster(_Model):
    """One Kubernetes cluster of a mesh that spans several (Istio primary-remote)."""

    name: DnsLabel = Field(
        description="Istio's name of the cluster (the remote secret's key and annotation)"
    )
    context: str = Field(min_length=1, description="kubeconfig context, as kubectl uses it")
    role: ClusterRole = Field(
        description="primary: runs istiod and holds the mesh's config; remote: its proxies use "
        "the primary's istiod through the primary's east-west gateway"
    )
    discovery_address: str | None = Field(
        None,
        description="primary only: the address remotes reach istiod on (the east-west "
        "gateway's load-balancer IP or name); needed to render the remotes' Istio settings",
    )


BundleProfile = Literal["https_web", "https_spiffe"]


class BundleEndpoint(_Model):
    """Where a mesh's SPIFFE trust bundle is published and how peers authenticate it (SPIFFE
    Federation: endpoint URL, profile, and for https_spiffe the endpoint's SPIFFE ID)."""

    url: str = Field(
        min_length=1,
        description="https URL peers fetch the bundle from, e.g. "
        "https://bundles.acme.example:8443/acme (no userinfo)",
    )
    profile: BundleProfile = Field(
        description="https_web: the endpoint has a Web PKI certificate for the URL's host; "
        "https_spiffe: it has an X509-SVID of spiffeId, checked against the trust domain's "
        "bundle"
    )
    spiffe_id: str | None = Field(
        None,
        description="https_spiffe only: the SPIFFE ID of the endpoint server, e.g. "
        "spiffe://acme.example/meshfed/bundle-endpoint",
    )
    refresh_hint: GoDuration = Field(
        "5m",
        description="Published bundles: how often peers should fetch again "
        "(spiffe_refresh_hint). Publish a new root at least 3-5 times this before signing "
        "with it.",
    )
    bootstrap_bundle: str | None = Field(
        None,
        description="A partner's https_spiffe endpoint: the file (relative to the spec) with "
        "the bundle the partner gave you, SPIFFE bundle JSON or PEM; it authenticates the "
        "first fetch only",
    )
    bootstrap_fingerprint: str | None = Field(
        None,
        pattern=r"^(sha256:)?([0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}$",
        description="A partner's https_spiffe endpoint: SHA-256 fingerprint of one of its "
        "roots (sha256:HEX), as an alternative to bootstrapBundle for the first fetch",
    )

    @property
    def refresh_seconds(self) -> int:
        return max(1, int(parse_duration(self.refresh_hint).total_seconds()))


class Workload(_Model):
    """A service living in a mesh."""

    name: DnsLabel
    namespace: DnsLabel
    service_account: DnsName
    port: Port
    protocol: Protocol = "HTTP"

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


class Mesh(_Model):
    """One Istio mesh: its own control plane, trust domain and gateways."""

    name: DnsLabel
    trust_domain: DnsName
    network: DnsLabel | None = None
    ingress: Ingress
    kubernetes: Kubernetes | None = None
    clusters: list[Cluster] | None = Field(
        None,
        description="Several clusters, one primary and its remotes (Istio primary-remote); "
        "kubernetes.context is the one-cluster shorthand. kubernetes.istioNamespace still applies.",
    )
    workloads: list[Workload] = Field(
        default_factory=list,
        description="Omitted (not empty) with kubernetes or clusters set: read from the cluster "
        "by apply, diff and discover (Services, or MCS ServiceExports where present).",
    )
    bundle_endpoint: BundleEndpoint | None = Field(
        None,
        description="Where this mesh's SPIFFE trust bundle is published (meshfed trust serve) "
        "and how peers reach it; for a partner mesh, where its bundle is fetched from",
    )
    follows: list[DnsLabel] | None = Field(
        None,
        description="Peer meshes whose published bundles this mesh's trust in them comes from "
        "(meshfed trust fetch keeps them current); every partner mesh this mesh trusts must "
        "be listed",
    )
    partner: bool = Field(
        False,
        description="Run by another organisation: meshfed holds no root for it and renders "
        "and runs nothing for it; it is trusted only through its bundle endpoint. Its "
        "workloads and exports, where listed, describe what it offers.",
    )

    @property
    def workloads_omitted(self) -> bool:
        """The spec leaves the workloads out: they are discovered in the mesh's cluster."""
        return "workloads" not in self.model_fields_set and (
            self.clusters is not None or self.kubernetes is not None
        )

    @property
    def istio_namespace(self) -> str:
        return self.kubernetes.istio_namespace if self.kubernetes else "istio-system"

    @property
    def in_cluster(self) -> bool:
        """The spec names the mesh's cluster(s), so what it leaves out can be read there."""
        return self.clusters is not None or self.kubernetes is not None

    @property
    def address_omitted(self) -> bool:
        """The ingress address is read from the federation-ingress load balancer."""
        return self.ingress.address is None


class Consumer(_Model):
    """Who in another mesh may call an export, and how."""

    mesh: DnsLabel
    principals: list[str] = Field(
        min_length=1,
        description='Workload identities of the consumer mesh: "ns/<ns>/sa/<sa>" (relative to its '
        'trust domain), a full "spiffe://<trust domain>/ns/<ns>/sa/<sa>", a trailing "*" for a '
        'prefix, or "*" for any workload of that mesh.',
    )
    methods: list[str] | None = Field(None, description="HTTP methods allowed (HTTP only)")
    paths: list[str] | None = Field(
        None, description='HTTP paths allowed (HTTP only); a trailing "*" matches a prefix'
    )


class Export(_Model):
    """A service a mesh exposes to named peers. Nothing is exposed unless listed here."""

    name: DnsLabel
    mesh: DnsLabel
    workload: Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$", description="<namespace>/<name>")]
    host: DnsName | None = Field(
        None,
        description="Public (SNI) name peers use; default <export>.<mesh>.<federation>.global",
    )
    consumers: list[Consumer] = Field(min_length=1)
    keep_request_headers: list[str] | None = Field(
        None,
        description="Request headers the ingress strips from every call (method, path and host "
        "overrides such as X-HTTP-Method-Override, X-Original-URL, Forwarded, X-Forwarded-Host) "
        "that this export lets through to its workload (HTTP only). A method or path override "
        "is refused when a consumer is limited to methods or paths; addresses and identity "
        "headers are never kept.",
    )


class Import(_Model):
    """A local name in a consumer mesh for remote exports, in failover order."""

    mesh: DnsLabel
    host: DnsName = Field(
        description="Local name consumers use, e.g. tokenizer.shop.svc.cluster.local"
    )
    port: Port = 80
    from_: list[Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$")]] = Field(
        alias="from",
        min_length=1,
        description="<mesh>/<export> sources; order is failover priority",
    )


class FederationSpecBody(_Model):
    trust: Trust = Field(default_factory=Trust)
    meshes: list[Mesh] = Field(min_length=1)
    exports: list[Export] = Field(default_factory=list)
    imports: list[Import] = Field(default_factory=list)


class Metadata(_Model):
    name: DnsLabel


class Federation(_Model):
    """A meshfed federation spec document."""

    api_version: Literal["meshfed.dev/v1alpha1"]
    kind: Literal["Federation"]
    metadata: Metadata
    spec: FederationSpecBody
    _exports: dict[str, Export] | None = PrivateAttr(None)

    @property
    def name(self) -> str:
        return self.metadata.name

    def mesh(self, name: str) -> Mesh:
        for mesh in self.spec.meshes:
            if mesh.name == name:
                return mesh
        raise KeyError(name)

    def export(self, ref: str) -> Export:
        """The export named ``<mesh>/<export>`` (the first, if a broken spec has two)."""
        # Read through the private-attribute dict: pydantic's ``__getattr__`` for private
        # attributes costs more than the lookup (a plan of a thousand exports asks 6,000 times).
        private = self.__pydantic_private__ or {}
        found: dict[str, Export] | None = private.get("_exports")
        if found is None:
            found = {}
            for export in self.spec.exports:
                found.setdefault(f"{export.mesh}/{export.name}", export)
            self._exports = found
        return found[ref]

    def export_host(self, export: Export) -> str:
        """The public (SNI) name of an export: its ``host``, or a default unique per mesh."""
        return export.host or f"{export.name}.{export.mesh}.{self.name}.global"

    def wire_host(self, imp: Import) -> str:
        """The one SNI/authority an import uses for all its sources: its first source's host."""
        return self.export_host(self.export(imp.from_[0]))
