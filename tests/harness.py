"""Test helpers: a pyforward process on 127.0.0.1, and small threaded TCP peers.

Everything waits on events (a line on stderr, a socket accepting or closing), never on
fixed sleeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

TIMEOUT = 20.0
_LISTEN = re.compile(r"event=listen address=(\S+)")


def fields(line: str) -> dict[str, str]:
    """The key=value pairs of a logfmt line (values here never need quoting)."""
    return dict(re.findall(r'(\w[\w-]*)=("[^"]*"|\S*)', line))


class ForwarderProcess:
    """`python -m pyforward ARGS` (or `program ARGS`) with its stderr collected line by line."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        program: Sequence[str] = (sys.executable, "-m", "pyforward"),
        journal: bool = False,
    ) -> None:
        """`journal`: stderr is a pipe that `JOURNAL_STREAM` names, as systemd sets up the
        journal stream of a service (systemd.exec(5))."""
        self.args = list(args)
        self.lines: list[str] = []
        self.close_lines: list[dict[str, str]] = []
        self._changed = threading.Condition()
        env = {**os.environ, **(env or {})}
        read_end, write_end = os.pipe()
        if journal:
            stat = os.fstat(write_end)
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        try:
            self.proc = subprocess.Popen(
                [*prefix, *program, *self.args],
                stdout=subprocess.DEVNULL,
                stderr=write_end,
                env=env,
            )
        finally:
            os.close(write_end)
        self.stderr = open(read_end, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                if "event=close " in line:
                    self.close_lines.append(fields(line))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # EOF marker, wakes waiters
            self._changed.notify_all()

    def wait_line(self, pattern: str, timeout: float = TIMEOUT, start: int = 0) -> str:
        """The first stderr line (from index `start`) matching `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            index = start
            while True:
                while index < len(self.lines):
                    if regex.search(self.lines[index]):
                        return self.lines[index]
                    index += 1
                if self.proc.poll() is not None and self.lines and self.lines[-1] == "":
                    raise AssertionError(
                        f"pyforward exited ({self.proc.returncode}) without {pattern!r}:\n"
                        + "\n".join(self.lines)
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r} in {timeout}s:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(remaining)

    def closes(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, str]]:
        """Wait until `count` connections have logged their close line; return them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self.close_lines
                if len(found) >= count:
                    return list(found)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{len(found)} close lines, wanted {count}:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(remaining)

    def listen_addresses(self, count: int = 0) -> list[tuple[str, int]]:
        """The addresses the forwarder listens on, from its `event=listen` lines."""
        count = count or max(1, sum(a in ("--listen", "-l", "--route", "-r") for a in self.args))
        found: list[tuple[str, int]] = []
        start = 0
        for _ in range(count):
            line = self.wait_line(_LISTEN.pattern, start=start)
            start = self.lines.index(line) + 1
            match = _LISTEN.search(line)
            assert match is not None
            host, _, port = match.group(1).rpartition(":")
            found.append((host.strip("[]"), int(port)))
        return found

    @property
    def port(self) -> int:
        return self.listen_addresses()[0][1]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout)
        self.stderr.close()
        return code

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def output(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def forwarder(
    *args: str,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    journal: bool = False,
) -> Iterator[ForwarderProcess]:
    """`pyforward run ARGS`, listening once the block starts; `prefix` wraps the command."""
    process = ForwarderProcess(["run", *args], env=env, prefix=prefix, journal=journal)
    try:
        process.wait_line(_LISTEN.pattern)
        yield process
    finally:
        process.stop(signal.SIGKILL if process.proc.poll() is None else signal.SIGTERM)


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion; `prefix` wraps it (e.g. in `unshare --net`)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "pyforward", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class Backend:
    """A threaded TCP server on 127.0.0.1:0 running `handler(conn)` per connection."""

    def __init__(
        self,
        handler: Callable[[socket.socket], None],
        backlog: int = 4096,
        sock: socket.socket | None = None,
    ) -> None:
        self.sock = sock or socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port: int = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.handler = handler
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @classmethod
    def on_socket(cls, sock: socket.socket, handler: Callable[[socket.socket], None]) -> Backend:
        """A backend on a listening socket the caller made."""
        return cls(handler, sock=sock)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError as exc:
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._acceptor.join(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo(conn: socket.socket) -> None:
    """Echo until EOF, then close."""
    while data := conn.recv(65536):
        conn.sendall(data)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def pattern_bytes(seed: int, size: int) -> bytes:
    """Deterministic, non-repeating-looking data: a hash chain, cheap to produce."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    rotated = [block[i:] + block[:i] for i in range(0, 64, 7)]
    out = bytearray()
    index = 0
    while len(out) < size:
        out += rotated[index % len(rotated)]
        index += 1
    return bytes(out[:size])


def connect(port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    return sock


def reads_until_closed(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    """Read until the peer closes: (bytes, None) on a clean EOF, (bytes, error) on a reset."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, BrokenPipeError) as exc:
        return b"".join(chunks), exc
    return b"".join(chunks), None


def connect_and_read(
    port: int, message: bytes = b"", timeout: float = TIMEOUT
) -> tuple[bytes, BaseException | None]:
    """Connect, send `message`, read until the forwarder closes: as `reads_until_closed`.

    A forwarder that resets a client at once (its target refused within microseconds,
    or could not be tried at all) can do so before the client's own connect() returns,
    which then raises the reset: that too is the reset the client was told.
    """
    try:
        with connect(port, timeout=timeout) as client:
            if message:
                client.sendall(message)
            return reads_until_closed(client)
    except ConnectionResetError as exc:
        return b"", exc


def python_path() -> Path:
    return Path(sys.executable)
