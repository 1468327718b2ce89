"""meshfed: secure multi-mesh federation for Istio."""

__version__ = "0.1.0"
