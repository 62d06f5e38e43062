"""The relay's epoll: errors on a socket nobody reads or writes for the moment still wake
someone, once per watch, never in a loop."""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import struct
from collections.abc import Iterator

import pytest

from pyforward.relay.poller import EpollPoller

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux's")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (client, accepted) pair on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


def turn(loop: asyncio.AbstractEventLoop, times: int = 5) -> None:
    """Let the loop poll its descriptors `times` times without waiting."""
    for _ in range(times):
        loop.run_until_complete(asyncio.sleep(0))


def test_reset_on_an_unread_socket_wakes_its_error_watcher(
    loop: asyncio.AbstractEventLoop,
) -> None:
    poller = EpollPoller(loop)
    client, accepted = tcp_pair()
    errors: list[int] = []
    poller.watch_errors(
        accepted.fileno(),
        lambda: errors.append(accepted.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)),
    )
    turn(loop)
    assert errors == []  # a quiet socket wakes nobody
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    turn(loop, 1)
    assert errors[:1] == [errno.ECONNRESET]
    poller.unwatch_errors(accepted.fileno())
    poller.close()
    accepted.close()


def test_a_watcher_that_stops_watching_a_hang_up_is_not_called_again(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Both directions shut down: epoll reports a hang-up, level-triggered, with no error.
    Once the watcher unwatches, the loop does not keep calling it (no spin)."""
    poller = EpollPoller(loop)
    client, accepted = tcp_pair()
    calls: list[int] = []

    def on_trouble() -> None:
        calls.append(accepted.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        poller.unwatch_errors(accepted.fileno())

    poller.watch_errors(accepted.fileno(), on_trouble)
    accepted.shutdown(socket.SHUT_WR)
    client.shutdown(socket.SHUT_WR)
    assert client.recv(1) == b""
    turn(loop, 20)
    assert calls == [0]
    poller.close()
    client.close()
    accepted.close()


def test_a_reader_hears_a_reset_instead_of_the_watcher(
    loop: asyncio.AbstractEventLoop,
) -> None:
    poller = EpollPoller(loop)
    client, accepted = tcp_pair()
    accepted.setblocking(False)
    woken: list[str] = []

    def on_readable() -> None:
        with pytest.raises(ConnectionResetError):
            accepted.recv(1)
        woken.append("reader")
        # What a connection does on a reset: it stops watching the socket altogether.
        poller.remove_reader(accepted.fileno())
        poller.unwatch_errors(accepted.fileno())

    def on_trouble() -> None:
        woken.append("watcher")
        poller.unwatch_errors(accepted.fileno())

    poller.add_reader(accepted.fileno(), on_readable)
    poller.watch_errors(accepted.fileno(), on_trouble)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    turn(loop, 3)
    assert woken == ["reader"]
    poller.close()
    accepted.close()
