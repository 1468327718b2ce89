"""The spec: examples are valid, the schema describes them, and bad input is explained."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from meshfed.cli.main import main
from meshfed.spec.duration import format_duration, parse_duration
from meshfed.spec.errors import SpecError
from meshfed.spec.load import parse_spec
from meshfed.spec.principals import PrincipalMatch, parse_principal

from conftest import EXAMPLES

BANK = (EXAMPLES / "bank.yaml").read_text()


def broken(*edits: tuple[str, str], text: str = BANK) -> list[str]:
    """Apply exact text edits to the bank example and return the problems reported."""
    for old, new in edits:
        assert old in text, f"edit target missing: {old!r}"
        text = text.replace(old, new, 1)
    with pytest.raises(SpecError) as info:
        parse_spec(text, "bank.yaml")
    return info.value.lines


def line_of(fragment: str, text: str = BANK) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


@pytest.mark.parametrize("name", ["bank", "partners"])
def test_examples_are_valid(name: str) -> None:
    result = CliRunner().invoke(main, ["validate", str(EXAMPLES / f"{name}.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_published_schema_accepts_examples_and_rejects_typos() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    for name in ("bank", "partners"):
        jsonschema.validate(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()), schema)
    doc = yaml.safe_load(BANK)
    doc["spec"]["meshes"][0]["trustDomian"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_validate_exit_code_and_output_for_broken_spec(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text(BANK.replace("mesh: payments\n", "mesh: paymnts\n", 1))
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:" in result.output
    assert "no mesh named 'paymnts'" in result.output


# Each case: edits to the bank example, then (line fragment, field path, words of message, fix).
CASES = {
    "unknown field": (
        [("network: pci\n", "network: pci\n      netwrok: pci\n")],
        ("netwrok: pci", "spec.meshes[0].netwrok", "unknown field 'netwrok'", "spelling"),
    ),
    "bad DNS label": (
        [("name: payments-dr\n", "name: Payments_DR\n")],
        ("name: Payments_DR", "spec.meshes[1].name", "does not match", "meshfed schema"),
    ),
    "duplicate mesh": (
        [("name: payments-dr\n", "name: payments\n")],
        (25, "spec.meshes[1].name", "already used", "unique name"),
    ),
    "duplicate trust domain": (
        [("trustDomain: web.bank.example", "trustDomain: payments.bank.example")],
        (33, "spec.meshes[2].trustDomain", "already used", "its own trust domain"),
    ),
    "bad duration": (
        [("workloadTTL: 24h", "workloadTTL: 1d")],
        ("workloadTTL: 1d", "spec.trust.workloadTTL", "does not match", "meshfed schema"),
    ),
    "unspecified ingress address": (  # to a listener: every address; to a peer: none
        [("ingress: {address: 127.0.0.1, port: 15443}", "ingress: {address: 0.0.0.0, port: 1}")],
        (
            "address: 0.0.0.0",
            "spec.meshes[0].ingress.address",
            "no address a peer can reach",
            "peers reach",
        ),
    ),
    "multicast ingress address": (
        [("ingress: {address: 127.0.0.1, port: 15443}", "ingress: {address: 'ff02::1', port: 1}")],
        (
            "address: 'ff02::1'",
            "spec.meshes[0].ingress.address",
            "no address a peer can reach",
            "peers reach",
        ),
    ),
    "unknown trust mode": (
        [("mode: SharedRoot", "mode: Shared")],
        ("mode: Shared", "spec.trust.mode", "SharedRoot", "values listed"),
    ),
    "export of missing workload": (
        [("workload: cards/ledger", "workload: cards/ledgr")],
        (
            "workload: cards/ledgr",
            "spec.exports[2].workload",
            "has no workload 'cards/ledgr'",
            "cards/ledger",
        ),
    ),
    "principal of another trust domain": (
        [
            (
                "principals: [spiffe://web.bank.example/ns/shop/sa/checkout]",
                "principals: [spiffe://payments.bank.example/ns/shop/sa/checkout]",
            )
        ],
        (
            "principals: [spiffe://payments",
            "spec.exports[1].consumers[0].principals[0]",
            "belongs to trust domain 'payments.bank.example'",
            "trust domain web.bank.example",
        ),
    ),
    "malformed principal": (
        [
            (
                "principals: [ns/shop/sa/checkout]\n          methods",
                "principals: [shop/checkout]\n          methods",
            )
        ],
        (
            "principals: [shop/checkout]",
            "spec.exports[0].consumers[0].principals[0]",
            "is not a workload identity",
            "mesh 'web'",
        ),
    ),
    "methods on TCP export": (
        [
            (
                "principals: [ns/shop/sa/checkout]\n  imports",
                "principals: [ns/shop/sa/checkout]\n          methods: [GET]\n  imports",
            )
        ],
        ("methods: [GET]", "spec.exports[2].consumers[0].methods", "is TCP", "remove methods"),
    ),
    "lower-case method": (
        [("methods: [POST]", "methods: [post]")],
        (
            "methods: [post]",
            "spec.exports[0].consumers[0].methods[0]",
            "not an HTTP method",
            "upper case",
        ),
    ),
    "relative path": (
        [("paths: [/v1/tokenize]", "paths: [v1/tokenize]")],
        (
            "paths: [v1/tokenize]",
            "spec.exports[0].consumers[0].paths[0]",
            "must start with '/'",
            "/v1/tokenize",
        ),
    ),
    "path with a query": (
        [("paths: [/v1/tokenize]", "paths: [/v1/tokenize?card=1]")],
        (
            "paths: [/v1/tokenize?card=1]",
            "spec.exports[0].consumers[0].paths[0]",
            "holds a query or fragment",
            "write the path alone",
        ),
    ),
    "import source not authorising importer": (
        [
            (
                "        - mesh: web\n          principals: [spiffe",
                "        - mesh: payments\n          principals: [spiffe",
            )
        ],
        (
            "from: [payments/tokenizer, payments-dr",
            "spec.imports[0].from[1]",
            "does not list mesh 'web' as a consumer",
            "add a consumer entry",
        ),
    ),
    "import of unknown export": (
        [("from: [payments/ledger]", "from: [payments/ledgr]")],
        (
            "from: [payments/ledgr]",
            "spec.imports[1].from[0]",
            "no export 'payments/ledgr'",
            "payments/ledger",
        ),
    ),
    "import hijacking a local workload": (
        [("host: ledger.shop.svc.cluster.local", "host: catalog.shop.svc.cluster.local")],
        (
            "host: catalog.shop",
            "spec.imports[1].host",
            "local workload shop/catalog",
            "no workload of the mesh uses",
        ),
    ),
    "two imports with one local name": (
        [("host: ledger.shop.svc.cluster.local", "host: tokenizer.shop.svc.cluster.local")],
        (71, "spec.imports[1].host", "already imports", "its own local host"),
    ),
    "consumer is the exporting mesh": (
        [
            (
                "  - mesh: web\n          principals: [ns/shop/sa/checkout]\n  imports",
                "  - mesh: payments\n          principals: [ns/shop/sa/checkout]\n  imports",
            )
        ],
        (
            "mesh: payments\n          principals: [ns/shop/sa/checkout]\n  imports",
            "spec.exports[2].consumers[0].mesh",
            "its own export",
            "other meshes",
        ),
    ),
    "export host in cluster.local": (
        [("host: tokenizer.payments.global", "host: tokenizer.cards.svc.cluster.local")],
        ("host: tokenizer.cards.svc", "spec.exports[0].host", "mesh-internal name", "public name"),
    ),
    "duplicate YAML key": (
        [("network: dmz\n", "network: dmz\n      network: pci\n")],
        (
            "network: pci\n      ingress: {address: 127.0.0.1, port: 15445}",
            "spec.meshes[2].network",
            "appears twice",
            "keep one",
        ),
    ),
    "workload as meshfed's prober": (
        [
            (
                "{name: catalog, namespace: shop, serviceAccount: catalog,",
                "{name: catalog, namespace: meshfed-system, serviceAccount: meshfed-prober,",
            )
        ],
        (
            "name: catalog",
            "spec.meshes[2].workloads[1].serviceAccount",
            "meshfed-system/meshfed-prober, meshfed's prober identity",
            "namespace of its own",
        ),
    ),
    "workload as a federation gateway": (
        [
            (
                "{name: vault, namespace: cards, serviceAccount: vault,",
                "{name: vault, namespace: meshfed-system, serviceAccount: federation-ingress,",
            )
        ],
        (
            "name: vault",
            "spec.meshes[0].workloads[2].serviceAccount",
            "the identity of the mesh's federation ingress",
            "meshfed-system is meshfed's",
        ),
    ),
    "workload in meshfed's namespace": (
        [("{name: catalog, namespace: shop,", "{name: catalog, namespace: meshfed-system,")],
        (
            "name: catalog",
            "spec.meshes[2].workloads[1].namespace",
            "namespace meshfed-system is meshfed's own",
            "namespace of its own",
        ),
    ),
    "principal naming meshfed's identities": (
        [
            (
                "principals: [ns/shop/sa/checkout]\n  imports",
                "principals: [ns/meshfed-system/sa/meshfed-prober]\n  imports",
            )
        ],
        (
            "principals: [ns/meshfed-system",
            "spec.exports[2].consumers[0].principals[0]",
            "names meshfed's own identities in mesh web",
            "ns/<namespace>/sa/<service account>",
        ),
    ),
    "shared ingress listener": (
        [("port: 15444}", "port: 15443}")],
        (
            "port: 15443}\n      kubernetes: {context: pci-dr",
            "spec.meshes[1].ingress",
            "already the ingress",
            "its own address or port",
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_explained(case: str) -> None:
    edits, (fragment, field, words, fix) = CASES[case]
    lines = broken(*edits)
    text = BANK
    for old, new in edits:
        text = text.replace(old, new, 1)
    if isinstance(fragment, int):
        expected_line = fragment
    elif "\n" in fragment:
        expected_line = text[: text.index(fragment)].count("\n") + 1
    else:
        expected_line = line_of(fragment, text)
    matching = [line for line in lines if f": {field}:" in line]
    assert matching, f"no problem for {field} in {lines}"
    problem = matching[0]
    assert problem.startswith(f"bank.yaml:{expected_line}: "), problem
    assert words in problem
    assert "Fix:" in problem and fix in problem.split("Fix:")[1]


def test_every_problem_is_listed_at_once() -> None:
    lines = broken(
        ("methods: [POST]", "methods: [post]"),
        ("from: [payments/ledger]", "from: [payments/ledgr]"),
        ("paths: [/v1/tokenize]", "paths: [nope]"),
    )
    assert len(lines) == 3
    assert [int(line.split(":")[1]) for line in lines] == sorted(
        int(line.split(":")[1]) for line in lines
    )


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("apiVersion: x\nkind: [unclosed\n", "f.yaml")
    assert info.value.lines[0].startswith("f.yaml:")
    assert "not valid YAML" in info.value.lines[0]


def test_missing_file_is_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "cannot read the spec" in result.output


def test_principals_resolve_against_the_consumer_trust_domain() -> None:
    assert parse_principal("ns/shop/sa/checkout", "web.test") == PrincipalMatch(
        "spiffe://web.test/ns/shop/sa/checkout"
    )
    assert parse_principal("*", "web.test") == PrincipalMatch("spiffe://web.test/", prefix=True)
    assert parse_principal("ns/shop/*", "web.test") == PrincipalMatch(
        "spiffe://web.test/ns/shop/", prefix=True
    )
    match = parse_principal("*", "web.test")
    assert match.matches("spiffe://web.test/ns/a/sa/b")
    assert not match.matches("spiffe://web.test.evil/ns/a/sa/b")
    for bad in ("spiffe://other.test/ns/a/sa/b", "ns/a", "ns/a/sa/b/c", "*/ns/a/sa/b"):
        with pytest.raises(ValueError):
            parse_principal(bad, "web.test")


def test_go_durations() -> None:
    assert parse_duration("87600h").total_seconds() == 87600 * 3600
    assert parse_duration("1h30m").total_seconds() == 5400
    assert parse_duration("250ms").total_seconds() == 0.25
    assert format_duration(parse_duration("1h")) == "3600s"
    for bad in ("", "1d", "h", "10", "1h 30m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
