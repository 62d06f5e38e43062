"""When splice cannot be had, the connection copies instead: it never dies of it."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

import pytest

from pyforward.config.model import RelayMode
from pyforward.config.settings import build_settings
from pyforward.engine import server
from pyforward.relay.pipes import Pipe, PipePool
from tests.harness import Backend, connect, echo, fields, forwarder, recv_all
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
    # Both directions fell back; the log says so once per interval, not once per direction.
    assert len(fallbacks) == 1
    assert "error=EMFILE" in fallbacks[0]
    [close] = [line for line in logs.lines if "event=close" in line]
    assert "relay=copy" in close
    assert "reason=eof" in close


PIPE_SOFT_LIMIT = Path("/proc/sys/fs/pipe-user-pages-soft")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root (to lower fs.pipe-user-pages-soft) and setpriv",
)
def test_shrunken_pipes_of_an_unprivileged_process_are_not_used() -> None:
    """Past fs.pipe-user-pages-soft, an unprivileged process gets one-page pipes; the
    forwarder then copies rather than splice 4 KiB at a time."""
    # Without CAP_SYS_RESOURCE and CAP_SYS_ADMIN the kernel treats root as unprivileged.
    unprivileged = [
        "setpriv",
        "--inh-caps=-all",
        "--bounding-set=-sys_resource,-sys_admin",
        "--",
    ]
    old = PIPE_SOFT_LIMIT.read_text()
    PIPE_SOFT_LIMIT.write_text("1\n")  # every root-owned pipe now counts as over the limit
    try:
        payload = os.urandom(2 << 20)
        with (
            Backend(echo) as backend,
            forwarder(
                "--listen",
                "127.0.0.1:0",
                "--target",
                backend.address,
                "--relay",
                "splice",
                prefix=unprivileged,
            ) as fwd,
        ):
            with connect(fwd.port) as client:
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == payload
            [close] = fwd.closes(1)
            assert fwd.stop() == 0
    finally:
        PIPE_SOFT_LIMIT.write_text(old)
    assert close["relay"] == "copy"
    fallback = fwd.wait_line("event=splice-fallback")
    assert "error=ENOBUFS" in fallback
    stopped = fields(fwd.wait_line("event=stopped"))
    assert (stopped["spliced_bytes"], stopped["copied_bytes"]) == ("0", str(2 * len(payload)))
