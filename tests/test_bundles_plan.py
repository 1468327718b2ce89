"""A followed peer's bundle is trust material like the PKI's roots: the plan takes it, and every
place that trusts the peer follows it (Istio ingress cross-certificates, meshConfig
caCertificates); a partner mesh gets nothing rendered; bad spec fields are refused."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509

from meshfed.bundles import document
from meshfed.bundles.config import followed, published
from meshfed.bundles.errors import BundleError
from meshfed.bundles.model import SpiffeBundle
from meshfed.bundles.state import PeerBundles
from meshfed.cli.main import main
from meshfed.examples import example_path
from meshfed.pki.certs import fingerprint, is_cross_certificate, permitted_uri_domains
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.workspace import open_workspace
from test_bundles_endpoint import pki, roots_of

NOW = datetime.now(UTC)


def _acme(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "acme.yaml"
    spec.write_text(example_path("acme").read_text())
    return spec, tmp_path / "state"


def _keep(state: Path, roots: tuple[x509.Certificate, ...], seq: int) -> None:
    bundle = SpiffeBundle("globex.example", roots, seq, 1)
    PeerBundles(state).accept("globex", bundle, document.encode(bundle), "https://x", NOW)


def _render(spec: Path, state: Path, out: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        main, ["render", str(spec), "--state", str(state), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    docs: dict[str, Any] = {}
    for path in out.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                name = doc.get("metadata", {}).get("name")
                docs[f"{path.relative_to(out)}:{doc.get('kind')}:{name}"] = doc
    return docs


def _pems(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode())


def test_followed_bundle_flows_into_cross_certificates_and_ca_certificates(
    tmp_path: Path,
) -> None:
    spec, state = _acme(tmp_path)
    globex = pki(tmp_path / "globex", "globex", "globex.example")
    old_root = roots_of(globex)[0]
    new_root = roots_of(pki(tmp_path / "globex-next", "globex", "globex.example"))[0]
    # Before any bundle is accepted: a clear error, nothing guessed.
    result = CliRunner().invoke(main, ["render", str(spec), "--state", str(state), "--out",
                                       str(tmp_path / "out0")])  # fmt: skip
    assert result.exit_code == 1 and "meshfed trust fetch" in result.output
    assert "Traceback" not in result.output
    # During globex's rotation its bundle holds both roots: both are trusted, each only for
    # globex.example.
    _keep(state, (old_root, new_root), 2)
    docs = _render(spec, state, tmp_path / "out1")
    assert not any(k.startswith("globex/") for k in docs)  # a partner: nothing rendered
    cred = next(v for k, v in docs.items() if k.endswith(":Secret:federation-ingress-credential")
                or "ingress-credential" in k)  # fmt: skip
    ca = _pems(base64.b64decode(cred["data"]["ca.crt"]).decode())
    crosses = [c for c in ca if is_cross_certificate(c)]
    assert {c.public_key().public_bytes(*_spki()) for c in crosses} == {
        r.public_key().public_bytes(*_spki()) for r in (old_root, new_root)
    }
    assert all(permitted_uri_domains(c) == ["globex.example"] for c in crosses)
    assert fingerprint(old_root) not in {fingerprint(c) for c in ca}  # never the root itself
    operator = next(v for k, v in docs.items() if k.endswith(":IstioOperator:meshfed-acme"))
    entries = operator["spec"]["meshConfig"]["caCertificates"]
    assert [(fingerprint(_pems(e["pem"])[0]), e["trustDomains"]) for e in entries] == [
        (fingerprint(old_root), ["globex.example"]),
        (fingerprint(new_root), ["globex.example"]),
    ]
    # globex drops its old root: so does everything of acme that trusted it.
    _keep(state, (new_root,), 3)
    docs = _render(spec, state, tmp_path / "out2")
    operator = next(v for k, v in docs.items() if k.endswith(":IstioOperator:meshfed-acme"))
    entries = operator["spec"]["meshConfig"]["caCertificates"]
    assert [fingerprint(_pems(e["pem"])[0]) for e in entries] == [fingerprint(new_root)]
    cred = next(v for k, v in docs.items() if "ingress-credential" in k)
    ca = _pems(base64.b64decode(cred["data"]["ca.crt"]).decode())
    crosses = [c for c in ca if is_cross_certificate(c)]
    assert len(crosses) == 1
    # The plan's bundles carry the followed roots; acme's own stays its held root.
    plan = open_workspace(spec, state).plan
    acme = plan.mesh("acme")
    assert [(b.name, b.trust_domains) for b in acme.workload_trust] == [
        ("acme", ("acme.example",)),
        ("globex", ("globex.example",)),
    ]
    assert [p.name for p in plan.partners] == ["globex"]


def test_pki_init_needs_no_partner_bundle_and_names_the_fetch(tmp_path: Path) -> None:
    """``pki init`` makes this state directory's CAs (nothing of a partner's is needed for
    that) and names the exact ``trust fetch`` that ``render``/``up``/``apply`` need first;
    those fail with the same command and leave the state directory as it was."""
    spec, state = _acme(tmp_path)
    fetch = f"meshfed trust fetch {spec} --state {state}"
    render = CliRunner().invoke(main, ["render", str(spec), "--state", str(state), "--out",
                                       str(tmp_path / "out")])  # fmt: skip
    assert render.exit_code == 1 and "Traceback" not in render.output
    assert f"(fix: run {fetch} once the peer's bundle endpoint https://127.0.0.1:18444/" in (
        render.output
    )
    assert not state.exists() and not (tmp_path / "out").exists()  # nothing written
    init = CliRunner().invoke(main, ["pki", "init", str(spec), "--state", str(state)])
    assert init.exit_code == 0, init.output
    out = " ".join(init.output.split())
    assert "│ acme │ acme.example │ acme │" in init.output
    assert (
        "note: acme follow(s) the bundle of globex (globex.example), not fetched yet: render, "
        f"up and apply need it; run {fetch} once the peer's bundle endpoint "
        "https://127.0.0.1:18444/globex is reachable"
    ) in out
    assert "PRIVATE KEY" not in init.output
    key = state / "pki" / "acme" / "ca-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    held = key.read_bytes()
    # Once a bundle is kept: no note, the same CAs (idempotent), and render works.
    _keep(state, roots_of(pki(tmp_path / "globex", "globex", "globex.example")), 1)
    again = CliRunner().invoke(main, ["pki", "init", str(spec), "--state", str(state)])
    assert again.exit_code == 0 and "note:" not in again.output, again.output
    assert key.read_bytes() == held
    assert _render(spec, state, tmp_path / "out")


def _spki() -> tuple[Any, Any]:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def test_config_of_the_examples() -> None:
    acme = parse_spec(example_path("acme").read_text(), "acme.yaml")
    [pub] = published(acme)
    assert (pub.name, pub.endpoint.profile, pub.refresh_hint) == ("acme", "https_spiffe", 60)
    [peer] = followed(acme, Path("/specs"))
    assert peer.name == "globex" and peer.followers == ("acme",)
    assert peer.bootstrap is not None and peer.bootstrap.file == Path("/specs/globex-bundle.json")


def _problems(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "s.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("follows: [globex]", "follows: []"), "add globex to meshes[0].follows"),
        (("follows: [globex]", "follows: [nope]"), "no mesh named 'nope'"),
        (("follows: [globex]", "follows: [acme]"), "does not follow its own bundle"),
        (("https://127.0.0.1:18443/acme", "http://127.0.0.1:18443/acme"), "must use https"),
        (("https://127.0.0.1:18443/acme", "https://u:p@127.0.0.1:18443/acme"), "userinfo"),
        (("        spiffeId: spiffe://acme.example/meshfed/bundle-endpoint\n", ""),
         "needs the SPIFFE ID"),
        (("spiffe://acme.example/meshfed/bundle-endpoint", "spiffe://acme.example/a/../b"),
         "path segment"),
        (("spiffe://acme.example/meshfed/bundle-endpoint", "spiffe://other.example/x"),
         "no mesh's of this spec"),
        (("profile: https_spiffe\n        spiffeId: spiffe://acme",
          "profile: https_web\n        spiffeId: spiffe://acme"), "https_spiffe only"),
        (("mode: Federated", "mode: SharedRoot"), "partner mesh keeps its own root"),
        (("      partner: true\n", "      partner: true\n      kubernetes: {context: x}\n"),
         "applies nothing to partner mesh"),
        (("https://127.0.0.1:18444/globex", "https://127.0.0.1:18443/acme"), None),
    ],
)  # fmt: skip
def test_bundle_fields_are_checked(edit: tuple[str, str], expected: str | None) -> None:
    text = example_path("acme").read_text()
    assert edit[0] in text
    edited = text.replace(edit[0], edit[1], 1)
    if expected is None:
        parse_spec(edited, "s.yaml")  # a partner's endpoint is not served here: no clash
        return
    assert expected in _problems(edited)


def test_two_local_https_spiffe_endpoints_on_one_address_are_refused() -> None:
    lines = example_path("acme").read_text().splitlines(keepends=True)
    text = "".join(x for x in lines if "partner: true" not in x and "bootstrapBundle" not in x)
    text = text.replace("https://127.0.0.1:18444/globex", "https://127.0.0.1:18443/globex")
    assert "one address presents one SVID" in _problems(text)


def test_bundle_error_is_a_pki_error_for_every_command() -> None:
    from meshfed.pki.errors import PKIError

    assert issubclass(BundleError, PKIError)


def test_an_empty_bundle_revokes_all_trust_in_the_peer(tmp_path: Path) -> None:
    """SPIFFE bundle 4.1.3: an empty key set means every key is revoked."""
    spec, state = _acme(tmp_path)
    root = roots_of(pki(tmp_path / "globex", "globex", "globex.example"))[0]
    _keep(state, (root,), 1)
    acme = open_workspace(spec, state).plan.mesh("acme")
    assert "globex" in [b.name for b in acme.ingress.trusted]
    _keep(state, (), 2)
    acme = open_workspace(spec, state).plan.mesh("acme")
    assert [b.name for b in acme.ingress.trusted] == []
    assert [b.name for b in acme.workload_trust] == ["acme"]
    assert all(b.name != "globex" for r in acme.imports for b in r.trusted)
