"""`pyforward-socat` with socat's UNIX forms and the options beyond TCP-to-TCP, against real
peers: nginx on a UNIX socket behind `TCP-LISTEN ... UNIX-CONNECT`, curl --unix-socket to
`UNIX-LISTEN ...,mode=0660 TCP:` in front of nginx; su=, range=; install --from-unit."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from pyforward.cli import service as service_cli
from pyforward.cli.app import main
from pyforward.config.addresses import UnixAddress
from pyforward.config.settings import build_settings
from pyforward.systemd import install as service
from tests.harness import (
    TIMEOUT,
    Backend,
    ForwarderProcess,
    connect_and_read,
    echo,
    fields,
    pattern_bytes,
    reads_until_closed,
)
from tests.peers_edge import free_port, require
from tests.peers_unix import curl, file_nginx, sha256
from tests.seed_in_netns import pyforward_socat
from tests.test_service import IN_OPT

SIZE = 4 << 20


def _socat(*words: str) -> ForwarderProcess:
    return ForwarderProcess(list(words), program=pyforward_socat())


def test_tcp_listen_to_nginx_on_a_unix_socket(tmp_path: Path) -> None:
    body = pattern_bytes(7, SIZE)
    with file_nginx(tmp_path, unix=True) as nginx:
        (nginx.www / "f.bin").write_bytes(body)
        fwd = _socat(
            "TCP-LISTEN:0,fork,reuseaddr,bind=127.0.0.1", f"UNIX-CONNECT:{nginx.socket_path}"
        )
        try:
            port = fwd.port
            for _ in range(2):  # fork: every connection
                got = curl(f"http://127.0.0.1:{port}/f.bin")
                assert got.returncode == 0, got.stderr
                assert sha256(got.stdout) == sha256(body)
            closes = fwd.closes(2)
        finally:
            assert fwd.stop() == 0
    assert {close["target"] for close in closes} == {f"unix:{nginx.socket_path}"}


def test_unix_listen_with_mode_in_front_of_nginx_on_tcp(tmp_path: Path) -> None:
    body = pattern_bytes(8, SIZE)
    path = tmp_path / "front.sock"
    with file_nginx(tmp_path, unix=False) as nginx:
        (nginx.www / "f.bin").write_bytes(body)
        fwd = _socat(f"UNIX-LISTEN:{path},fork,mode=0660", f"TCP:127.0.0.1:{nginx.port}")
        try:
            fwd.wait_line("event=listen ")
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            for _ in range(2):
                got = curl("--unix-socket", str(path), "http://x/f.bin")
                assert got.returncode == 0, got.stderr
                assert sha256(got.stdout) == sha256(body)
        finally:
            assert fwd.stop() == 0
    assert not path.exists()  # unlink-close, socat's default for UNIX-LISTEN


def test_unix_listen_without_fork_serves_one_then_exits_and_removes_its_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "once.sock"
    with Backend(echo) as backend:
        fwd = _socat(f"UNIX-LISTEN:{path}", f"TCP:{backend.address}")
        try:
            fwd.wait_line("event=listen ")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(TIMEOUT)
                client.connect(str(path))
                client.sendall(b"once")
                assert client.recv(4) == b"once"
            assert fwd.proc.wait(TIMEOUT) == 0
        finally:
            fwd.stop()
    assert not path.exists()


def test_su_drops_to_the_user_once_bound(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("becoming another user needs root")
    nobody = pwd.getpwnam("nobody")
    with Backend(echo) as backend:
        fwd = _socat("TCP-LISTEN:0,fork,bind=127.0.0.1,su=nobody", f"TCP:{backend.address}")
        try:
            port = fwd.port
            su = fields(fwd.wait_line("event=su "))
            assert su["uid"] == str(nobody.pw_uid)
            status = Path(f"/proc/{fwd.proc.pid}/status").read_text()
            uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uids.split()[1:] == [str(nobody.pw_uid)] * 4  # real, effective, saved, fs
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
                client.sendall(b"still serving")
                assert client.recv(64) == b"still serving"
        finally:
            assert fwd.stop() == 0


def test_range_serves_only_the_network_given(tmp_path: Path) -> None:
    with Backend(echo) as backend:
        fwd = _socat(
            "TCP-LISTEN:0,fork,bind=127.0.0.1,range=127.0.0.2/32", f"TCP:{backend.address}"
        )
        try:
            port = fwd.port
            with socket.socket() as allowed:
                allowed.settimeout(TIMEOUT)
                allowed.bind(("127.0.0.2", 0))
                allowed.connect(("127.0.0.1", port))
                allowed.sendall(b"in")
                assert allowed.recv(2) == b"in"
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as other:
                assert reads_until_closed(other)[0] == b""  # closed (reset) unanswered
            refused = fields(fwd.wait_line("event=refused "))
        finally:
            assert fwd.stop() == 0
    assert (refused["reason"], refused["client"]) == ("denied", "127.0.0.1")


def test_stdio_with_options_is_refused_as_stdio() -> None:
    result = subprocess.run(
        [*pyforward_socat(), "TCP-LISTEN:443", "-,echo=0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "pyforward: error: - (STDIO) is not supported: pyforward forwards between TCP sockets, "
        "not files or terminals\n"
    )


def test_install_from_unit_carries_a_unix_listener_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_cli, "find_installation", lambda: IN_OPT)
    monkeypatch.setattr(service, "ports_taken", lambda plan: [])
    unit = tmp_path / "docker-tcp.service"
    unit.write_text(
        "[Service]\nExecStart=/usr/bin/socat UNIX-LISTEN:/run/app/api.sock,fork,mode=0660,"
        "group=adm TCP:127.0.0.1:8080\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["install", "--dry-run", "--socket-activation", "--from-unit", str(unit)])
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    config_text = captured.out.split("==> /etc/pyforward/pyforward.toml <==\n")[1].split("==>")[0]
    [route] = build_settings({}, {}, tomllib.loads(config_text)).routes
    assert route.listen == UnixAddress("/run/app/api.sock")
    assert (route.unix_mode, route.unix_group) == (0o660, "adm")
    socket_unit = captured.out.split(".socket <==\n")[1]
    assert "ListenStream=/run/app/api.sock\n" in socket_unit
    assert "SocketMode=0660\n" in socket_unit
    assert "SocketGroup=adm\n" in socket_unit


@pytest.mark.parametrize("retry", ["retry=200", "forever"])
def test_retry_waits_for_a_target_that_starts_late(tmp_path: Path, retry: str) -> None:
    path = tmp_path / "late.sock"
    fwd = _socat("TCP-LISTEN:0,fork,bind=127.0.0.1", f"UNIX-CONNECT:{path},{retry},interval=0.05")
    try:
        port = fwd.port
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(b"waited")
            fwd.wait_line("event=target-down ")  # the first dial found no socket
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(path))
            server.listen()
            with Backend.on_socket(server, echo):
                assert client.recv(64) == b"waited"
                client.shutdown(socket.SHUT_WR)
                assert reads_until_closed(client) == (b"", None)
                [close] = fwd.closes(1)
    finally:
        assert fwd.stop() == 0
    assert (close["reason"], close["up"], close["down"]) == ("eof", "6", "6")


def test_without_retry_a_missing_target_is_refused_at_once(tmp_path: Path) -> None:
    fwd = _socat("TCP-LISTEN:0,fork,bind=127.0.0.1", f"UNIX-CONNECT:{tmp_path}/none.sock")
    try:
        data, error = connect_and_read(fwd.port)
        assert isinstance(error, ConnectionResetError)  # refused: reset, not a clean EOF
        [close] = fwd.closes(1)
    finally:
        assert fwd.stop() == 0
    assert data == b""
    assert (close["reason"], close["error"]) == ("refused", "ENOENT")


def test_reuseport_shares_the_port_with_socat(tmp_path: Path) -> None:
    socat = require("socat")
    with Backend(echo) as backend:
        fwd = _socat("TCP-LISTEN:0,fork,reuseport,bind=127.0.0.1", f"TCP:{backend.address}")
        try:
            port = fwd.port
            shared = subprocess.Popen(
                [socat, f"TCP-LISTEN:{port},fork,reuseport,bind=127.0.0.1", "TCP:127.0.0.1:9"],
                stderr=subprocess.PIPE,
            )
            try:
                # Without reuseport the port is taken: pyforward says so and exits.
                alone = subprocess.run(
                    [*pyforward_socat(), f"TCP-LISTEN:{port},bind=127.0.0.1", "TCP:127.0.0.1:9"],
                    capture_output=True,
                    text=True,
                    timeout=TIMEOUT,
                    check=False,
                )
                assert alone.returncode != 0
                assert f"port {port} is already in use" in alone.stderr
                assert shared.poll() is None  # socat bound beside pyforward
            finally:
                shared.terminate()
                _, socat_err = shared.communicate(timeout=TIMEOUT)
            assert b"Address already in use" not in socat_err
        finally:
            assert fwd.stop() == 0


def test_sourceport_is_the_port_the_target_sees() -> None:
    source = free_port()
    seen: list[int] = []

    def note_peer(conn: socket.socket) -> None:
        seen.append(conn.getpeername()[1])
        echo(conn)

    with Backend(note_peer) as backend:
        fwd = _socat("TCP-LISTEN:0,fork,bind=127.0.0.1", f"TCP:{backend.address},sp={source}")
        try:
            with socket.create_connection(("127.0.0.1", fwd.port), timeout=TIMEOUT) as client:
                client.sendall(b"from")
                assert client.recv(4) == b"from"
        finally:
            assert fwd.stop() == 0
    assert seen == [source]
