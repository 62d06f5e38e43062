"""The options a forwarded connection's two sockets carry."""

from __future__ import annotations

import socket

from pyforward.config.settings import build_settings
from tests.harness import Backend, connect, echo
from tests.inprocess import running


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_both_legs_have_no_nagle_delay_the_client_from_its_listener() -> None:
    with Backend(echo) as backend:
        settings = build_settings({"route": [f"127.0.0.1:0={backend.address}"]}, {})
        with running(settings) as (forwarder, _):
            (listener,) = forwarder.listeners
            assert nodelay(listener.sock)
            # The first client shows whether accepted sockets inherit it; the next rely on it.
            for _ in range(3):
                with connect(listener.sock.getsockname()[1]) as client:
                    client.sendall(b"ping")
                    assert client.recv(4) == b"ping"
                    (connection,) = tuple(forwarder.connections)
                    assert connection.target is not None
                    assert nodelay(connection.client)
                    assert nodelay(connection.target)
            assert listener.client_nodelay is True
