"""Socket activation: sockets passed as systemd passes them (systemd-socket-activate)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyforward.errors import StartupError
from pyforward.systemd.activation import BoundSocket, PassedFds, RouteAddresses, assign, passed_fds
from tests.echo import NamedEcho

PYFORWARD = str(Path(sys.prefix) / "bin" / "pyforward")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.fixture
def echoes() -> Iterator[tuple[NamedEcho, NamedEcho]]:
    first, second = NamedEcho(b"first"), NamedEcho(b"second")
    yield first, second
    first.close()
    second.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def socket_activated(listens: list[int], args: list[str]) -> Iterator[subprocess.Popen[str]]:
    """systemd-socket-activate listening on the ports, then running pyforward with args."""
    if SOCKET_ACTIVATE is None:
        pytest.fail("systemd-socket-activate is missing (Debian package systemd)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFORWARD_", "NOTIFY_"))}
    command = [SOCKET_ACTIVATE]
    for port in listens:
        command += ["-l", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [*command, "--fdname=web", PYFORWARD, "run", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for _ in listens:  # "Listening on 127.0.0.1:PORT as N." once per socket
            assert "Listening on" in proc.stderr.readline()
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hi")
        return sock.recv(1024)


def test_serves_on_the_passed_socket(echoes: tuple[NamedEcho, NamedEcho]) -> None:
    port = free_port()
    route = ["--listen", f"127.0.0.1:{port}", "--target", f"127.0.0.1:{echoes[0].port}"]
    with socket_activated([port], route) as proc:
        # The first connection makes systemd-socket-activate start pyforward, which must
        # serve it on the passed socket (binding the port itself would fail: it is taken).
        assert ask(port) == b"first:hi"
        assert ask(port) == b"first:hi"
        assert proc.stderr is not None
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        log = proc.stderr.read()
    assert f"event=socket-activated address=127.0.0.1:{port} name=web" in log


def test_each_socket_serves_the_route_with_its_address(
    echoes: tuple[NamedEcho, NamedEcho],
) -> None:
    first_port, second_port = free_port(), free_port()
    # Routes in the opposite order to the sockets: matching is by address, not position.
    routes = [
        "--route",
        f"127.0.0.1:{second_port}=127.0.0.1:{echoes[1].port}",
        "--route",
        f"127.0.0.1:{first_port}=127.0.0.1:{echoes[0].port}",
    ]
    with socket_activated([first_port, second_port], routes):
        assert ask(first_port) == b"first:hi"
        assert ask(second_port) == b"second:hi"


def test_a_socket_no_route_claims_is_an_error(echoes: tuple[NamedEcho, NamedEcho]) -> None:
    claimed, stray, unpassed = free_port(), free_port(), free_port()
    routes = [
        "--route",
        f"127.0.0.1:{claimed}=127.0.0.1:{echoes[0].port}",
        "--route",
        f"127.0.0.1:{unpassed}=127.0.0.1:{echoes[1].port}",
    ]
    with socket_activated([claimed, stray], routes) as proc:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", claimed), timeout=5).close()
        assert proc.wait(timeout=10) == 1
        assert proc.stderr is not None
        error = proc.stderr.read()
    assert f"socket 127.0.0.1:{stray} passed by systemd" in error
    assert "matches no route's listen address" in error
    assert "Traceback" not in error


def test_passed_fds_only_for_this_process() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "42", "LISTEN_FDNAMES": "web"}
    assert passed_fds(env, 42) == PassedFds((3, 4), ("web", "unknown"))
    assert passed_fds(env, 43) is None
    assert passed_fds({}, 42) is None
    with pytest.raises(StartupError, match="LISTEN_FDS='x'"):
        passed_fds({"LISTEN_FDS": "x", "LISTEN_PID": "42"}, 42)


def test_assign_by_address_and_wildcards() -> None:
    routes = [
        RouteAddresses(None, 443),
        RouteAddresses(frozenset({"10.0.0.1"}), 8443),
        RouteAddresses(frozenset({"::1"}), 9443),
    ]
    sockets = [
        BoundSocket(3, "a", "10.0.0.1", 8443),
        BoundSocket(4, "b", "::", 443),
        BoundSocket(5, "c", "0:0:0:0:0:0:0:1", 9443),
    ]
    assert assign(routes, sockets) == [[4], [3], [5]]
    # One route: every passed socket serves it, whatever its address.
    assert assign(routes[:1], sockets) == [[3, 4, 5]]
    with pytest.raises(StartupError, match="matches no route"):
        assign(routes, [BoundSocket(3, "x", "10.0.0.2", 8443)])
