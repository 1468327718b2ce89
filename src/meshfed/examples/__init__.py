"""Example federation specs shipped with meshfed: ``bank.yaml``, ``partners.yaml``, and
``acme.yaml`` with ``globex.yaml`` (two organisations federating by bundle exchange)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def example_path(name: str = "bank") -> Path:
    """The path of a bundled example spec."""
    return Path(str(files(__name__) / f"{name}.yaml"))
