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


def test_a_descriptor_forgotten_and_closed_can_be_reused_at_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """`forget` drops a socket's watches without telling epoll (its close does that): the
    next socket the kernel gives the same number must still be watched from scratch."""
    poller = EpollPoller(loop)
    first, first_peer = tcp_pair()
    number = first.fileno()
    poller.add_writer(number, lambda: None)
    poller.forget(number)
    first.close()
    second, second_peer = tcp_pair()
    # The lowest free number: the kernel hands out the one just closed.
    reused = second if second.fileno() == number else second_peer
    assert reused.fileno() == number
    other = second_peer if reused is second else second
    heard: list[bytes] = []
    poller.add_reader(number, lambda: heard.append(reused.recv(10)))
    other.sendall(b"hello")
    turn(loop, 3)
    assert heard[:1] == [b"hello"]
    poller.forget(number)
    poller.close()
    for sock in (first_peer, second, second_peer):
        sock.close()


def test_done_writing_hands_a_socket_over_to_a_reader_in_the_same_callback(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """What a dial does once its target accepts: stop writing, then (the pump) read. The
    writer is never called again, the reader is, and a writer dropped with nobody reading
    afterwards does not keep waking the loop."""
    poller = EpollPoller(loop)
    client, accepted = tcp_pair()
    calls: list[str] = []

    def on_writable() -> None:
        calls.append("writer")
        poller.done_writing(client.fileno())
        poller.add_reader(client.fileno(), lambda: calls.append(f"read {client.recv(10)!r}"))

    poller.add_writer(client.fileno(), on_writable)
    turn(loop, 3)
    assert calls == ["writer"]  # writable at once; nothing to read yet
    accepted.sendall(b"x")
    turn(loop, 1)
    assert calls == ["writer", "read b'x'"]
    poller.remove_reader(client.fileno())
    dropped: list[str] = []

    def write_once() -> None:
        dropped.append("writer")
        poller.done_writing(accepted.fileno())

    poller.add_writer(accepted.fileno(), write_once)
    turn(loop, 10)
    assert dropped == ["writer"]
    poller.close()
    client.close()
    accepted.close()


def test_a_one_shot_reader_is_called_once_then_its_registration_serves_the_next_watch(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """What waiting for a ClientHello does: read once when the bytes come, then leave the
    socket alone (more bytes wake nobody, however long) until the pump reads it."""
    poller = EpollPoller(loop)
    client, accepted = tcp_pair()
    accepted.setblocking(False)
    calls: list[bytes] = []
    poller.read_once(accepted.fileno(), lambda: calls.append(accepted.recv(10)))
    turn(loop, 3)
    assert calls == []
    client.sendall(b"hello")
    turn(loop, 3)
    assert calls == [b"hello"]
    client.sendall(b"more")  # unread, level-triggered: would wake a reader in every turn
    turn(loop, 10)
    assert calls == [b"hello"]
    poller.add_reader(accepted.fileno(), lambda: calls.append(accepted.recv(10)))
    turn(loop, 1)
    assert calls == [b"hello", b"more"]
    poller.remove_reader(accepted.fileno())
    # Armed again, then given up before anything came: nothing is called later.
    poller.read_once(accepted.fileno(), lambda: calls.append(b"late"))
    poller.remove_reader(accepted.fileno())
    client.sendall(b"x")
    turn(loop, 3)
    assert calls == [b"hello", b"more"]
    poller.forget(accepted.fileno())
    poller.close()
    client.close()
    accepted.close()


def test_a_one_shot_reader_hears_a_reset(loop: asyncio.AbstractEventLoop) -> None:
    poller = EpollPoller(loop)
    client, accepted = tcp_pair()
    accepted.setblocking(False)
    heard: list[str] = []

    def on_readable() -> None:
        try:
            accepted.recv(1)
        except ConnectionResetError:
            heard.append("reset")

    poller.read_once(accepted.fileno(), on_readable)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    turn(loop, 5)
    assert heard == ["reset"]
    poller.forget(accepted.fileno())
    poller.close()
    accepted.close()
