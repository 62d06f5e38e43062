"""Targets that refuse, reset, stall or never answer: each client is told, the log says
why, and the forwarder keeps serving."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    TIMEOUT,
    Backend,
    connect,
    connect_and_read,
    echo,
    fields,
    forwarder,
    reads_until_closed,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_refused_target_closes_the_client_and_the_next_connection_works() -> None:
    port = free_port()
    with forwarder("--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{port}") as fwd:
        data, _ = connect_and_read(fwd.port)
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


def fill_until_stuck(sock: socket.socket) -> int:
    """Send until the socket has taken nothing for half a second: every buffer on the way
    is full and the far side is not reading. Bytes sent."""
    sock.settimeout(0.5)
    chunk, sent = b"x" * 65536, 0
    with contextlib.suppress(TimeoutError):
        while True:
            sent += sock.send(chunk)
    return sent


def unread_bytes(pid: int, local_port: int, remote_port: int) -> int:
    """rx_queue of the TCP socket of `pid`'s network namespace between the two ports."""
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            parts = line.split()
            local, remote = int(parts[1][-4:], 16), int(parts[2][-4:], 16)
            if (local, remote) == (local_port, remote_port):
                return int(parts[4].split(":")[1], 16)
    return 0


def wait_until_not_read(pid: int, local_port: int, remote_port: int) -> None:
    """Wait until bytes sit unread in that socket and stay put over three looks: the
    forwarder has stopped reading it (level-triggered, it would otherwise drain them)."""
    deadline = time.monotonic() + 10
    seen: list[int] = []
    while time.monotonic() < deadline:
        seen = [*seen[-2:], unread_bytes(pid, local_port, remote_port)]
        if len(seen) == 3 and seen[0] > 0 and len(set(seen)) == 1:
            return
        time.sleep(0.05)  # a poll of kernel state, not a wait for an event
    raise AssertionError(f"the forwarder kept reading: {seen}")


@pytest.mark.parametrize("relay", ["splice", "copy"])
def test_reset_by_client_reaches_a_target_that_is_not_reading(relay: str) -> None:
    """The client's bytes wait behind a target that does not read, so the forwarder is not
    reading the client: its reset must still be passed on at once, not once the target
    drains (which may be never)."""
    accepted = threading.Event()
    done_waiting = threading.Event()
    outcome: list[BaseException | None] = []

    def stalled(conn: socket.socket) -> None:
        accepted.set()
        done_waiting.wait(20)  # reads nothing until the forwarder has acted, or gave up
        outcome.append(reads_until_closed(conn)[1])

    with (
        Backend(stalled) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address, "--relay", relay) as fwd,
    ):
        client = connect(fwd.port)
        assert accepted.wait(10)
        assert fill_until_stuck(client) > 0
        wait_until_not_read(fwd.proc.pid, fwd.port, client.getsockname()[1])
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        try:
            [close] = fwd.closes(1, timeout=10)
        finally:
            done_waiting.set()
    assert close["reason"] == "reset"
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionResetError)


def test_a_client_facing_a_hundred_dead_targets_logs_one_failover_line() -> None:
    """Failover lines are rate-limited per route; each target's going down and coming
    back is still logged, once each."""
    dead = []
    for _ in range(100):
        holder = socket.socket()  # bound, not listening: connects to it are refused
        holder.bind(("127.0.0.1", 0))
        dead.append(holder)
    labels = [f"127.0.0.1:{holder.getsockname()[1]}" for holder in dead]
    try:
        targets = [word for label in labels for word in ("--target", label)]
        with forwarder("--listen", "127.0.0.1:0", *targets) as fwd:
            for count in (1, 2):
                _, error = connect_and_read(fwd.port)
                assert isinstance(error, ConnectionResetError)
                assert fwd.closes(count)[-1]["reason"] == "refused"
            dead[0].listen()  # the first target is back
            with connect(fwd.port) as client:
                client.sendall(b"hello")
                fwd.wait_line("event=target-up")
                dead[0].settimeout(TIMEOUT)
                accepted, _ = dead[0].accept()
                with accepted:
                    assert accepted.recv(5) == b"hello"
            fwd.closes(3)
            lines = fwd.lines
    finally:
        for holder in dead:
            holder.close()
    failovers = [line for line in lines if "event=failover" in line]
    assert len(failovers) == 1, failovers[:3]
    downs = [fields(line)["target"] for line in lines if "event=target-down" in line]
    assert sorted(downs) == sorted(labels)
    ups = [fields(line)["target"] for line in lines if "event=target-up" in line]
    assert ups == [labels[0]]
