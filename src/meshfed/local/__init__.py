"""The local federation: every mesh of a spec on this machine, on real Envoy processes.

A sink of the plan: ``render/envoy`` turns the plan into Envoy configuration; this package
allocates ports, issues workload certificates, writes the watched xDS files, runs and watches the
processes (Envoys and one workload host), and answers ``status``, ``call`` and ``logs``.
"""

# The public face, loaded on first use: importing one module of the package (the dashboard
# process reads only paths and summaries) must not load the runtime and its Envoy machinery.
from typing import TYPE_CHECKING

from meshfed._face import lazy_face

if TYPE_CHECKING:
    from meshfed.local.errors import LocalError
    from meshfed.local.paths import RuntimePaths
    from meshfed.local.runtime import Runtime
    from meshfed.local.summary import RuntimeSummary, load_summary

__all__ = ["LocalError", "Runtime", "RuntimePaths", "RuntimeSummary", "load_summary"]

__getattr__ = lazy_face(
    __name__,
    {
        "LocalError": "meshfed.local.errors",
        "Runtime": "meshfed.local.runtime",
        "RuntimePaths": "meshfed.local.paths",
        "RuntimeSummary": "meshfed.local.summary",
        "load_summary": "meshfed.local.summary",
    },
)
