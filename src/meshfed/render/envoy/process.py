"""What one Envoy process needs: its xDS resources, its identity, and the roots it trusts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Resource = dict[str, Any]
Role = Literal["ingress", "egress", "sidecar"]


@dataclass(frozen=True)
class ProcessConfig:
    """One Envoy: name like ``payments/ingress`` or ``payments/sidecar/cards/tokenizer``."""

    name: str
    mesh: str
    role: Role
    admin_socket: str
    """Path of the unix socket of its admin endpoint (mode 0600; never a TCP port)."""
    clusters: list[Resource]
    """CDS resources (each with its ``@type``); write these first."""
    listeners: list[Resource]
    """LDS resources; write these after Envoy has applied the clusters."""
    spiffe_id: str | None
    """Identity of the certificate served as SDS secret ``default``; None: needs no cert."""
    trust: dict[str, Resource] = field(default_factory=dict)
    """SDS validation secrets by name -> the CertificateValidationContext to serve (write each
    with ``files.validation_secret(name, value)``)."""
    workload: str | None = None
    """For sidecars: ``<namespace>/<name>``."""
    max_connections: int = 10000
    """Downstream connections this Envoy holds at once, all listeners together (its admin
    endpoint aside): the overload manager closes any above it at accept."""
    listener_caps: dict[str, int] = field(default_factory=dict)
    """Per listener name, the connections it holds at once (Envoy's runtime
    ``envoy.resource_limits.listener.<name>.connection_limit``)."""
    internal_listeners: bool = False
    """Whether listeners may be internal ones (the bootstrap extension they need)."""
    extensions: dict[str, Resource] = field(default_factory=dict)
    """Filter configurations the listeners load through ECDS, by resource name -> the
    ``typed_config`` to serve (write each with ``files.extension_config(name, value)``, before
    the listeners that name it)."""

    @property
    def sds_names(self) -> list[str]:
        """Every SDS secret this process reads, each from its own file ``<name>.json``."""
        return (["default"] if self.spiffe_id else []) + sorted(self.trust)
