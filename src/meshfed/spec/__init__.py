"""The federation spec: the YAML model, loading with line numbers, and the semantic checks.

Bad input is a `SpecError` listing every problem as file:line, field, what and how to fix.
"""

from meshfed.spec.errors import Problem, SpecError
from meshfed.spec.load import load_spec, parse_spec
from meshfed.spec.model import Federation
from meshfed.spec.paths import PathError, PathMatch, parse_path
from meshfed.spec.principals import PrincipalMatch, parse_principal

__all__ = [
    "Federation",
    "PathError",
    "PathMatch",
    "PrincipalMatch",
    "Problem",
    "SpecError",
    "load_spec",
    "parse_path",
    "parse_principal",
    "parse_spec",
]
