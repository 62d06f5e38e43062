"""Targets that refuse, reset, stall or never answer: each client is told, the log says
why, and the forwarder keeps serving."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.harness import Backend, connect, echo, forwarder, reads_until_closed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_refused_target_closes_the_client_and_the_next_connection_works() -> None:
    port = free_port()
    with forwarder("--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{port}") as fwd:
        with connect(fwd.port) as client:
            data, _ = reads_until_closed(client)
        assert data == b""
        assert fwd.closes(1)[0]["reason"] == "refused"
        # The target comes up on the same port: the forwarder serves it at once.
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        with Backend.on_socket(server, echo), connect(fwd.port) as client:
            client.sendall(b"ping")
            assert client.recv(4) == b"ping"


def test_reset_by_target_mid_stream_reaches_the_client_as_a_reset() -> None:
    def handler(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"partial answer")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    for relay in ("splice", "copy"):
        with (
            Backend(handler) as backend,
            forwarder(
                "--listen", "127.0.0.1:0", "--target", backend.address, "--relay", relay
            ) as fwd,
        ):
            with connect(fwd.port) as client:
                client.sendall(b"request")
                data, error = reads_until_closed(client)
            assert isinstance(error, ConnectionResetError), (relay, data)
            assert fwd.closes(1)[0]["reason"] == "reset"


def test_reset_by_client_reaches_the_target_as_a_reset() -> None:
    outcome: list[BaseException | None] = []
    got_request = threading.Event()

    def handler(conn: socket.socket) -> None:
        conn.recv(100)
        got_request.set()
        try:
            while conn.recv(65536):
                pass
            outcome.append(None)
        except ConnectionResetError as exc:
            outcome.append(exc)

    with (
        Backend(handler) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address) as fwd,
    ):
        client = connect(fwd.port)
        client.sendall(b"request")
        assert got_request.wait(10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert fwd.closes(1)[0]["reason"] == "reset"
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionResetError)


def test_idle_timeout_closes_a_silent_connection_and_logs_why() -> None:
    release = threading.Event()

    def silent(conn: socket.socket) -> None:
        release.wait(30)

    with (
        Backend(silent) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--idle-timeout", "0.5"
        ) as fwd,
    ):
        started = time.monotonic()
        with connect(fwd.port) as client:
            client.sendall(b"anyone there?")
            data, _ = reads_until_closed(client)
        waited = time.monotonic() - started
        [close] = fwd.closes(1)
        assert close["reason"] == "idle-timeout"
        assert data == b""
        assert 0.5 <= waited < 5
        with connect(fwd.port) as client:  # still serving
            client.sendall(b"again")
            fwd.closes(2)
        release.set()
    assert backend.accepted == 2


def test_idle_timeout_is_off_by_default() -> None:
    def slow(conn: socket.socket) -> None:
        conn.recv(10)
        threading.Event().wait(1.5)
        conn.sendall(b"late but fine")

    with (
        Backend(slow) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address) as fwd,
        connect(fwd.port) as client,
    ):
        client.sendall(b"q")
        assert client.recv(100) == b"late but fine"


@contextlib.contextmanager
def unresponsive_target() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops new SYNs, connects hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def test_connect_timeout_to_an_unresponsive_target() -> None:
    with (
        unresponsive_target() as port,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{port}", "--connect-timeout", "0.5"
        ) as fwd,
    ):
        started = time.monotonic()
        with connect(fwd.port) as client:
            data, _ = reads_until_closed(client)
        waited = time.monotonic() - started
        assert data == b""
        assert fwd.closes(1)[0]["reason"] == "connect-timeout"
        assert 0.4 <= waited < 5


def test_connection_cap_holds_under_a_burst_and_releases_as_connections_end() -> None:
    cap, burst = 5, 20
    lock = threading.Lock()
    current, peak = [0], [0]
    reached_cap = threading.Event()

    def counting_echo(conn: socket.socket) -> None:
        with lock:
            current[0] += 1
            peak[0] = max(peak[0], current[0])
            if current[0] == cap:
                reached_cap.set()
        try:
            echo(conn)
        finally:
            with lock:
                current[0] -= 1

    with (
        Backend(counting_echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--max-connections", str(cap)
        ) as fwd,
    ):
        clients = [connect(fwd.port) for _ in range(burst)]  # all complete the handshake
        assert reached_cap.wait(10)
        waiting = clients[cap]
        waiting.settimeout(0.3)
        waiting.sendall(b"x")
        with pytest.raises(TimeoutError):
            waiting.recv(1)  # queued in the backlog, not relayed
        served = 0
        for client in clients:
            client.settimeout(10)
            client.sendall(b"y")
            expected = b"xy" if client is waiting else b"y"
            got = b""
            while len(got) < len(expected):
                got += client.recv(2)
            assert got == expected
            client.close()  # frees a slot for the next one
            served += 1
        fwd.closes(burst)
    assert served == burst
    assert peak[0] == cap
