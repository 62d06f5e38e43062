"""socat's -v and -x: the dump pyforward-socat writes to stderr is socat's own, byte for byte
but for the timestamps, for the same traffic through the same command line."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pyforward.obs.dump import DumpMode, format_block
from tests.harness import TIMEOUT, Backend, echo, recv_all
from tests.peers_edge import free_port, require
from tests.seed_in_netns import pyforward_socat

PAYLOAD = (
    b"hello\nworld\r\nbin\x01\x02\xff\ttab 0123456789abcdefghijklmnopqrstuvwxyz\x7f~ end\n\n\rx"
)
_STAMP = re.compile(rb"([<>]) \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{9}  ")


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _dump_of(program: list[str], flags: list[str], target: str, workdir: Path) -> bytes:
    """Run `program FLAGS TCP-LISTEN:P,fork UNIX-CONNECT:target`, send PAYLOAD through it
    once, and return its stderr with the timestamps masked."""
    port = free_port()
    err_path = workdir / f"stderr-{port}"
    env = {**os.environ, "PYFORWARD_QUIET": "1", "PYFORWARD_LOG_CONNECTIONS": "none"}
    with err_path.open("wb") as err:
        process = subprocess.Popen(
            [*program, *flags, f"TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1", target],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _accepts(port):  # a probe that sends nothing leaves no block
            assert process.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.005)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(PAYLOAD)  # one write: one read on the other side
            received = b""
            while len(received) < len(PAYLOAD):
                received += client.recv(65536)
            client.shutdown(socket.SHUT_WR)
            assert received + recv_all(client) == PAYLOAD
        deadline = time.monotonic() + TIMEOUT
        while err_path.read_bytes().count(b"length=") < 2:
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.005)
    finally:
        process.terminate()
        process.wait(TIMEOUT)
    output = err_path.read_bytes()
    # What either writes about itself (socat's "N exit", pyforward's logfmt lines) aside.
    lines = [line for line in output.splitlines(keepends=True) if not line.startswith(b"ts=")]
    return _STAMP.sub(rb"\1 TIME  ", b"".join(lines))


@pytest.mark.parametrize("flags", [["-v"], ["-x"], ["-v", "-x"]], ids=["v", "x", "vx"])
def test_dump_is_socats(flags: list[str], tmp_path: Path) -> None:
    socat = require("socat")
    path = tmp_path / "echo.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    with Backend.on_socket(server, echo):
        theirs = _dump_of([socat], flags, f"UNIX-CONNECT:{path}", tmp_path)
        ours = _dump_of(pyforward_socat(), flags, f"UNIX-CONNECT:{path}", tmp_path)
    assert theirs.count(b"length=") == 2  # one block each way
    assert ours == theirs


def test_blocks_count_each_directions_bytes() -> None:
    first = format_block(DumpMode.HEX, ">", b"ab", 0, 0.0)
    second = format_block(DumpMode.HEX, ">", b"cde", 2, 0.0)
    assert first.endswith("  length=2 from=0 to=1\n 61 62\n")
    assert second.endswith("  length=3 from=2 to=4\n 63 64 65\n")
