"""Small-message round trips on one kept connection, with the forwarder's CPU beside them.

The client (this process) and the echo backend (its own process) block or sleep between
messages, so a forwarder that busy-polls would show it as CPU near 100% of a core.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from bench.backends import echo_server
from bench.model import Metric, Plan
from bench.netutil import HOST, BenchError
from bench.stats import percentile
from bench.subjects import Running

_WARMUP = 100


def round_trips(port: int, count: int, size: int) -> list[float]:
    """Send `count` messages of `size` bytes one at a time; return each round trip in us."""
    message = bytes(size)
    buffer = bytearray(size)
    view = memoryview(buffer)
    samples: list[float] = []
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(_WARMUP + count):
            started = time.perf_counter_ns()
            sock.sendall(message)
            received = 0
            while received < size:
                got = sock.recv_into(view[received:])
                if not got:
                    raise BenchError("the echo connection closed mid-message")
                received += got
            if index >= _WARMUP:
                samples.append((time.perf_counter_ns() - started) / 1e3)
    return samples


class Latency:
    name = "latency"
    title = "round trip of a small message on a kept connection (echo backend)"
    tools: tuple[str, ...] = ()
    metrics = (
        Metric("latency.p50", "round trip, p50", "us", "lower"),
        Metric("latency.p99", "round trip, p99", "us", "lower"),
        Metric("latency.p999", "round trip, p99.9", "us", "lower"),
        Metric("latency.cpu", "forwarder CPU during the round trips", "% of a core", "", True),
        Metric("latency.cpu_per_rtt", "forwarder CPU per round trip", "us", "lower", True),
    )

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return echo_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        cpu_before = subject.cpu_seconds()
        started = time.monotonic()
        samples = sorted(round_trips(subject.port, plan.rtt_messages, plan.rtt_size))
        elapsed = time.monotonic() - started
        cpu = subject.cpu_seconds() - cpu_before
        values = {
            "latency.p50": percentile(samples, 50),
            "latency.p99": percentile(samples, 99),
            "latency.p999": percentile(samples, 99.9),
        }
        if subject.subject.forwarder:
            values["latency.cpu"] = 100 * cpu / elapsed
            values["latency.cpu_per_rtt"] = cpu / (plan.rtt_messages + _WARMUP) * 1e6
        return values
