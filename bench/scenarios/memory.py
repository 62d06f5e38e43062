"""Memory of the forwarder with idle and with streaming connections.

PSS (proportional set size) shares each page among the processes that map it, so it is
the fair sum over socat's forks; RSS is printed beside it and overstates socat, whose
forks share most of their pages. Each connection is made to carry one byte to the echo
backend and back before it counts, so the forwarder has connected it through.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path

from bench.backends import echo_server
from bench.model import Metric, Plan
from bench.netutil import HOST, BenchError
from bench.subjects import Running

_WINDOW = 4  # connections being set up at once: socat listens with a backlog of 5
_SETUP_TIMEOUT = 60.0
_CHUNK = memoryview(bytes(1 << 16))


def open_echoed(port: int, count: int) -> list[socket.socket]:
    """`count` connections to 127.0.0.1:port, each having echoed one byte back."""
    selector = selectors.DefaultSelector()
    ready: list[socket.socket] = []
    setting_up = 0
    opened = 0
    deadline = time.monotonic() + _SETUP_TIMEOUT
    try:
        while len(ready) < count:
            while opened < count and setting_up < _WINDOW:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((HOST, port))
                selector.register(sock, selectors.EVENT_WRITE, sock)
                opened += 1
                setting_up += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"only {len(ready)} of {count} connections came up in time")
            for key, _ in selector.select(remaining):
                sock = key.data
                if key.events == selectors.EVENT_WRITE:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise BenchError(f"connection {opened} failed: error {code}")
                    sock.send(b"x")
                    selector.modify(sock, selectors.EVENT_READ, sock)
                    continue
                if sock.recv(1) != b"x":
                    raise BenchError("a connection closed before its byte came back")
                selector.unregister(sock)
                ready.append(sock)
                setting_up -= 1
    except BaseException:
        for key in list(selector.get_map().values()):
            key.data.close()
        close_all(ready)
        raise
    finally:
        selector.close()
    return ready


def stream(connections: list[socket.socket], seconds: float, sample: Callable[[], None]) -> int:
    """Send and read back on every connection as fast as they go for `seconds`, calling
    `sample` three quarters of the way through; return the bytes read back."""
    selector = selectors.DefaultSelector()
    sink = bytearray(1 << 16)
    received = 0
    for sock in connections:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, sock)
    started = time.monotonic()
    sample_at = started + seconds * 0.75
    end = started + seconds
    sampled = False
    try:
        while (now := time.monotonic()) < end:
            if not sampled and now >= sample_at:
                sample()
                sampled = True
            for key, events in selector.select(0.05):
                sock = key.data
                if events & selectors.EVENT_READ:
                    got = sock.recv_into(sink)
                    if not got:
                        raise BenchError("a streaming connection closed")
                    received += got
                if events & selectors.EVENT_WRITE:
                    with contextlib.suppress(BlockingIOError):
                        sock.send(_CHUNK)
        if not sampled:
            sample()
    finally:
        selector.close()
    return received


def close_all(connections: list[socket.socket]) -> None:
    for sock in connections:
        sock.close()


class IdleMemory:
    name = "memory-idle"
    title = "forwarder memory with idle connections (PSS summed over its processes)"
    tools: tuple[str, ...] = ()

    def __init__(self, plan: Plan) -> None:
        small, large = plan.idle_counts
        self.metrics = (
            Metric("memory.pss_idle_small", f"PSS, {small} idle connections", "MiB", "lower", True),
            Metric("memory.rss_idle_small", f"RSS, {small} idle connections", "MiB", "", True),
            Metric("memory.pss_idle_large", f"PSS, {large} idle connections", "MiB", "lower", True),
            Metric("memory.rss_idle_large", f"RSS, {large} idle connections", "MiB", "", True),
            Metric(
                "memory.pss_per_idle",
                f"PSS per idle connection, slope {small} -> {large}",
                "KiB",
                "lower",
                True,
            ),
            Metric("memory.processes", f"processes at {large} idle connections", "count", "", True),
        )

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return echo_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        if not subject.subject.forwarder:
            return {}
        small, large = plan.idle_counts
        connections = open_echoed(subject.port, small)
        try:
            at_small = subject.memory()
            connections += open_echoed(subject.port, large - small)
            at_large = subject.memory()
        finally:
            close_all(connections)
        return {
            "memory.pss_idle_small": at_small.pss_kib / 1024,
            "memory.rss_idle_small": at_small.rss_kib / 1024,
            "memory.pss_idle_large": at_large.pss_kib / 1024,
            "memory.rss_idle_large": at_large.rss_kib / 1024,
            "memory.pss_per_idle": (at_large.pss_kib - at_small.pss_kib) / (large - small),
            "memory.processes": at_large.processes,
        }


class StreamingMemory:
    name = "memory-stream"
    title = "forwarder memory with connections streaming both ways (echo backend)"
    tools: tuple[str, ...] = ()

    def __init__(self, plan: Plan) -> None:
        streams = plan.streams
        self.metrics = (
            Metric(
                "memory.pss_stream", f"PSS, {streams} streaming connections", "MiB", "lower", True
            ),
            Metric("memory.rss_stream", f"RSS, {streams} streaming connections", "MiB", "", True),
        )

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return echo_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        if not subject.subject.forwarder:
            return {}
        connections = open_echoed(subject.port, plan.streams)
        during: list[float] = []

        def sample() -> None:
            memory = subject.memory()
            during.extend((memory.pss_kib / 1024, memory.rss_kib / 1024))

        try:
            moved = stream(connections, plan.stream_seconds, sample)
        finally:
            close_all(connections)
        if not moved:
            raise BenchError("no byte came back over the streaming connections")
        return {"memory.pss_stream": during[0], "memory.rss_stream": during[1]}
