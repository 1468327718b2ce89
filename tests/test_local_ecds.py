"""Ingress RBAC through ECDS on real Envoy: one file per export's filter configuration.

An export with many principals has its RBAC filter configuration in its own watched file
(``ecds/rbac-<sni>.json``), and a TCP export's handshake SAN list sits in its own validation
secret, so the ingress listener stays small: a change of one export's principals rewrites that
export's files only, never the listener. These tests check that it stays as strict as before:
nothing is served on an SNI whose filter configuration Envoy has not loaded, a bad file keeps the
last good configuration, and a live edit of the principals allows and denies exactly as planned.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_helpers import Fed, poll
from meshfed.local import admin
from meshfed.local.client import NoResponse, Response
from meshfed.local.procs import find_envoy
from meshfed.render.envoy.files import process_dir
from meshfed.render.envoy.rbac import HTTP_RBAC
from test_local_authz import LEDGER_SNI, TOKENIZE, TOKENIZER_SNI, _spec

pytestmark = pytest.mark.envoy

INGRESS = "pay/ingress"
CHECKOUT_ID = "ns/shop/sa/checkout"
LEDGER_HOST = "ledger.shop.svc.cluster.local:9000"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("ecds")
    started = Fed.start(_spec(base), base / "state")
    try:
        yield started
    finally:
        started.close()


def _dir(fed: Fed) -> Path:
    return process_dir(fed.runtime.root, INGRESS)


def _ecds(fed: Fed, sni: str) -> Path:
    return _dir(fed) / "ecds" / f"rbac-{sni}.json"


def _files(fed: Fed) -> dict[str, bytes]:
    """Every xDS file of the pay ingress: path relative to its directory -> bytes."""
    base = _dir(fed)
    return {
        str(p.relative_to(base)): p.read_bytes()
        for sub in ("lds", "cds", "sds", "ecds")
        for p in sorted((base / sub).glob("*.json"))
    }


def _edit_principals(fed: Fed, export: str, edit: Any) -> None:
    doc = json.loads(fed.spec.read_text())
    (exp,) = [e for e in doc["spec"]["exports"] if e["name"] == export]
    web = exp["consumers"][0]
    web["principals"] = edit(web["principals"])
    fed.spec.write_text(json.dumps(doc, indent=1))


def _admin_socket(fed: Fed) -> str:
    layout = fed.runtime.layout()
    assert layout is not None
    return layout.meshes["pay"].ingress_admin


def _tokenize(fed: Fed, workload: str = "shop/checkout") -> Response | NoResponse:
    try:
        return fed.call("web", workload, TOKENIZE, "POST", b"4111", timeout=5)
    except NoResponse as exc:
        return exc


def _ledger_greeting(fed: Fed) -> bytes:
    """The ledger's first line through web's checkout sidecar; b"" when the ingress refused."""
    port = fed.sidecar("web", "shop/checkout").tcp_outbound[LEDGER_HOST]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return s.makefile("rb").readline()
    except OSError:
        return b""


def _status(result: Response | NoResponse) -> int | None:
    return result.status if isinstance(result, Response) else None


def _write_renamed(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.rename(tmp, path)


def _invalid(sni: str) -> dict[str, Any]:
    """A filter configuration Envoy rejects: an RBAC policy without permissions or principals
    (each needs at least one)."""
    return {
        "version_info": "bad",
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": f"rbac-{sni}",
                "typed_config": {
                    "@type": HTTP_RBAC,
                    "rules": {"action": "DENY", "policies": {"broken": {}}},
                },
            }
        ],
    }


# --- rendering -----------------------------------------------------------------------------------


def test_big_policies_load_through_ecds_and_the_listener_stays_small(fed: Fed) -> None:
    lds = (_dir(fed) / "lds" / "lds.json").read_text()
    assert "exact_match_map" not in lds
    assert "match_typed_subject_alt_names" not in lds
    http = json.loads(_ecds(fed, TOKENIZER_SNI).read_text())["resources"][0]
    tcp = json.loads(_ecds(fed, LEDGER_SNI).read_text())["resources"][0]
    assert http["typed_config"]["@type"] == HTTP_RBAC
    # A TCP export's RBAC runs in its tunnel's connection manager (render/envoy/tunnel.py).
    assert tcp["typed_config"]["@type"] == HTTP_RBAC
    stats = admin.stats(_admin_socket(fed), r"^extension_config_discovery\..*\.version_text$")
    assert stats == {
        f"extension_config_discovery.http_filter.rbac-{TOKENIZER_SNI}.version_text": "1",
        f"extension_config_discovery.http_filter.rbac-{LEDGER_SNI}.version_text": "1",
    }


# --- live edits ----------------------------------------------------------------------------------


def test_http_principals_edit_rewrites_only_that_exports_filter_file(fed: Fed) -> None:
    before = _files(fed)
    assert _status(_tokenize(fed)) == 200
    _edit_principals(fed, "tokenizer", lambda ps: [p for p in ps if p != CHECKOUT_ID])
    report = fed.reup()
    assert report.ok
    after = _files(fed)
    assert {k for k in after if after[k] != before.get(k)} == {f"ecds/rbac-{TOKENIZER_SNI}.json"}
    assert after["lds/lds.json"] == before["lds/lds.json"]
    # Applied when ``up`` returned: no waiting.
    assert _status(_tokenize(fed)) == 403
    assert _status(_tokenize(fed, "shop/catalog")) == 403

    _edit_principals(fed, "tokenizer", lambda ps: [*ps, CHECKOUT_ID])
    assert fed.reup().ok
    assert _files(fed)["lds/lds.json"] == before["lds/lds.json"]
    assert _status(_tokenize(fed)) == 200
    assert _status(_tokenize(fed, "shop/catalog")) == 403


def test_tcp_principals_edit_rewrites_its_filter_and_handshake_files_only(fed: Fed) -> None:
    before = _files(fed)
    assert _ledger_greeting(fed) != b""
    _edit_principals(fed, "ledger", lambda ps: [p for p in ps if p != CHECKOUT_ID])
    assert fed.reup().ok
    after = _files(fed)
    assert {k for k in after if after[k] != before.get(k)} == {
        f"ecds/rbac-{LEDGER_SNI}.json",
        f"sds/CALLER_CA-{LEDGER_SNI}.json",
    }
    assert _ledger_greeting(fed) == b""  # refused at the handshake: no greeting

    _edit_principals(fed, "ledger", lambda ps: [*ps, CHECKOUT_ID])
    assert fed.reup().ok
    assert _files(fed)["lds/lds.json"] == before["lds/lds.json"]
    assert json.loads(_ledger_greeting(fed)) == {"mesh": "pay", "workload": "cards/ledger"}


def test_a_rejected_filter_file_keeps_the_last_good_configuration(fed: Fed) -> None:
    sock = _admin_socket(fed)
    pattern = r"^extension_config_discovery\..*\.update_rejected$"
    rejected = admin.stats(sock, pattern)
    good = _ecds(fed, TOKENIZER_SNI).read_bytes()
    _write_renamed(_ecds(fed, TOKENIZER_SNI), _invalid(TOKENIZER_SNI))
    assert poll(lambda: admin.stats(sock, pattern) != rejected, timeout=5) is not None
    assert _status(_tokenize(fed)) == 200
    assert _status(_tokenize(fed, "shop/catalog")) == 403
    # The next ``up`` sees the difference and puts the planned file back.
    report = fed.reup()
    assert report.ok and INGRESS in report.updated
    assert _ecds(fed, TOKENIZER_SNI).read_bytes() != good  # a new version of the same content
    assert _status(_tokenize(fed)) == 200


# --- failing closed ------------------------------------------------------------------------------


def _run_ingress_by_hand(fed: Fed, log: Path) -> subprocess.Popen[bytes]:
    """The pay ingress from its files as they are (``up`` would rewrite them first)."""
    argv = [str(find_envoy()), "-c", str(_dir(fed) / "bootstrap.json")]
    argv += ["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    sock = _admin_socket(fed)

    def ready() -> bool:
        try:
            return admin.get(sock, "/ready")[0] == 200
        except admin.AdminError:
            return False

    assert poll(ready, timeout=10) is not None, log.read_text()
    return proc


@pytest.mark.parametrize("broken", ["missing", "invalid"])
def test_nothing_is_served_without_the_filter_configuration(
    fed: Fed, tmp_path: Path, broken: str
) -> None:
    fed.runtime.stop_gateway("pay")
    for sni in (TOKENIZER_SNI, LEDGER_SNI):
        if broken == "missing":
            _ecds(fed, sni).unlink()
        else:
            _write_renamed(_ecds(fed, sni), _invalid(sni))
    proc = _run_ingress_by_hand(fed, tmp_path / "ingress.log")
    try:
        sock = _admin_socket(fed)
        if broken == "missing":
            # A listener naming a missing file is rejected whole: the ingress listens nowhere.
            stats = admin.stats(
                sock, r"^listener_manager\.(lds\.update_rejected|total_listeners_active)$"
            )
            assert stats["listener_manager.lds.update_rejected"] != "0"
            assert stats["listener_manager.total_listeners_active"] == "0"
        else:
            # The listener runs, its filters without configuration: Envoy fails closed.
            stats = admin.stats(
                sock, r"^extension_config_discovery\..*\.(version_text|update_rejected)$"
            )
            assert all(v == "" for k, v in stats.items() if k.endswith("version_text")), stats
            assert all(v != "0" for k, v in stats.items() if k.endswith("update_rejected")), stats
        result = _tokenize(fed)
        assert _status(result) != 200, result
        assert _ledger_greeting(fed) == b""
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    # ``up`` writes the planned files again and starts the ingress: served as before.
    assert fed.reup().ok
    assert _status(_tokenize(fed)) == 200
    assert json.loads(_ledger_greeting(fed)) == {"mesh": "pay", "workload": "cards/ledger"}
