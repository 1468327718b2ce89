"""The checks, one concept per module. Importing this package registers them all."""

from meshfed.audit.checks import (
    access_logging,
    addresses,
    cert_rotation,
    deny_by_default,
    failover,
    gateway_hosts,
    gateway_tls,
    input_valid,
    key_permissions,
    mtls,
    name_constraints,
    outbound,
    principals,
    trust_domains,
)

__all__ = [
    "access_logging",
    "addresses",
    "cert_rotation",
    "deny_by_default",
    "failover",
    "gateway_hosts",
    "gateway_tls",
    "input_valid",
    "key_permissions",
    "mtls",
    "name_constraints",
    "outbound",
    "principals",
    "trust_domains",
]
