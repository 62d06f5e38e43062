"""UDP load: client sockets keeping datagrams in flight through a forwarder, and readiness.

One thread, epoll over every client socket. Each socket is a client address (a flow for
pyforward, a forked child for socat) that keeps `window` datagrams outstanding: a reply
sends the next one. A socket that hears nothing for `_LOST_AFTER` seconds counts its
outstanding datagrams as lost and starts its window again, so a drop never stalls the run.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bench.netutil import HOST, BenchError

_LOST_AFTER = 0.2
_BUFFER = 1 << 20


@dataclass(frozen=True)
class Load:
    replies: int
    bytes: int  # payload bytes of the replies
    lost: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.replies / self.seconds

    @property
    def mbit_per_second(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6


@contextlib.contextmanager
def _clients(count: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
            sock.bind((HOST, 0))
            sock.setblocking(False)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def run_load(
    port: int,
    make: Callable[[int], bytes],
    *,
    clients: int,
    window: int,
    seconds: float,
    warmup: float = 0.3,
) -> Load:
    """Send `make(n)` datagrams to 127.0.0.1:port from `clients` sockets; count the replies
    that arrive in `seconds` after `warmup` (socat forks its children in the warm-up)."""
    target = (HOST, port)
    with _clients(clients) as socks:
        by_fd = {sock.fileno(): sock for sock in socks}
        outstanding = dict.fromkeys(by_fd, 0)
        heard = dict.fromkeys(by_fd, time.monotonic())
        poller = select.epoll()
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        sequence = 0

        def fill(fd: int) -> None:
            nonlocal sequence
            while outstanding[fd] < window:
                try:
                    by_fd[fd].sendto(make(sequence), target)
                except BlockingIOError:
                    return
                sequence += 1
                outstanding[fd] += 1

        for fd in by_fd:
            fill(fd)
        started = time.monotonic()
        measure_from, end = started + warmup, started + warmup + seconds
        replies = moved = lost = 0
        try:
            while (now := time.monotonic()) < end:
                for fd, _ in poller.poll(0.05):
                    sock = by_fd[fd]
                    while True:
                        try:
                            data = sock.recv(65536)
                        except BlockingIOError:
                            break
                        except ConnectionRefusedError:
                            raise BenchError(f"nothing answers UDP on {HOST}:{port}") from None
                        outstanding[fd] = max(0, outstanding[fd] - 1)
                        heard[fd] = now
                        if now >= measure_from:
                            replies += 1
                            moved += len(data)
                    fill(fd)
                for fd in by_fd:
                    if now - heard[fd] > _LOST_AFTER and outstanding[fd]:
                        if now >= measure_from:
                            lost += outstanding[fd]
                        outstanding[fd], heard[fd] = 0, now
                        fill(fd)
        finally:
            poller.close()
    return Load(replies, moved, lost, seconds)


def wait_answering(port: int, timeout: float, probe: bytes) -> float:
    """Send `probe` until a reply comes back through 127.0.0.1:port; the monotonic time."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.05)
        while time.monotonic() < deadline:
            sock.sendto(probe, (HOST, port))
            try:
                sock.recv(65536)
            except (TimeoutError, ConnectionRefusedError):
                continue
            return time.monotonic()
    raise BenchError(f"nothing answered UDP on {HOST}:{port} in {timeout}s")
