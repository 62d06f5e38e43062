"""Several routes in one process, every-interface listeners, and socket options."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from pyforward.engine.listeners import ipv6_available
from tests.harness import Backend, ForwarderProcess, connect, echo, forwarder


def exchange(port: int, message: bytes, host: str = "127.0.0.1") -> bytes:
    with connect(port, host) as client:
        client.sendall(message)
        client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def tagged(tag: bytes) -> object:
    def handler(conn: socket.socket) -> None:
        while data := conn.recv(4096):
            conn.sendall(tag + data)

    return handler


def test_config_file_forwards_two_ports_in_one_process(tmp_path: Path) -> None:
    with Backend(tagged(b"https:")) as https, Backend(tagged(b"http:")) as http:  # type: ignore[arg-type]
        config = tmp_path / "pyforward.toml"
        config.write_text(
            "connect_timeout = 2\n"
            f'[[route]]\nlisten = "127.0.0.1:0"\ntarget = "{https.address}"\n'
            f'[[route]]\nlisten = "127.0.0.1:0"\ntarget = "{http.address}"\n'
        )
        process = ForwarderProcess(["run", "--config", str(config)])
        try:
            (_, first), (_, second) = process.listen_addresses(2)
            assert exchange(first, b"hello") == b"https:hello"
            assert exchange(second, b"hello") == b"http:hello"
        finally:
            assert process.stop() == 0


def test_repeated_route_flags(tmp_path: Path) -> None:
    with Backend(tagged(b"a:")) as one, Backend(tagged(b"b:")) as two:  # type: ignore[arg-type]
        process = ForwarderProcess(
            [
                "run",
                "--route",
                f"127.0.0.1:0={one.address}",
                "--route",
                f"127.0.0.1:0={two.address}",
            ]
        )
        try:
            (_, first), (_, second) = process.listen_addresses()
            assert exchange(first, b"x") == b"a:x"
            assert exchange(second, b"x") == b"b:x"
        finally:
            process.stop()


@pytest.mark.skipif(not ipv6_available(), reason="the host has no IPv6")
def test_bare_port_listens_on_ipv4_and_ipv6_and_reports_ipv4_clients_as_ipv4() -> None:
    with Backend(echo) as backend, forwarder("--listen", "0", "--target", backend.address) as fwd:
        [(host, port)] = fwd.listen_addresses()
        assert host == "::"
        assert exchange(port, b"four", "127.0.0.1") == b"four"
        assert exchange(port, b"six", "::1") == b"six"
        first, second = fwd.closes(2)
    assert first["client"].startswith("127.0.0.1:")
    assert second["client"].startswith("[::1]:")


def test_keepalive_is_set_on_both_legs_when_asked() -> None:
    with (
        Backend(echo) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address, "--keepalive") as fwd,
        connect(fwd.port) as client,
    ):
        client.sendall(b"k")
        assert client.recv(1) == b"k"
        # ss shows a keepalive timer on each of the forwarder's two connected sockets.
        out = subprocess.run(
            ["ss", "-tnoH", "state", "established", "-p"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        mine = [line for line in out.splitlines() if f"pid={fwd.proc.pid}," in line]
        assert len(mine) == 2, out
        assert all("timer:(keepalive" in line for line in mine), mine
