"""SIGHUP re-reads the config file and applies it without dropping a connection."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.harness import Backend, ForwarderProcess, connect
from tests.test_failures import free_port


def tagged(tag: bytes):  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket) -> None:
        while data := conn.recv(4096):
            conn.sendall(tag + data)

    return handler


def ask(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(message)
    return sock.recv(4096)


def routes(*pairs: tuple[int, str]) -> str:
    return "".join(
        f'[[route]]\nlisten = "127.0.0.1:{port}"\ntarget = "{target}"\n' for port, target in pairs
    )


def test_sighup_applies_a_new_config_and_rejects_a_bad_one(tmp_path: Path) -> None:
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    config = tmp_path / "pyforward.toml"
    with Backend(tagged(b"one:")) as one, Backend(tagged(b"two:")) as two:
        config.write_text(routes((port_a, one.address), (port_c, one.address)))
        fwd = ForwarderProcess(["run", "--config", str(config)])
        try:
            fwd.listen_addresses(2)
            old_a = connect(port_a)
            old_c = connect(port_c)
            assert ask(old_a, b"x") == b"one:x"
            assert ask(old_c, b"x") == b"one:x"

            # A now goes to the second backend, B is new, C is gone.
            config.write_text(routes((port_a, two.address), (port_b, two.address)))
            fwd.proc.send_signal(signal.SIGHUP)
            fwd.wait_line("event=reloaded")
            assert ask(old_a, b"y") == b"one:y"  # established connections are left alone
            assert ask(old_c, b"y") == b"one:y"
            with connect(port_a) as new_a:
                assert ask(new_a, b"z") == b"two:z"
            with connect(port_b) as new_b:
                assert ask(new_b, b"z") == b"two:z"
            try:
                connect(port_c).close()
                raise AssertionError("the removed listener still accepts")
            except ConnectionRefusedError:
                pass

            # A broken file is refused, loudly, and the running config stays.
            config.write_text('[[route]]\nlisten = "127.0.0.1:1"\ntraget = "x:1"\n')
            fwd.proc.send_signal(signal.SIGHUP)
            failed = fwd.wait_line("event=reload-failed")
            assert "unknown key 'traget'" in failed
            with connect(port_a) as again:
                assert ask(again, b"w") == b"two:w"
            old_a.close()
            old_c.close()
        finally:
            assert fwd.stop() == 0
