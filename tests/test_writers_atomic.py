"""Every writer leaves all or nothing: a failed ``pki init`` (or the PKI step of render, apply and
up) leaves no lone lock and no half a CA; ``render --out`` replaces only what meshfed wrote."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import meshfed.pki.store as store_module
from meshfed.cli.main import main
from meshfed.pki import PKIStore
from meshfed.pki.material import MeshTrustRequest
from meshfed.plan.trust import trust_request
from meshfed.sinks.files import MARKER
from meshfed.spec.model import Federation

from conftest import EXAMPLES


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The n-th file the store writes fails, as a full disk would."""
    real = store_module.write_atomic
    calls = {"count": 0}

    def flaky(path: Path, data: bytes, mode: int) -> None:
        calls["count"] += 1
        if calls["count"] == n:
            raise OSError(28, "No space left on device", str(path))
        real(path, data, mode)

    monkeypatch.setattr(store_module, "write_atomic", flaky)


def test_failed_first_pki_init_leaves_nothing(bank: Federation, tmp_path: Path) -> None:
    state = tmp_path / "state"
    req = dataclasses.replace(trust_request(bank), root_ttl=timedelta(days=10**7))
    with pytest.raises((OverflowError, ValueError)):
        PKIStore(state).ensure(req)
    assert not state.exists()  # not even pki/.lock


@pytest.mark.parametrize("failing_write", [1, 2, 4, 7])
def test_pki_init_failing_midway_leaves_nothing(
    bank: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_write: int
) -> None:
    state = tmp_path / "state"
    _fail_on_call(monkeypatch, failing_write)
    with pytest.raises(OSError, match="No space left"):
        PKIStore(state).ensure(trust_request(bank))
    assert not state.exists()
    monkeypatch.undo()
    PKIStore(state).ensure(trust_request(bank))  # and the next run starts clean


def test_adding_a_mesh_that_fails_leaves_the_old_state_as_it_was(
    bank: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    req = trust_request(bank)
    PKIStore(state).ensure(req)
    before = _tree(state)
    bigger = dataclasses.replace(
        req, meshes=(*req.meshes, MeshTrustRequest("audit", "audit.bank.example"))
    )
    _fail_on_call(monkeypatch, 2)
    with pytest.raises(OSError, match="No space left"):
        PKIStore(state).ensure(bigger)
    assert _tree(state) == before
    monkeypatch.undo()
    assert "audit" in PKIStore(state).ensure(bigger).meshes


def _render(tmp_path: Path, spec: Path, out: Path) -> Any:
    args = ["render", str(spec), "--out", str(out), "--state", str(tmp_path / "state")]
    return CliRunner().invoke(main, args)


def test_render_keeps_what_the_user_added_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = EXAMPLES / "bank.yaml"
    assert _render(tmp_path, spec, out).exit_code == 0
    (out / "README.md").write_text("our notes\n")
    (out / "base").mkdir()
    (out / "base" / "kustomization.yaml").write_text("resources: [../payments]\n")
    (out / "payments" / "local-patch.yaml").write_text("# ours\n")
    (out / "empty").mkdir()
    result = _render(tmp_path, spec, out)
    assert result.exit_code == 0, result.output
    assert (out / "README.md").read_text() == "our notes\n"
    assert (out / "base" / "kustomization.yaml").read_text() == "resources: [../payments]\n"
    assert (out / "payments" / "local-patch.yaml").read_text() == "# ours\n"
    assert (out / "empty").is_dir()
    said = " ".join(result.output.split())
    assert "Kept 4 file(s)" in said
    for kept in ("README.md", "base/kustomization.yaml", "payments/local-patch.yaml", "empty/"):
        assert kept in said
    manifest = (out / MARKER).read_text()
    assert "payments/exports.yaml" in manifest
    assert "README.md" not in manifest


def test_render_removes_only_its_own_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bank = (EXAMPLES / "bank.yaml").read_text()
    spec = tmp_path / "bank.yaml"
    spec.write_text(bank)
    assert _render(tmp_path, spec, out).exit_code == 0
    (out / "payments-dr" / "notes.md").write_text("ours\n")
    # payments-dr leaves the federation: its manifests go, the user's note stays.
    fewer = bank.replace("payments-dr/tokenizer", "").replace(", ]", "]")
    start = fewer.index("    - name: payments-dr")
    end = fewer.index("    - name: web")
    fewer = fewer[:start] + fewer[end:]
    start = fewer.index("    - name: tokenizer\n      mesh: payments-dr")
    end = fewer.index("    - name: ledger")
    fewer = fewer[:start] + fewer[end:]
    spec.write_text(fewer)
    result = _render(tmp_path, spec, out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "payments-dr").iterdir()) == ["notes.md"]


def test_render_refuses_to_overwrite_a_user_file_of_its_own_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = EXAMPLES / "bank.yaml"
    assert _render(tmp_path, spec, out).exit_code == 0
    manifest = out / MARKER
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(x for x in lines if x != "web/imports.yaml") + "\n")
    (out / "web" / "imports.yaml").write_text("# hand-edited\n")
    before = _tree(out)
    result = _render(tmp_path, spec, out)
    assert result.exit_code == 1
    assert "was not written by meshfed" in " ".join(result.output.split())
    assert _tree(out) == before


def test_render_over_an_output_with_the_old_marker_keeps_unknown_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = EXAMPLES / "bank.yaml"
    assert _render(tmp_path, spec, out).exit_code == 0
    (out / MARKER).write_text("Written by meshfed render; replaced on every render.\n")
    (out / "README.md").write_text("ours\n")
    assert _render(tmp_path, spec, out).exit_code == 0
    assert (out / "README.md").read_text() == "ours\n"


def test_the_install_settings_moved_out_of_secrets_do_not_linger(tmp_path: Path) -> None:
    """An output an older meshfed wrote (old marker, IstioOperator overlays in ``secrets/``):
    the overlays are meshfed's, so a new render drops them there (they are beside the
    manifests now), and ``kubectl apply -f secrets/`` applies Secrets only."""
    out = tmp_path / "out"
    spec = EXAMPLES / "bank.yaml"
    assert _render(tmp_path, spec, out).exit_code == 0
    (out / MARKER).write_text("Written by meshfed render; replaced on every render.\n")
    for name in ("istio-operator.yaml", "istio-operator-east.yaml"):
        (out / "payments" / "secrets" / name).write_text("kind: IstioOperator\n")
    (out / "payments" / "secrets" / "mine.yaml").write_text("kind: Secret\n")
    result = _render(tmp_path, spec, out)
    assert result.exit_code == 0, result.output
    secrets = sorted(p.name for p in (out / "payments" / "secrets").iterdir())
    assert secrets == ["cacerts.yaml", "ingress-credential.yaml", "mine.yaml"]
    assert (out / "payments" / "istio-operator.yaml").is_file()
    assert "istio-operator" not in result.output.partition("Kept")[2]
