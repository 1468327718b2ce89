"""Envoy's admin endpoints are the federation user's alone (the tryout's attack, replayed).

An admin endpoint stops its Envoy (``POST /quitquitquit``), rewrites its runtime and prints its
configuration, with no authentication. It used to listen on loopback TCP, where every local
process reached it: the tryout stopped payments' ingress that way. Now each listens on a unix
socket, 0600, in a 0700 directory; a state directory too deep for a socket's 107-byte path gets a
private directory of its own elsewhere (``adminsock.py``). The federation here runs from such a
deep state directory, so both the sockets and that fallback are exercised on real Envoy.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from local_helpers import TEST_ADMIN, Fed, cli, numbered_layout, spec_copy
from meshfed.local import admin
from meshfed.local.adminsock import (
    MAX_PATH,
    choose_dir,
    ensure_private_dir,
    socket_name,
)
from meshfed.local.errors import LocalError
from meshfed.local.layout import admin_sockets, layout_from_json
from meshfed.local.ports import ports_held_by
from meshfed.render.envoy.files import bootstrap
from meshfed.render.envoy.translate import render_local
from meshfed.workspace import Workspace, open_workspace

NOBODY = 65534


@contextlib.contextmanager
def _short_dir() -> Iterator[Path]:
    """A 0700 directory with a short path, like ``/run/user/<uid>`` (pytest's are too deep)."""
    path = Path(tempfile.mkdtemp(prefix="mf-run-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    with _short_dir() as path:
        yield path


@pytest.fixture(scope="module")
def bank_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    base = tmp_path_factory.mktemp("admin-bank")
    return open_workspace(spec_copy("bank", base), base / "state")


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- what is rendered and chosen (no Envoy) -------------------------------------------------------


def test_every_bootstrap_puts_admin_on_a_0600_unix_socket(bank_ws: Workspace) -> None:
    layout = numbered_layout(bank_ws.plan)
    processes = render_local(bank_ws.plan, layout, Path("/run/meshfed-test"))
    assert processes
    for process in processes:
        doc = bootstrap(process, Path("/run/meshfed-test"))
        address = doc["admin"]["address"]
        assert address == {"pipe": {"path": process.admin_socket, "mode": 0o600}}, process.name
        assert "socket_address" not in json.dumps(doc["admin"])
    assert {p.admin_socket for p in processes} == admin_sockets(layout)
    assert len(admin_sockets(layout)) == len(processes)


def test_a_short_state_keeps_its_sockets_in_its_own_private_directory(tmp_path: Path) -> None:
    local = tmp_path / "state" / "local"
    local.mkdir(parents=True)
    chosen = choose_dir(local, env={})
    assert chosen == local / "admin" and _mode(chosen) == 0o700
    assert socket_name(chosen, "payments/ingress") == str(chosen / "payments_ingress.sock")


def test_a_deep_state_gets_a_private_directory_under_xdg_runtime_dir(
    tmp_path: Path, runtime_dir: Path
) -> None:
    runtime = runtime_dir
    local = tmp_path / ("d" * 120) / "local"
    chosen = choose_dir(local, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert chosen.parent == runtime / "meshfed"
    assert _mode(chosen) == _mode(chosen.parent) == 0o700
    assert choose_dir(local, env={"XDG_RUNTIME_DIR": str(runtime)}) == chosen  # stable
    other = choose_dir(tmp_path / ("e" * 120) / "local", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert other != chosen  # one directory per federation
    long_name = "mesh-" + "x" * 58 + "/sidecar/" + "n" * 63 + "/" + "w" * 63
    sock = socket_name(chosen, long_name)
    assert len(os.fsencode(sock)) <= MAX_PATH and Path(sock).parent == chosen


def test_without_xdg_runtime_dir_the_fallback_is_per_user_under_tmp(tmp_path: Path) -> None:
    local = tmp_path / ("d" * 120) / "local"
    chosen = choose_dir(local, env={})
    try:
        assert chosen.parent == Path(f"/tmp/meshfed-{os.geteuid()}")
        assert _mode(chosen) == _mode(chosen.parent) == 0o700
        assert os.lstat(chosen.parent).st_uid == os.geteuid()
    finally:
        chosen.rmdir()


def test_a_deep_xdg_runtime_dir_falls_back_to_tmp(tmp_path: Path) -> None:
    runtime = tmp_path / ("r" * 100)
    runtime.mkdir(mode=0o700)
    chosen = choose_dir(tmp_path / ("d" * 120) / "local", env={"XDG_RUNTIME_DIR": str(runtime)})
    try:
        assert chosen.parent == Path(f"/tmp/meshfed-{os.geteuid()}")
    finally:
        chosen.rmdir()


def test_a_symlink_is_never_followed(tmp_path: Path, runtime_dir: Path) -> None:
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    link = tmp_path / "admin"
    link.symlink_to(elsewhere)
    with pytest.raises(LocalError, match="is a symlink") as err:
        ensure_private_dir(link)
    assert f"remove {link}" in (err.value.fix or "")
    # Through choose_dir: a planted XDG level is skipped, never used.
    runtime = runtime_dir
    (runtime / "meshfed").symlink_to(elsewhere)
    chosen = choose_dir(tmp_path / ("d" * 120) / "local", env={"XDG_RUNTIME_DIR": str(runtime)})
    try:
        assert not chosen.is_relative_to(runtime) and not chosen.is_relative_to(elsewhere)
    finally:
        chosen.rmdir()


def test_a_loose_directory_of_ours_is_tightened_and_a_file_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o777)
    ensure_private_dir(loose)
    assert _mode(loose) == 0o700
    (tmp_path / "file").write_text("")
    with pytest.raises(LocalError, match="not a directory"):
        ensure_private_dir(tmp_path / "file")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(LocalError, match=f"belongs to uid {NOBODY}"):
        ensure_private_dir(theirs)


def test_a_layout_of_the_admin_port_era_keeps_its_ports() -> None:
    doc = {
        "version": 1,
        "address": "127.0.0.1",
        "meshes": {
            "pay": {
                "mesh": "pay",
                "ingress_admin_port": 20001,
                "egress_port": 20002,
                "egress_admin_port": 20003,
                "sidecars": {
                    "cards/t": {
                        "workload": "cards/t",
                        "inbound_port": 20004,
                        "outbound_port": 20005,
                        "app_port": 20006,
                        "admin_port": 20007,
                    }
                },
            }
        },
    }
    layout = layout_from_json(doc)
    assert layout is not None
    assert layout.meshes["pay"].egress_port == 20002
    assert layout.meshes["pay"].sidecars["cards/t"].app_port == 20006
    assert admin_sockets(layout) == set()  # the next up gives every Envoy its socket


def test_render_only_layouts_are_under_the_test_directory(bank_ws: Workspace) -> None:
    assert {Path(s).parent for s in admin_sockets(numbered_layout(bank_ws.plan))} == {TEST_ADMIN}


# --- on real Envoy, from a deep state directory ---------------------------------------------------


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fed, Path]]:
    base = tmp_path_factory.mktemp("admin")
    with _short_dir() as runtime, pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(runtime))
        state = base / ("deep-state-" + "s" * 100)
        fed = Fed.start(spec_copy("bank", base), state)
        layout = fed.runtime.layout()
        assert layout is not None
        admin_dir = Path(layout.admin_dir)
        try:
            yield fed, admin_dir
        finally:
            fed.close()
        # down took the sockets and the fallback directory away (the base stays).
        assert not admin_dir.exists() and admin_dir.parent.is_dir()


@pytest.mark.envoy
def test_deep_state_runs_with_its_sockets_in_the_fallback(deep: tuple[Fed, Path]) -> None:
    fed, admin_dir = deep
    assert len(os.fsencode(fed.state / "local" / "admin")) > MAX_PATH - 22
    assert admin_dir.parent == Path(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent"), "meshfed")
    assert _mode(admin_dir) == 0o700 and os.lstat(admin_dir).st_uid == os.geteuid()
    summary = fed.runtime.summary()
    assert len(summary.processes) == 12
    for p in summary.processes:
        assert Path(p.admin_socket).parent == admin_dir
        st = os.lstat(p.admin_socket)
        assert stat.S_ISSOCK(st.st_mode) and _mode(p.admin_socket) == 0o600, p.name
        assert st.st_uid == os.geteuid()
        assert admin.ready(p.admin_socket), p.name


@pytest.mark.envoy
def test_no_envoy_listens_on_a_tcp_port_beyond_its_listeners(deep: tuple[Fed, Path]) -> None:
    fed, _ = deep
    pids = fed.pids()
    for p in fed.runtime.summary().processes:
        listens = {int(a.rpartition(":")[2]) for a in p.listeners.values()}
        held = ports_held_by([pids[p.name]])
        assert held == listens, f"{p.name} listens on TCP {sorted(held - listens)} too"


@pytest.mark.envoy
def test_quitquitquit_on_every_tcp_port_stops_nothing(deep: tuple[Fed, Path]) -> None:
    """The tryout's attack: ``POST /quitquitquit`` to every port an Envoy listens on."""
    fed, _ = deep
    before = fed.pids()
    envoys = [pid for name, pid in before.items() if "/" in name]
    for port in sorted(ports_held_by(envoys)):
        for path in ("/quitquitquit", "/runtime_modify?envoy.resource_limits.x=0"):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                    s.recv(4096)
            except OSError:
                pass
    after = fed.pids()
    assert after == before
    for p in fed.runtime.summary().processes:
        assert admin.ready(p.admin_socket), p.name


@pytest.mark.envoy
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_connect_to_an_admin_socket(deep: tuple[Fed, Path]) -> None:
    fed, _ = deep
    ingress = next(p for p in fed.runtime.summary().processes if p.name == "payments/ingress")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(ingress.admin_socket)
                s.sendall(b"POST /quitquitquit HTTP/1.1\r\nHost: localhost\r\n\r\n")
        except OSError as exc:
            code = exc.errno or 1
        os.write(write, str(code).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    got = int(os.read(read, 16) or b"-1")
    os.close(read)
    assert got == errno.EACCES, f"the other user's connect ended with errno {got}"
    assert admin.ready(ingress.admin_socket)
    assert "payments/ingress" in fed.pids()


@pytest.mark.envoy
def test_status_shows_each_admin_socket(deep: tuple[Fed, Path]) -> None:
    fed, admin_dir = deep
    runner = CliRunner()
    as_json = runner.invoke(cli(), ["status", "--state", str(fed.state), "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert doc["admin_dir"] == str(admin_dir)
    envoys = [p for p in doc["processes"] if p["role"] != "workloads"]
    assert envoys and all(p["ready"] for p in envoys)
    assert all(Path(p["admin"]).parent == admin_dir for p in envoys)
    table = runner.invoke(cli(), ["status", "--state", str(fed.state)])
    assert table.exit_code == 0, table.output
    assert "payments_ingress.sock" in table.output
    assert str(admin_dir) in table.output.replace("\n", "")
