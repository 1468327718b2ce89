"""Trust rotation without a running federation: the state machine, bundles, render, abort,
resume after an interruption, and the renewer (see docs/rotation.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography import x509

from local_helpers import TEST_ADMIN
from meshfed.examples import example_path
from meshfed.local.certs import Renewer, identity_for, kept_identity
from meshfed.local.files import read_json
from meshfed.local.layout import allocate_layout
from meshfed.local.xds import EnvoyFiles, secrets_for
from meshfed.pki.certs import (
    CLOCK_SKEW,
    fingerprint,
    issued_at,
    load_certs_pem,
    renewal_time,
)
from meshfed.pki.errors import PKIError
from meshfed.pki.record import FORWARD_STEPS, read_record
from meshfed.pki.verify import verify_chain
from meshfed.plan.trust import root_pems
from meshfed.render.envoy import render_local
from meshfed.rotation import machine
from meshfed.rotation.describe import describe_record
from meshfed.rotation.machine import RotationError, Rotator
from meshfed.workspace import Workspace, open_workspace

BANK = example_path("bank")
PARTNERS = example_path("partners")


def cli() -> click.Group:
    from meshfed.cli.main import main

    if "rotate" not in main.commands:
        from meshfed.cli.rotate import register

        register(main)
    return main


def _pems(text: str) -> list[x509.Certificate]:
    return load_certs_pem(text.encode(), "test")


def _fps(ws: Workspace) -> dict[str, str]:
    out = {f"root:{n}": fingerprint(c) for n, c in ws.pki.roots.items()}
    out.update({m: fingerprint(ca.ca_cert) for m, ca in ws.pki.meshes.items()})
    return out


def _secret(rendered: dict, name: str, key: str) -> str:  # type: ignore[type-arg]
    import base64

    return base64.b64decode(rendered[name][0]["data"][key]).decode()


def _render(ws: Workspace, mesh: str) -> dict:  # type: ignore[type-arg]
    rendered = ws.istio_mesh(mesh)
    return {**rendered.secret_files, **rendered.install_files}


@pytest.fixture
def bank_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    open_workspace(BANK, state)
    return state


def test_root_rotation_steps_one_at_a_time(bank_state: Path) -> None:
    before = open_workspace(BANK, bank_state)
    old_root = before.pki.roots["root"]
    rotator = Rotator(bank_state, BANK)
    record = rotator.start("root", None)
    assert record.meshes == ["payments", "payments-dr", "web"] and record.steps == list(
        FORWARD_STEPS
    )

    rotator.run(record, single=True)  # prepare: new material, nothing trusted yet
    assert record.done == ["prepare"] and record.next_step == "trust"
    ws = open_workspace(BANK, bank_state)
    assert _fps(ws) == _fps(before)
    assert len(_pems(root_pems(ws.pki)["web"])) == 1

    rotator.run(record, until="verify-overlap")
    assert record.done == ["prepare", "trust", "propagate", "verify-overlap"]
    ws = open_workspace(BANK, bank_state)
    assert _fps(ws) == _fps(before)  # the old CA still signs
    new_root = rotator.store.generation_root(record, "new")
    for mesh in ws.plan.meshes:
        # Every bundle of the plan carries both roots (old first), no special case needed.
        for bundle in (*mesh.workload_trust, *mesh.local_trust, *mesh.ingress.trusted):
            assert _pems(bundle.pem) == [old_root, new_root]
        secrets = _render(ws, mesh.name)
        assert _pems(_secret(secrets, "cacerts.yaml", "root-cert.pem")) == [old_root, new_root]
        chain = _pems(_secret(secrets, "cacerts.yaml", "cert-chain.pem"))
        assert chain == [ws.pki.meshes[mesh.name].ca_cert, old_root]
        operator = secrets["istio-operator.yaml"][0]
        assert operator["spec"]["values"]["pilot"]["env"]["ISTIO_MULTIROOT_MESH"] == "true"
        if mesh.ingress.trusted:
            ca_crt = _pems(_secret(secrets, "ingress-credential.yaml", "ca.crt"))
            assert ca_crt == [old_root, new_root]
        assert (bank_state / f"pki/{mesh.name}/root-cert.pem").read_bytes().count(b"BEGIN") == 2

    rotator.run(record, until="switch")
    ws = open_workspace(BANK, bank_state)
    assert ws.pki.roots["root"] == new_root
    assert all(fingerprint(ca.root_cert) == fingerprint(new_root) for ca in ws.pki.meshes.values())
    assert ws.pki.anchors("root") == (old_root, new_root)  # a switch leaves bundles as they are
    secrets = _render(ws, "payments")
    chain = _pems(_secret(secrets, "cacerts.yaml", "cert-chain.pem"))
    assert chain == [ws.pki.meshes["payments"].ca_cert, new_root]
    assert (
        "payments intermediate CA 2" in ws.pki.meshes["payments"].ca_cert.subject.rfc4514_string()
    )

    result = rotator.run(record)
    assert result.finished and [s.step for s in result.steps] == ["reissue", "verify", "retire"]
    assert rotator.status() is None
    ws = open_workspace(BANK, bank_state)
    assert root_pems(ws.pki)["web"].count("BEGIN") == 1
    assert ws.pki.anchors("root") == (new_root,)
    assert not (bank_state / "pki/_rotation").exists()
    (past,) = rotator.history()
    assert past.outcome == "completed" and past.done == list(FORWARD_STEPS)
    # The old root is gone from every bundle: a certificate chained to it is refused.
    _, old_leaf = before.pki.meshes["web"].issue(
        "spiffe://web.bank.example/ns/shop/sa/checkout", timedelta(hours=1), datetime.now(UTC)
    )
    with pytest.raises(PKIError, match="chain verification failed"):
        verify_chain(
            old_leaf, [before.pki.meshes["web"].ca_cert], list(ws.pki.anchors("root")),
            datetime.now(UTC),
        )  # fmt: skip
    # The gateway certificate render serves was reissued from the new intermediate.
    secrets = _render(ws, "payments")
    leaf, inter = _pems(_secret(secrets, "ingress-credential.yaml", "tls.crt"))
    assert inter == ws.pki.meshes["payments"].ca_cert
    verify_chain(leaf, [inter], [new_root], datetime.now(UTC), purpose="server")
    # No key of the old generation is left anywhere.
    keys = {p.read_bytes() for p in (bank_state / "pki").rglob("*-key.pem")}
    from meshfed.pki.keys import key_to_pem

    assert key_to_pem(before.pki.meshes["web"].ca_key) not in keys
    open_workspace(BANK, bank_state)  # the state stays loadable


def test_intermediate_rotation_keeps_the_root(bank_state: Path) -> None:
    before = open_workspace(BANK, bank_state)
    result = Rotator(bank_state, BANK).run(Rotator(bank_state, BANK).start("intermediate", "web"))
    assert result.finished
    ws = open_workspace(BANK, bank_state)
    assert ws.pki.roots == before.pki.roots
    assert ws.pki.meshes["payments"].ca_cert == before.pki.meshes["payments"].ca_cert
    new = ws.pki.meshes["web"].ca_cert
    assert new != before.pki.meshes["web"].ca_cert
    secrets = _render(ws, "web")
    assert _pems(_secret(secrets, "cacerts.yaml", "ca-cert.pem")) == [new]
    assert _pems(_secret(secrets, "cacerts.yaml", "root-cert.pem")) == [before.pki.roots["root"]]
    assert _pems(_secret(secrets, "cacerts.yaml", "cert-chain.pem")) == [
        new,
        before.pki.roots["root"],
    ]
    state = json.loads((bank_state / "pki/state.json").read_text())
    assert state["meshes"]["web"]["ca_fingerprint"] == fingerprint(new)


def test_federated_root_rotation_reaches_the_peers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = open_workspace(PARTNERS, state)
    rotator = Rotator(state, PARTNERS)
    with pytest.raises(PKIError, match="pass --mesh"):
        rotator.start("root", None)
    record = rotator.start("root", "globex")
    assert record.meshes == ["globex"] and record.root == "globex"
    rotator.run(record, until="trust")
    ws = open_workspace(PARTNERS, state)
    old, new = before.pki.roots["globex"], rotator.store.generation_root(record, "new")
    # acme imports from globex: its peers file and meshConfig carry both globex roots, each
    # bound to globex's trust domain only; acme's own root is untouched.
    assert _pems((state / "pki/acme/peers/globex.pem").read_text()) == [old, new]
    assert ws.pki.anchors("acme") == (before.pki.roots["acme"],)
    operator = _render(ws, "acme")["istio-operator.yaml"][0]
    entries = [
        (e["trustDomains"], _pems(e["pem"]))
        for e in operator["spec"]["meshConfig"]["caCertificates"]
    ]
    assert (["globex.example"], [old]) in entries and (["globex.example"], [new]) in entries
    globex_secrets = _render(ws, "globex")
    assert _pems(_secret(globex_secrets, "cacerts.yaml", "root-cert.pem")) == [old, new]
    # globex's ingress trusts acme (its consumer) only: acme's root, unchanged, through its
    # anchor's cross-certificate.
    anchor, cross = _pems(_secret(globex_secrets, "ingress-credential.yaml", "ca.crt"))
    assert cross.subject == before.pki.roots["acme"].subject
    assert cross.public_key() == before.pki.roots["acme"].public_key()
    cross.verify_directly_issued_by(anchor)
    assert rotator.run(record).finished
    ws = open_workspace(PARTNERS, state)
    assert _pems((state / "pki/acme/peers/globex.pem").read_text()) == [new]
    operator = _render(ws, "acme")["istio-operator.yaml"][0]
    globex_entries = [
        e
        for e in operator["spec"]["meshConfig"]["caCertificates"]
        if e["trustDomains"] == ["globex.example"]
    ]
    assert [_pems(e["pem"]) for e in globex_entries] == [[new]]


@pytest.mark.parametrize("until", ["prepare", "verify-overlap", "switch", "verify"])
def test_abort_restores_the_old_generation(bank_state: Path, until: str) -> None:
    before = open_workspace(BANK, bank_state)
    files_before = {
        p.relative_to(bank_state): p.read_bytes()
        for p in (bank_state / "pki").rglob("*.pem")
        if "issued" not in p.parts
    }
    rotator = Rotator(bank_state, BANK)
    record = rotator.start("root", None)
    rotator.run(record, until=until)
    with pytest.raises(RotationError, match="is under way"):
        rotator.start("intermediate", "web")
    result = rotator.abort()
    assert result.finished and result.record.outcome == "aborted"
    assert rotator.status() is None
    ws = open_workspace(BANK, bank_state)
    assert _fps(ws) == _fps(before)
    files_after = {
        p.relative_to(bank_state): p.read_bytes()
        for p in (bank_state / "pki").rglob("*.pem")
        if "issued" not in p.parts
    }
    assert files_after == files_before
    assert not (bank_state / "pki/_rotation").exists()
    _, leaf = ws.pki.meshes["payments"].issue(
        "spiffe://payments.bank.example/ns/a/sa/b", timedelta(hours=1), datetime.now(UTC)
    )
    verify_chain(
        leaf, [ws.pki.meshes["payments"].ca_cert], [ws.pki.roots["root"]], datetime.now(UTC)
    )


def _killed_mid_switch(point: str) -> None:
    if point == "mid-switch":
        raise KeyboardInterrupt  # as good as a kill: nothing after this point runs


def test_an_interrupted_switch_blocks_loads_and_is_finished_by_the_next_run(
    bank_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotator = Rotator(bank_state, BANK)
    record = rotator.start("root", None)

    monkeypatch.setattr(machine, "_hold", _killed_mid_switch)
    with pytest.raises(KeyboardInterrupt):
        rotator.run(record)
    monkeypatch.undo()
    on_disk = read_record(bank_state / "pki")
    assert on_disk is not None and on_disk.running == "switch"
    # The CA files are between generations: nobody may use them until the switch is done.
    with pytest.raises(PKIError, match="switch was interrupted"):
        open_workspace(BANK, bank_state)
    lines = describe_record(on_disk)
    assert any("switch" in line and "INTERRUPTED" in line for line in lines)
    fresh = Rotator(bank_state, BANK)
    result = fresh.run(fresh.start("root", None))
    assert result.finished and result.steps[0].step == "switch"
    ws = open_workspace(BANK, bank_state)
    assert fingerprint(ws.pki.roots["root"]) == on_disk.fingerprints["new"]["root"]
    assert root_pems(ws.pki)["payments"].count("BEGIN") == 1


def test_interrupted_switch_can_be_aborted(
    bank_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = open_workspace(BANK, bank_state)
    rotator = Rotator(bank_state, BANK)
    record = rotator.start("root", None)
    monkeypatch.setattr(machine, "_hold", _killed_mid_switch)
    with pytest.raises(KeyboardInterrupt):
        rotator.run(record)
    monkeypatch.undo()
    result = Rotator(bank_state, BANK).abort()
    assert [s.step for s in result.steps] == [
        "switch-back",
        "reissue-back",
        "untrust-new",
        "verify-back",
        "discard",
    ]
    assert _fps(open_workspace(BANK, bank_state)) == _fps(before)


def test_refusals(bank_state: Path, tmp_path: Path) -> None:
    rotator = Rotator(bank_state, BANK)
    with pytest.raises(PKIError, match="one root for every mesh"):
        rotator.start("root", "web")
    with pytest.raises(PKIError, match="not in the spec"):
        rotator.start("intermediate", "nope")
    record = rotator.start("intermediate", "web")
    with pytest.raises(RotationError, match="not a step"):
        rotator.run(record, until="discard")
    # A rotation under way: no new mesh CA may appear (it would chain to the wrong root later).
    spec = tmp_path / "more.yaml"
    text = BANK.read_text().replace(
        "    - name: web\n",
        "    - name: extra\n      trustDomain: extra.bank.example\n"
        "      ingress: {address: 127.0.0.1, port: 15446}\n"
        "      workloads: [{name: a, namespace: b, serviceAccount: c, port: 8080}]\n"
        "    - name: web\n",
    )
    spec.write_text(text)
    with pytest.raises(PKIError, match=r"rotation .* is under way"):
        open_workspace(spec, bank_state)


def test_cli_rotate_and_status(bank_state: Path) -> None:
    runner = CliRunner()
    args = ["--state", str(bank_state)]
    result = runner.invoke(cli(), ["rotate", "root", str(BANK), *args, "--next"])
    assert result.exit_code == 0, result.output
    assert "prepare: new root" in result.output and "1/8 steps done; next: trust" in result.output
    status = runner.invoke(cli(), ["rotate", "status", *args])
    assert "root rotation" in status.output and "signing: old; trusted: old" in status.output
    result = runner.invoke(cli(), ["rotate", "root", str(BANK), *args, "--step", "switch"])
    assert result.exit_code == 0 and "switch: new CA signs now" in result.output
    result = runner.invoke(cli(), ["rotate", "intermediate", "--mesh", "web", *args])
    assert result.exit_code == 1 and "is under way" in result.output
    result = runner.invoke(cli(), ["rotate", "root", *args])  # the spec comes from the record
    assert result.exit_code == 0, result.output
    assert "completed" in result.output
    status = runner.invoke(cli(), ["rotate", "status", *args])
    assert "no rotation under way" in status.output and "completed" in status.output


def test_renewal_time_counts_from_issue_not_from_the_backdated_start() -> None:
    ws_now = datetime(2026, 3, 1, tzinfo=UTC)
    from meshfed.pki.certs import make_root_ca
    from meshfed.pki.keys import generate_key

    key = generate_key("ECDSA_P256")
    cert = make_root_ca("t", key, timedelta(seconds=30), ws_now)
    assert cert.not_valid_before_utc == ws_now - CLOCK_SKEW
    assert issued_at(cert) == ws_now
    assert renewal_time(cert) == ws_now + timedelta(seconds=20)


def test_renewer_rewrites_due_certificates_atomically(bank_state: Path, tmp_path: Path) -> None:
    ws = open_workspace(BANK, bank_state)
    layout, _ = allocate_layout(ws.plan, None, set(), TEST_ADMIN)
    root = bank_state / "local"
    now = datetime.now(UTC).replace(microsecond=0)  # certificates keep whole seconds
    ttl = timedelta(seconds=30)
    for process in render_local(ws.plan, layout, root):
        if process.spiffe_id is None:
            continue
        ident = identity_for(ws.pki.meshes[process.mesh], process.spiffe_id, ttl, now)
        files = EnvoyFiles(root, process)
        files.write_cold(files.diff(secrets_for(process, (ident.chain_pem, ident.key_pem))))
    renewer = Renewer(bank_state, log=lambda _: None)
    assert renewer.run_once(now + timedelta(seconds=10)) == []
    due, upcoming = renewer.due(now)
    assert not due and upcoming == now + timedelta(seconds=20)
    renewed = renewer.run_once(now + timedelta(seconds=21))
    assert len(renewed) == len([p for p in (root / "envoy").glob("*/sds/default.json")]) > 0
    path = root / "envoy" / "payments_ingress" / "sds" / "default.json"
    doc = read_json(path)
    assert doc["version_info"] == "2"
    chain, _ = kept_identity(doc) or ("", "")
    leaf, inter = _pems(chain)
    assert inter == ws.pki.meshes["payments"].ca_cert
    assert issued_at(leaf) == now + timedelta(seconds=21)
    assert leaf.not_valid_after_utc - issued_at(leaf) == ttl
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_rotation_docs_exist() -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "rotation.md"
    text = doc.read_text()
    for word in ("ISTIO_MULTIROOT_MESH", "meshfed rotate root", "pki sign", "caCertificates"):
        assert word in text


def test_retire_interrupted_after_the_keys_are_gone_is_finished(
    bank_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshfed.pki import rotation as material

    rotator = Rotator(bank_state, BANK)
    record = rotator.start("root", None)
    rotator.run(record, until="verify")
    real_finish = material.finish

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(material, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        rotator.run(record)
    monkeypatch.setattr(material, "finish", real_finish)
    on_disk = read_record(bank_state / "pki")
    assert on_disk is not None and on_disk.running == "retire"
    assert not list((bank_state / "pki/_rotation").glob("*/old/**/*-key.pem"))  # destroyed
    fresh = Rotator(bank_state, BANK)
    assert fresh.run(fresh.start("root", None)).finished
    assert root_pems(open_workspace(BANK, bank_state).pki)["web"].count("BEGIN") == 1


def test_a_changed_workload_ttl_reissues_at_the_next_up(bank_state: Path) -> None:
    ca = open_workspace(BANK, bank_state).pki.meshes["web"]
    sid = "spiffe://web.bank.example/ns/shop/sa/checkout"
    now = datetime.now(UTC)
    first = identity_for(ca, sid, timedelta(hours=24), now)
    kept = {"resources": [{"tls_certificate": {
        "certificate_chain": {"inline_string": first.chain_pem},
        "private_key": {"inline_string": first.key_pem},
    }}]}  # fmt: skip
    assert not identity_for(ca, sid, timedelta(hours=24), now, kept).issued
    # The renewer keeps a certificate's lifetime; a new workloadTTL takes over at `up`.
    assert identity_for(ca, sid, timedelta(hours=1), now, kept).issued
