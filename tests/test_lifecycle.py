"""Shutdown, resources and start-up of a real `pyforward run` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pyforward.relay.pipes import PipePool
from tests.harness import (
    Backend,
    connect,
    echo,
    fields,
    forwarder,
    reads_until_closed,
    recv_all,
)


def test_sigterm_lets_connections_finish_and_refuses_new_ones() -> None:
    release = threading.Event()
    got_request = threading.Event()

    def slow_reply(conn: socket.socket) -> None:
        conn.recv(100)
        got_request.set()
        release.wait(20)
        conn.sendall(b"the whole answer" * 1000)

    with (
        Backend(slow_reply) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address) as fwd,
    ):
        client = connect(fwd.port)
        client.sendall(b"question")
        assert got_request.wait(10)
        fwd.proc.send_signal(signal.SIGTERM)
        fwd.wait_line("event=draining")
        with pytest.raises(ConnectionRefusedError):
            connect(fwd.port).close()
        release.set()
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"the whole answer" * 1000
        client.close()
        assert fwd.proc.wait(10) == 0
        assert fwd.closes(1)[0]["reason"] == "eof"


def test_sigterm_deadline_closes_what_remains_and_exits_zero() -> None:
    accepted = threading.Event()
    finished = threading.Event()

    def never_done(conn: socket.socket) -> None:
        accepted.set()
        finished.wait(10)

    with (
        Backend(never_done) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--shutdown-timeout", "0.5"
        ) as fwd,
    ):
        client = connect(fwd.port)
        client.sendall(b"x")
        assert accepted.wait(10)
        fwd.proc.send_signal(signal.SIGTERM)
        _, error = reads_until_closed(client)
        client.close()
        assert fwd.proc.wait(10) == 0
        assert fwd.closes(1)[0]["reason"] == "shutdown"
        assert isinstance(error, ConnectionResetError)  # cut short, and the client knows
        finished.set()


def open_fds(pid: int) -> list[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = []
    for entry in fd_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            targets.append(os.readlink(entry))
    return sorted(targets)


def tcp_states(pid: int) -> list[str]:
    """The TCP states of the sockets process `pid` holds (e.g. '08' is CLOSE_WAIT)."""
    inodes = {t[8:-1] for t in open_fds(pid) if t.startswith("socket:[")}
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[9] in inodes:
                states.append(parts[3])
    return states


@pytest.mark.parametrize("relay", ["splice", "copy"])
def test_ten_thousand_short_connections_leave_no_descriptor_behind(relay: str) -> None:
    count, workers = 10_000, 8

    def one(index: int) -> None:
        with connect(port) as client:
            message = b"%d" % index
            client.sendall(message)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == message

    with (
        Backend(echo) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address, "--relay", relay) as fwd,
    ):
        port = fwd.port
        one(-1)
        fwd.closes(1)
        before = open_fds(fwd.proc.pid)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(count)))
        closes = fwd.closes(count + 1)
        after = open_fds(fwd.proc.pid)
        states = tcp_states(fwd.proc.pid)
    assert {c["reason"] for c in closes} == {"eof"}
    # Every socket is gone; pipes kept for reuse stay within the pool's bound.
    assert [fd for fd in after if not fd.startswith("pipe:")] == [
        fd for fd in before if not fd.startswith("pipe:")
    ]
    assert len([fd for fd in after if fd.startswith("pipe:")]) <= 2 * PipePool().capacity
    assert "08" not in states  # no CLOSE_WAIT


def test_stopped_line_counts_connections_by_close_reason() -> None:
    with (
        Backend(echo) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address) as fwd,
    ):
        for message in (b"one", b"two"):
            with connect(fwd.port) as client:
                client.sendall(message)
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == message
        with connect(fwd.port) as client:
            client.sendall(b"cut short")
            assert client.recv(100) == b"cut short"
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reasons = sorted(close["reason"] for close in fwd.closes(3))
        assert fwd.stop() == 0
    assert reasons == ["eof", "eof", "reset"]
    stopped = fields(fwd.wait_line("event=stopped"))
    assert (stopped["closed_eof"], stopped["closed_reset"]) == ("2", "1")
    assert not any(
        key.startswith("closed_") for key in stopped.keys() - {"closed_eof", "closed_reset"}
    )


@pytest.mark.asyncio
async def test_cancelling_serve_closes_listeners_and_connections() -> None:
    from pyforward.config.settings import build_settings  # noqa: PLC0415
    from pyforward.engine.runtime import serve  # noqa: PLC0415
    from pyforward.engine.server import Forwarder  # noqa: PLC0415

    with Backend(echo) as backend:
        settings = build_settings({"listen": "127.0.0.1:0", "target": [backend.address]}, {})
        ready: asyncio.Future[Forwarder] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve(settings, shutdown_trigger=asyncio.Event().wait, on_ready=ready.set_result)
        )
        forwarder = await ready
        port = forwarder.listeners[0].sock.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert forwarder.listeners[0].sock.fileno() == -1
        assert not forwarder.connections
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(ConnectionResetError):  # cut short, and the client is told so
            await reader.read()
        writer.close()
