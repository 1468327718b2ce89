"""How meshfed's own import probes are told from callers' traffic at every hop they cross.

Local federation only (Istio's meshes run no meshfed probes); the local runtime's probe ledger
(``local/prober.py``) vouches for each mark. An HTTP probe carries its mark in a request header,
which the gateways that read HTTP log; the egress gateway passes TLS through and reads no header,
so what it logs of a probe is the connection that carried it, and that connection must be the
probe's alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshfed.plan.names import PROBE_HEADER

__all__ = ["ProbeMarking"]


@dataclass(frozen=True)
class ProbeMarking:
    """What marks a probe, and what a consumer's sidecar does with a marked request."""

    header: str = PROBE_HEADER
    """Request header carrying a probe's mark (a token the ledger records before it is sent)."""
    own_connection: bool = True
    """A request carrying ``header`` leaves the consumer's sidecar on an upstream connection of
    its own: one request per connection, never pooled with the workload's calls, not retried
    by the sidecar (the probe retries itself, each attempt with a fresh mark); the sidecar logs
    it with that connection's addresses. So the egress gateway's line of that connection ties
    to the mark, hop by hop as a TCP probe's does. The path is otherwise the workload's own:
    the same route, TLS, SNI and server identities. A workload that sends the header itself
    only gets the same (its mark is not in the ledger: nothing of it is counted as meshfed's)."""
