"""The open-file limit the local Envoys need to reach the plan's connection caps.

Each proxied connection costs Envoy one descriptor downstream and (TCP exports, tunnels) one
upstream, so a proxy capped at N connections needs about 2N descriptors
(`meshfed.plan.limits.MeshLimits.descriptors_needed`). Envoys inherit the limit of the process
that starts them: this raises the soft limit of the running process, up to the hard limit, before
any Envoy starts, and says so when the hard limit is lower (the caps then cannot be reached:
Envoy stops accepting at the descriptor limit instead of closing over the cap).
"""

from __future__ import annotations

import resource

__all__ = ["raise_open_files"]


def raise_open_files(needed: int) -> list[str]:
    """Raise this process's soft open-file limit to ``needed`` if it is lower (children inherit
    it); notes for the user if the hard limit does not allow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return []
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        return [
            f"open-file limit is {target} (hard limit), below the {needed} the gateways' "
            "connection caps need: an Envoy runs out of descriptors before its cap "
            f"(raise it with `ulimit -Hn {needed}` as root, or in limits.conf)"
        ]
    return []
