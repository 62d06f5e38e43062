"""Bulk throughput with iperf3, each direction and both at once, and CPU per GB moved."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.backends import iperf3_server
from bench.model import Metric, Plan
from bench.netutil import HOST, BenchError
from bench.subjects import Running

DIRECTIONS = {
    "up": ([], "client -> backend"),
    "down": (["-R"], "backend -> client"),
    # A stalled run (see _ATTEMPTS) ends after 3 s without a byte, not at its end. Not 1 s:
    # with that, five runs in a row with no forwarder at all timed out on a machine loaded
    # far beyond its cores.
    "both": (["--bidir", "--rcv-timeout", "3000"], "both at once"),
}
# iperf3's server refuses a test while it still tears down the last, and --bidir can stall
# behind a forwarder that connects the two data streams to the server in the other order
# (socat's forks race each other): iperf3 gives each stream its role by the order it
# arrives, so both ends then send on the same stream and neither receives a byte. That
# stall is iperf3's, not the forwarder's, so such a test is run again and counted.
_ATTEMPTS = 5


class NothingReceived(BenchError):
    """iperf3 ran but no byte arrived at any receiver."""


def iperf3_bytes(report: dict[str, Any]) -> tuple[int, float]:
    """(bytes received, seconds) from an iperf3 -J report; both directions with --bidir."""
    end = report["end"]
    total = 0
    seconds = 0.0
    for key in ("sum_received", "sum_received_bidir_reverse"):
        if key in end:
            total += int(end[key]["bytes"])
            seconds = max(seconds, float(end[key]["seconds"]))
    if not total or not seconds:
        raise NothingReceived(f"iperf3 reported no bytes received: {report.get('error', '')}")
    return total, seconds


class Throughput:
    name = "throughput"
    title = "bulk throughput (iperf3, one stream)"
    tools = ("iperf3",)
    metrics = (
        *(
            Metric(f"throughput.{d}", f"throughput, {t}", "Gbit/s", "higher")
            for d, (_, t) in DIRECTIONS.items()
        ),
        *(
            Metric(f"cpu_per_gb.{d}", f"forwarder CPU per GB, {t}", "s/GB", "lower", True)
            for d, (_, t) in DIRECTIONS.items()
        ),
        Metric("throughput.retries", "iperf3 runs repeated (stalled or refused)", "count", ""),
    )

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return iperf3_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        values: dict[str, float] = {"throughput.retries": 0}
        amount = ["-t", str(plan.iperf_seconds)] if plan.iperf_seconds else ["-n", plan.iperf_bytes]
        for direction, (flags, _) in DIRECTIONS.items():
            argv = ["iperf3", "-c", HOST, "-p", str(subject.port), "-J", *amount, *flags]
            moved, seconds, cpu, retries = _run_iperf3(argv, subject.cpu_seconds)
            values["throughput.retries"] += retries
            values[f"throughput.{direction}"] = moved * 8 / seconds / 1e9
            if subject.subject.forwarder:
                values[f"cpu_per_gb.{direction}"] = cpu / (moved / 1e9)
        return values


def _run_iperf3(argv: list[str], cpu_seconds: Callable[[], float]) -> tuple[int, float, float, int]:
    """Bytes received, seconds, forwarder CPU seconds of the run that worked, and how
    many runs failed before it."""
    error = ""
    for attempt in range(_ATTEMPTS):
        if attempt:
            time.sleep(0.1 * attempt)
        cpu_before = cpu_seconds()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        try:
            report: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            error = (done.stderr or done.stdout).strip()[-300:]
            continue
        if done.returncode != 0 or "error" in report:
            error = str(report.get("error", done.stderr.strip()))
            continue
        try:
            moved, seconds = iperf3_bytes(report)
        except NothingReceived as exc:
            error = str(exc)
            continue
        return moved, seconds, cpu_seconds() - cpu_before, attempt
    raise BenchError(f"{' '.join(argv)} failed {_ATTEMPTS} times, last: {error}")
