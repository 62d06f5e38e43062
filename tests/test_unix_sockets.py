"""UNIX stream sockets on either side of `pyforward run`: nginx on a UNIX socket behind a TCP
listener, a UNIX listener in front of nginx on TCP (curl --unix-socket), 16 MiB each way
byte-exact and spliced; the socket file's mode and owner, a stale file replaced, a live
socket and a plain file refused, the file removed on exit; abstract names; per-user limits."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.echo import NamedEcho
from tests.harness import (
    Backend,
    echo,
    fields,
    forwarder,
    pattern_bytes,
    recv_all,
    run_cli,
)
from tests.peers_edge import free_port
from tests.peers_unix import curl, file_nginx, sha256

SIZE = 16 << 20


def _spliced(fwd_stop_line: str) -> tuple[int, int]:
    stopped = fields(fwd_stop_line)
    return int(stopped["spliced_bytes"]), int(stopped["copied_bytes"])


def test_nginx_on_a_unix_socket_behind_a_tcp_listener(tmp_path: Path) -> None:
    """GET and PUT of 16 MiB through TCP -> pyforward -> nginx's UNIX socket, spliced."""
    download = pattern_bytes(1, SIZE)
    upload = pattern_bytes(2, SIZE)
    (tmp_path / "up.bin").write_bytes(upload)
    with file_nginx(tmp_path, unix=True) as nginx:
        (nginx.www / "big.bin").write_bytes(download)
        target = f"unix:{nginx.socket_path}"
        with forwarder("--listen", "127.0.0.1:0", "--target", target, "--relay", "splice") as fwd:
            base = f"http://127.0.0.1:{fwd.port}"
            got = curl(f"{base}/big.bin")
            assert got.returncode == 0, got.stderr
            assert sha256(got.stdout) == sha256(download)
            put = curl("-T", str(tmp_path / "up.bin"), f"{base}/up.bin")
            assert put.returncode == 0, put.stderr
            closes = fwd.closes(2)
            assert fwd.stop() == 0
            spliced, copied = _spliced(fwd.wait_line("event=stopped"))
        assert sha256((nginx.www / "up.bin").read_bytes()) == sha256(upload)
    assert {close["target"] for close in closes} == {target}
    assert all(close["relay"] == "splice" for close in closes)
    # Both bodies (and their headers) went through the pipes, none through a buffer.
    assert spliced >= 2 * SIZE
    assert copied == 0


def test_curl_to_a_unix_listener_in_front_of_nginx_on_tcp(tmp_path: Path) -> None:
    """curl --unix-socket -> pyforward's UNIX listener (mode 0660) -> nginx on TCP."""
    download = pattern_bytes(3, SIZE)
    upload = pattern_bytes(4, SIZE)
    (tmp_path / "up.bin").write_bytes(upload)
    path = tmp_path / "front.sock"
    with file_nginx(tmp_path, unix=False) as nginx:
        (nginx.www / "big.bin").write_bytes(download)
        with forwarder(
            "--listen",
            f"unix:{path}",
            "--unix-mode",
            "0660",
            "--target",
            f"127.0.0.1:{nginx.port}",
            "--relay",
            "splice",
        ) as fwd:
            info = os.stat(path)
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o660
            got = curl("--unix-socket", str(path), "http://front/big.bin")
            assert got.returncode == 0, got.stderr
            assert sha256(got.stdout) == sha256(download)
            put = curl(
                "--unix-socket", str(path), "-T", str(tmp_path / "up.bin"), "http://f/up.bin"
            )
            assert put.returncode == 0, put.stderr
            closes = fwd.closes(2)
            assert fwd.stop() == 0
            spliced, copied = _spliced(fwd.wait_line("event=stopped"))
        assert sha256((nginx.www / "up.bin").read_bytes()) == sha256(upload)
    assert not path.exists()  # the file it made is gone after exit
    # A UNIX client has no address: the close line names its process and user.
    for close in closes:
        assert re.fullmatch(rf"unix:pid:[0-9]+,uid:{os.getuid()}", close["client"]), close
    assert spliced >= 2 * SIZE
    assert copied == 0


