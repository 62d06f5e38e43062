"""The forwarder end to end: a real `pyforward run` process, real sockets on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from tests.harness import Backend, connect, echo, fields, forwarder, recv_all

PATHS = [
    pytest.param(relay, loop, id=f"{relay}-{loop}")
    for relay in ("splice", "copy")
    for loop in ("uvloop", "asyncio")
]

_BLOCKS = [os.urandom((1 << 20) + 977 * i) for i in range(5)]


def send_stream(sock: socket.socket, size: int) -> str:
    """Send `size` bytes of random blocks, then shut down writing; return their sha256."""
    digest = hashlib.sha256()
    sent, index = 0, 0
    while sent < size:
        block = _BLOCKS[index % len(_BLOCKS)][: size - sent]
        sock.sendall(block)
        digest.update(block)
        sent += len(block)
        index += 1
    sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def receive_stream(sock: socket.socket) -> tuple[int, str]:
    digest = hashlib.sha256()
    total = 0
    buffer = bytearray(1 << 20)
    while received := sock.recv_into(buffer):
        digest.update(memoryview(buffer)[:received])
        total += received
    return total, digest.hexdigest()


class Duplex:
    """Send and receive at once on one socket; results land in attributes."""

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.sent_digest = ""
        self.received: tuple[int, str] = (0, "")
        self._sender = threading.Thread(target=self._send, args=(sock, size))
        self._sender.start()
        self.received = receive_stream(sock)
        self._sender.join()

    def _send(self, sock: socket.socket, size: int) -> None:
        self.sent_digest = send_stream(sock, size)


@pytest.mark.parametrize(("relay", "loop"), PATHS)
def test_256_mib_each_way_at_once_arrive_intact(relay: str, loop: str) -> None:
    size = 256 << 20
    backend_side: dict[str, Duplex] = {}

    def handler(conn: socket.socket) -> None:
        backend_side["duplex"] = Duplex(conn, size)

    with (
        Backend(handler) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--relay", relay, "--loop", loop
        ) as fwd,
    ):
        with connect(fwd.port) as client:
            client_side = Duplex(client, size)
        [close] = fwd.closes(1)
        assert fwd.stop() == 0
    far = backend_side["duplex"]
    assert client_side.received == (size, far.sent_digest)
    assert far.received == (size, client_side.sent_digest)
    assert close["reason"] == "eof"
    assert (close["up"], close["down"], close["relay"]) == (str(size), str(size), relay)
    stopped = fields(fwd.wait_line("event=stopped"))
    moved = int(stopped["spliced_bytes" if relay == "splice" else "copied_bytes"])
    other = int(stopped["copied_bytes" if relay == "splice" else "spliced_bytes"])
    assert (moved, other) == (2 * size, 0)
    assert f"loop={loop}" in fwd.wait_line("event=start")


@pytest.mark.parametrize("relay", ["splice", "copy"])
def test_reply_sent_after_client_half_close_arrives_whole(relay: str) -> None:
    reply = os.urandom(6 << 20)

    def handler(conn: socket.socket) -> None:
        request = recv_all(conn)  # until the client's EOF
        conn.sendall(hashlib.sha256(request).digest() + reply)

    with (
        Backend(handler) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address, "--relay", relay) as fwd,
    ):
        with connect(fwd.port) as client:
            request = os.urandom(100_000)
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)
            answer = recv_all(client)
        [close] = fwd.closes(1)
    assert answer == hashlib.sha256(request).digest() + reply
    assert close["reason"] == "eof"


@pytest.mark.parametrize("relay", ["splice", "copy"])
def test_client_keeps_sending_after_target_half_closes(relay: str) -> None:
    greeting = os.urandom(3 << 20)
    received: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        conn.sendall(greeting)
        conn.shutdown(socket.SHUT_WR)  # the target is done talking, still listening
        received.append(recv_all(conn))

    with (
        Backend(handler) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address, "--relay", relay) as fwd,
    ):
        with connect(fwd.port) as client:
            assert recv_all(client) == greeting  # EOF reached the client
            late = os.urandom(5 << 20)
            client.sendall(late)
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""
        [close] = fwd.closes(1)
    backend.close()
    assert received == [late]
    assert close["reason"] == "eof"


def test_a_thousand_connections_open_at_once_all_exchange_correctly() -> None:
    count = 1000
    all_in = threading.Event()
    lock = threading.Lock()
    arrived = [0]

    def handler(conn: socket.socket) -> None:
        with lock:
            arrived[0] += 1
            if arrived[0] == count:
                all_in.set()
        echo(conn)

    with (
        Backend(handler) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address) as fwd,
    ):
        clients = [connect(fwd.port) for _ in range(count)]
        try:
            assert all_in.wait(30), f"only {arrived[0]} of {count} reached the target"
            for index, client in enumerate(clients):
                client.sendall(b"message %d\n" % index)
            for index, client in enumerate(clients):
                expected = b"message %d\n" % index
                got = b""
                while len(got) < len(expected):
                    chunk = client.recv(64)
                    assert chunk, f"connection {index} closed early"
                    got += chunk
                assert got == expected
        finally:
            for client in clients:
                client.close()
        closes = fwd.closes(count)
    assert {c["reason"] for c in closes} == {"eof"}
