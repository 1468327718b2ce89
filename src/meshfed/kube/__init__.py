"""meshfed on real Kubernetes clusters: apply, diff, prune, discovery and remote secrets.

Data still flows one way: the spec and plan decide, ``render/istio`` builds the objects, and
this package only puts them on clusters (server-side apply, field manager ``meshfed``).
"""