def test_owner_and_group_of_the_socket_file(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    user = pwd.getpwnam("nobody")
    group = grp.getgrgid(user.pw_gid)
    path = tmp_path / "owned.sock"
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen",
            f"unix:{path}",
            "--unix-mode",
            "0600",
            "--unix-user",
            "nobody",
            "--unix-group",
            group.gr_name,
            "--target",
            backend.address,
        ),
    ):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (user.pw_uid, group.gr_gid)
        assert stat.S_IMODE(info.st_mode) == 0o600


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(path))  # bound, never listening, then closed: what a crash leaves
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        assert probe.connect_ex(str(path)) != 0  # a file nothing listens on
    with (
        Backend(echo) as backend,
        forwarder("--listen", f"unix:{path}", "--target", backend.address) as fwd,
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"ping"
        assert fwd.stop() == 0
    assert not path.exists()


def test_a_live_socket_and_a_plain_file_are_refused(tmp_path: Path) -> None:
    live = tmp_path / "live.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(live))
    server.listen()
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    try:
        for path, words in ((live, "a server is listening"), (plain, "is not a socket")):
            result = run_cli("run", "--listen", f"unix:{path}", "--target", "127.0.0.1:9")
            assert result.returncode != 0
            [line] = [line for line in result.stderr.splitlines() if line.strip()]
            assert words in line and str(path) in line
        assert plain.read_text() == "keep me"
        assert stat.S_ISSOCK(os.stat(live).st_mode)  # left alone
    finally:
        server.close()


def _send_and_end(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def test_abstract_names_both_sides_echo() -> None:
    name = f"pyforward-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name + "-target")
    server.listen()
    payload = pattern_bytes(5, 1 << 20)
    with (
        Backend.on_socket(server, echo),
        forwarder("--listen", f"unix:@{name}", "--target", f"unix:@{name}-target") as fwd,
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect("\0" + name)
            sender = threading.Thread(target=_send_and_end, args=(client, payload))
            sender.start()  # the echo comes back while the rest is still being sent
            assert recv_all(client) == payload
            sender.join()
        [close] = fwd.closes(1)
    assert close["reason"] == "eof"
    assert (close["up"], close["down"]) == (str(len(payload)),) * 2


def test_per_source_limit_counts_a_unix_client_by_its_user(tmp_path: Path) -> None:
    path = tmp_path / "limited.sock"
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen",
            f"unix:{path}",
            "--target",
            backend.address,
            "--max-connections-per-source",
            "1",
        ) as fwd,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first,
    ):
        first.connect(str(path))
        first.sendall(b"a")
        assert first.recv(1) == b"a"  # admitted and relaying
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as second:
            second.connect(str(path))
            assert second.recv(1) == b""  # refused: the same user holds its one slot
        line = fwd.wait_line("event=refused")
    assert fields(line)["reason"] == "source-limit"
    assert fields(line)["client"] == f"uid:{os.getuid()}"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--listen", "unix:relative.sock"], "must be absolute"),
        (["--listen", "127.0.0.1:0", "--unix-mode", "0660"], "applies to a unix: listen address"),
        (["--listen", "unix:/tmp/x.sock", "--unix-mode", "0999"], "octal file mode"),
        (["--listen", "unix:@abstract", "--unix-mode", "0660"], "abstract socket"),
        (["--listen", "unix:/tmp/x.sock", "--allow", "10.0.0.0/8"], "allow/deny match IP"),
    ],
)
def test_bad_unix_settings_get_one_line(args: list[str], words: str) -> None:
    result = run_cli("run", *args, "--target", "127.0.0.1:9")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert words in lines[0]


def test_socket_activation_of_a_unix_listen_stream(tmp_path: Path) -> None:
    """A UNIX socket handed over as systemd hands it (ListenStream=/path), beside a TCP one:
    each goes to the route whose address it has."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.fail("systemd-socket-activate is missing (Debian package systemd)")
    path = tmp_path / "activated.sock"
    port = free_port()
    first, second = NamedEcho(b"tcp"), NamedEcho(b"unix")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFORWARD_", "NOTIFY_"))}
    pyforward = str(Path(sys.prefix) / "bin" / "pyforward")
    routes = ["--route", f"unix:{path}=127.0.0.1:{second.port}"]
    routes += ["--route", f"127.0.0.1:{port}=127.0.0.1:{first.port}"]
    proc = subprocess.Popen(
        [activate, "-l", f"127.0.0.1:{port}", "-l", str(path), pyforward, "run", *routes],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for _ in range(2):
            assert "Listening on" in proc.stderr.readline()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(str(path))
            client.sendall(b"hi")
            assert client.recv(64) == b"unix:hi"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"hi")
            assert client.recv(64) == b"tcp:hi"
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        first.close()
        second.close()
    assert f"event=socket-activated address=unix:{path}" in log


def test_proxy_protocol_for_a_unix_client_says_unknown(tmp_path: Path) -> None:
    """A UNIX client has no address to put in a PROXY header: v1 sends UNKNOWN, as HAProxy."""
    path = tmp_path / "pp.sock"
    received: list[bytes] = []

    def keep(conn: socket.socket) -> None:
        received.append(recv_all(conn))

    with (
        Backend(keep) as backend,
        forwarder(
            "--listen", f"unix:{path}", "--target", backend.address, "--proxy-protocol", "v1"
        ) as fwd,
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            client.sendall(b"payload")
        fwd.closes(1)
    assert received == [b"PROXY UNKNOWN\r\npayload"]


def test_check_tries_unix_listen_and_target(tmp_path: Path) -> None:
    live = tmp_path / "live.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(live))
    server.listen()
    try:
        free = run_cli("check", "--listen", f"unix:{tmp_path}/new.sock", "--target", f"unix:{live}")
        taken = run_cli(
            "check", "--listen", f"unix:{live}", "--target", f"unix:{tmp_path}/none.sock"
        )
    finally:
        server.close()
    assert f"listen unix:{tmp_path}/new.sock" in free.stdout and "free" in free.stdout
    assert f"target unix:{live}" in free.stdout and "accepts connections" in free.stdout
    assert "a server is listening on" in taken.stdout
    assert "does not accept connections (ENOENT)" in taken.stdout
    assert taken.returncode != 0
