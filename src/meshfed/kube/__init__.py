"""meshfed on real Kubernetes clusters: apply, diff, prune, discovery and remote secrets.

Data still flows one way: the spec and plan decide, ``render/istio`` builds the objects, and
this package only puts them on clusters (server-side apply, field manager ``meshfed``).
"""

# The public face, loaded on first use (the Kubernetes client is imported only when needed).
from typing import TYPE_CHECKING

from meshfed._face import lazy_face

if TYPE_CHECKING:
    from meshfed.kube.client import KubeClient
    from meshfed.kube.errors import ApplyRefused, KubeError
    from meshfed.kube.workspace import KubeWorkspace, open_kube_workspace

__all__ = ["ApplyRefused", "KubeClient", "KubeError", "KubeWorkspace", "open_kube_workspace"]

__getattr__ = lazy_face(
    __name__,
    {
        "ApplyRefused": "meshfed.kube.errors",
        "KubeClient": "meshfed.kube.client",
        "KubeError": "meshfed.kube.errors",
        "KubeWorkspace": "meshfed.kube.workspace",
        "open_kube_workspace": "meshfed.kube.workspace",
    },
)
