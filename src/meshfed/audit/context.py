"""Everything a check may look at, gathered once per audit."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal

from meshfed.audit.sources.certs import CertRecord, secret_certificates, state_certificates
from meshfed.audit.sources.manifests import Doc, LoadProblem, group_by_scope, scope_name
from meshfed.audit.sources.spec import SpecSource
from meshfed.plan.model import FederationPlan

Mode = Literal["spec", "manifests"]


@dataclass(frozen=True)
class AuditOptions:
    now: datetime
    """Timezone-aware time certificates are judged at."""
    window: timedelta | None = None
    """Rotation window: a certificate is due this long before it expires. None: a third of its
    lifetime (when meshfed renews its gateway certificates)."""
    production: bool = False
    """Loopback addresses at the boundary are findings too."""


class NotAssessed(Exception):
    """Raised by a check that has nothing to look at; the message says why."""


@dataclass
class AuditContext:
    mode: Mode
    options: AuditOptions
    docs: tuple[Doc, ...] = ()
    """Objects: from the manifest tree, or (spec mode) as ``meshfed render`` would write them."""
    spec: SpecSource | None = None
    plan: FederationPlan | None = None
    """Spec mode, when the spec validates: its plan (without trust material), which the
    rendered objects were translated from."""
    state_dir: Path | None = None
    """Spec mode: the PKI state directory, when it exists."""
    root: Path | None = None
    """Manifests mode: the audited tree."""
    files: tuple[Path, ...] = ()
    load_problems: tuple[LoadProblem, ...] = ()
    docs_note: str = "no Kubernetes objects were found"
    _scopes: dict[str, list[Doc]] | None = field(default=None, repr=False)

    def scopes(self) -> dict[str, list[Doc]]:
        """Objects per cluster (manifests: directory scope; spec mode: per mesh)."""
        if self._scopes is None:
            self._scopes = group_by_scope(self.docs)
        return self._scopes

    def scope_name(self, scope: str) -> str:
        return scope_name(scope, self.root)

    def require_docs(self) -> None:
        if not self.docs:
            raise NotAssessed(self.docs_note)

    @cached_property
    def certificates(self) -> list[CertRecord]:
        if self.mode == "spec":
            return state_certificates(self.state_dir) if self.state_dir else []
        return secret_certificates(self.docs)

    def certificate_source(self) -> str:
        """What certificates were looked for in, for a 'not assessed' note."""
        if self.mode == "spec":
            if self.state_dir is None:
                return "no PKI state directory (pass --state, or run `meshfed pki init`)"
            return f"no certificates under {self.state_dir / 'pki'}"
        return "no Secret in the manifests holds a PEM certificate"
