"""A loopback echo server for tests, telling which server answered."""

from __future__ import annotations

import contextlib
import socket
import threading


class NamedEcho:
    """A loopback echo server that prefixes replies with its name."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.name + b":" + conn.recv(1024))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
