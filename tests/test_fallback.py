"""When splice cannot be had, the connection copies instead: it never dies of it."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from pyforward import server
from pyforward.pipes import Pipe, PipePool
from pyforward.settings import RelayMode, build_settings
from tests.harness import Backend, connect, echo, recv_all
from tests.inprocess import running


class ExhaustedPipePool(PipePool):
    """pipe2 failing as it does when the process is out of descriptors."""

    def acquire(self) -> Pipe:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def test_pipe_creation_failure_falls_back_to_copy_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "PipePool", ExhaustedPipePool)
    payload = os.urandom(3 << 20)
    with Backend(echo) as backend:
        settings = build_settings(
            {"listen": "127.0.0.1:0", "target": [backend.address], "relay": RelayMode.SPLICE}, {}
        )
        with running(settings) as (forwarder, logs):
            port = forwarder.listeners[0].sock.getsockname()[1]
            with connect(port) as client:
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == payload
            stats = forwarder.stats
            assert forwarder.relay == "splice"
            assert stats.spliced_bytes == 0
            assert stats.copied_bytes == 2 * len(payload)
    fallbacks = [line for line in logs.lines if "event=splice-fallback" in line]
    assert len(fallbacks) == 2  # one per direction
    assert all("error=EMFILE" in line for line in fallbacks)
    [close] = [line for line in logs.lines if "event=close" in line]
    assert "relay=copy" in close
    assert "reason=eof" in close
