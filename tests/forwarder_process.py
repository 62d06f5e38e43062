"""Run `pyforward-socat` as a process and talk through it: for end-to-end tests.

Plain sockets and threads, so the same helpers serve pytest and a script run inside a
network namespace. Every wait is on an event (a stderr line, a socket), bounded by a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEADLINE = 15.0  # seconds; generous for a loaded 2-core CI machine
_LISTEN_LINE = re.compile(r"event=listen address=(\S+)")


def console_script(name: str) -> Path:
    """The installed console script beside this interpreter; the install must have one."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the project (pip install -e .)")
    return path


@contextmanager
def echo_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[str, int]]:
    """A threaded TCP echo server; yields its (host, port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield host, listener.getsockname()[1]
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(DEADLINE)


class Forwarder:
    """A `pyforward-socat` process with its stderr lines collected as they come."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [str(console_script("pyforward-socat")), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first stderr line (from now on) matching `pattern`; fails at EOF or deadline."""
        regex = re.compile(pattern)
        while True:
            try:
                line = self._queue.get(timeout=DEADLINE)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {DEADLINE}s") from None
            if line is None:
                raise AssertionError(f"stderr ended before {pattern!r}: {self.lines}")
            self.lines.append(line)
            if match := regex.search(line):
                return match

    def listen_port(self) -> int:
        """Wait for the `event=listen` line and return the port it names."""
        address = self.wait_for(_LISTEN_LINE.pattern).group(1)
        return int(address.rpartition(":")[2])

    def wait(self) -> int:
        """Wait for the process to exit (it must, within the deadline); its exit code."""
        code = self.process.wait(DEADLINE)
        self._reader.join(DEADLINE)
        if self.process.stderr is not None:
            self.process.stderr.close()
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return code
            if line is not None:
                self.lines.append(line)

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.wait()

    def kill(self) -> None:
        """Make sure the process is gone (a no-op once it has exited and been waited for)."""
        if self.process.poll() is None:
            self.process.kill()
        if self.process.stderr is not None and not self.process.stderr.closed:
            self.wait()


def exchange(host: str, port: int, payload: bytes) -> bytes:
    """Send `payload`, half-close, and return everything read back until EOF."""
    with socket.create_connection((host, port), timeout=DEADLINE) as conn:
        sender = threading.Thread(target=_send_and_half_close, args=(conn, payload))
        sender.start()
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
        sender.join(DEADLINE)
        return b"".join(chunks)


def _send_and_half_close(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
