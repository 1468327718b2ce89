"""A mesh's ingress address: an IP address or DNS name, or left to the federation-ingress
load balancer of a mesh whose cluster the spec names (read by the Kubernetes commands and the
controller)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from meshfed.spec.errors import Problem
from meshfed.spec.model import Mesh


def check_address(
    mesh: Mesh, path: tuple[str | int, ...], discovery_pending: bool = False
) -> Iterator[Problem]:
    address = mesh.ingress.address
    if address is None:
        if not mesh.in_cluster:
            yield Problem(
                (*path, "ingress", "address"),
                "the ingress address is omitted, but the mesh names no cluster to read it from",
                "set ingress.address, or kubernetes.context / clusters so it is read from the "
                "federation-ingress load balancer",
            )
        elif not discovery_pending:
            yield Problem(
                (*path, "ingress", "address"),
                f"mesh {mesh.name!r} leaves its ingress address to its load balancer, which only "
                "the Kubernetes commands (apply, diff, discover, the controller) read",
                "set ingress.address, or use meshfed apply/diff or the controller",
            )
        return
    try:
        ipaddress.ip_address(address)
        return
    except ValueError:
        pass
    if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", address):
        yield Problem(
            (*path, "ingress", "address"),
            f"{address!r} is neither an IP address nor a DNS name",
            "use the IP address or host name peers reach this mesh's ingress on",
        )
