"""What ``meshfed render`` would write for a valid spec, as audit objects (in memory, no keys).

Rendering needs no trust material for the objects audited here: roots and keys only end up in
Secrets, which are left out (the PKI state is audited from the state directory instead). Lines
are those of the files ``meshfed render`` writes, so findings point into its output.
"""

from __future__ import annotations

from meshfed.audit.sources.manifests import Doc, docs_from_text
from meshfed.plan.model import FederationPlan
from meshfed.sinks.yaml_out import dump_all
from meshfed.workspace import preview_istio


def rendered_docs(plan: FederationPlan) -> list[Doc]:
    """Every non-Secret object of every mesh, named ``<mesh>/<file>`` as render writes it."""
    docs: list[Doc] = []
    for rendered in preview_istio(plan):
        files = {
            **rendered.files,
            **rendered.install_files,
            **{f"secrets/{name}": objs for name, objs in rendered.secret_files.items()},
        }
        for name, objects in sorted(files.items()):
            parsed = docs_from_text(dump_all(objects), f"{rendered.mesh}/{name}", rendered.mesh)
            docs += [d for d in parsed if d.kind != "Secret"]
    return docs
