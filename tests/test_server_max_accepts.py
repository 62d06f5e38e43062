"""serve(max_accepts=1): one connection, then the listener closes and serve returns."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from pyforward.config.settings import build_settings
from pyforward.engine.runtime import serve
from pyforward.engine.server import Forwarder
from pyforward.obs.reasons import CloseReason


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest_asyncio.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def _start(
    echo_port: int, max_accepts: int | None, stop: asyncio.Event | None = None
) -> tuple[asyncio.Task[Forwarder], int]:
    settings = build_settings({"listen": "127.0.0.1:0", "target": [f"127.0.0.1:{echo_port}"]}, {})
    ready: asyncio.Future[Forwarder] = asyncio.get_running_loop().create_future()
    stop = stop or asyncio.Event()  # unless the test sets it, serve must end on its own
    task = asyncio.create_task(
        serve(
            settings,
            shutdown_trigger=stop.wait,
            on_ready=ready.set_result,
            max_accepts=max_accepts,
        )
    )
    forwarder = await asyncio.wait_for(ready, 10)
    return task, forwarder.listeners[0].sock.getsockname()[1]


async def _round_trip(
    port: int, payload: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    assert await reader.readexactly(len(payload)) == payload
    return reader, writer


@pytest.mark.asyncio
async def test_one_connection_then_the_listener_closes_and_serve_returns(echo_port: int) -> None:
    task, port = await _start(echo_port, max_accepts=1)
    reader, writer = await _round_trip(port, b"first client\n" * 1000)

    # While the first connection is open, nobody else gets in: the listener is gone.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert not task.done()

    # The first connection still works, and when it ends, serve returns by itself.
    writer.write(b"still here")
    await writer.drain()
    assert await reader.readexactly(10) == b"still here"
    writer.write_eof()
    assert await reader.read() == b""
    writer.close()
    forwarder = await asyncio.wait_for(task, 10)
    assert forwarder.stats.accepted == 1
    assert forwarder.stats.closed[CloseReason.EOF] == 1


@pytest.mark.asyncio
async def test_a_connection_the_target_refuses_also_ends_the_run(echo_port: int) -> None:
    probe = await asyncio.start_server(_echo, "127.0.0.1", 0)
    closed_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    task, port = await _start(closed_port, max_accepts=1)
    # The target refused: the client is reset, which this loop may see before its own
    # connect has reported success (the forwarder learns of the refusal at once).
    with pytest.raises(ConnectionResetError):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await reader.read()
        finally:
            writer.close()
    forwarder = await asyncio.wait_for(task, 10)
    assert forwarder.stats.closed[CloseReason.REFUSED] == 1


@pytest.mark.asyncio
async def test_without_max_accepts_connections_keep_coming(echo_port: int) -> None:
    stop = asyncio.Event()
    task, port = await _start(echo_port, max_accepts=None, stop=stop)
    try:
        for index in range(3):
            _, writer = await _round_trip(port, f"client {index}".encode())
            writer.close()
            await writer.wait_closed()
        assert not task.done()
    finally:
        stop.set()
        forwarder = await asyncio.wait_for(task, 10)
    assert forwarder.stats.accepted == 3


@pytest.mark.asyncio
async def test_clients_waiting_together_are_accepted_in_one_wakeup(echo_port: int) -> None:
    settings = build_settings({"listen": "127.0.0.1:0", "target": [f"127.0.0.1:{echo_port}"]}, {})
    ready: asyncio.Future[Forwarder] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(settings, shutdown_trigger=stop.wait, on_ready=ready.set_result)
    )
    forwarder = await asyncio.wait_for(ready, 10)
    (listener,) = forwarder.listeners
    # Blocking connects, which the kernel completes while this loop does not run: all five
    # are in the backlog when the forwarder is next woken.
    clients = [socket.create_connection(listener.sock.getsockname()) for _ in range(5)]
    try:
        assert listener.waiting(0)
        forwarder._accept(listener)  # what one wakeup of the listener does
        assert forwarder.stats.accepted == 5
        assert not listener.waiting(0)
        forwarder._accept(listener)  # a wakeup with no one left: nothing, and no error
        assert forwarder.stats.accepted == 5
    finally:
        for client in clients:
            client.close()
        stop.set()
        await asyncio.wait_for(task, 10)
