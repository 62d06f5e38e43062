"""Bulk throughput with iperf3, each direction and both at once, and CPU per GB moved."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.backends import iperf3_server
from bench.model import Metric, Plan
from bench.netutil import HOST, BenchError
from bench.subjects import Running

DIRECTIONS = {
    "up": ([], "client -> backend"),
    "down": (["-R"], "backend -> client"),
    "both": (["--bidir"], "both at once"),
}
_ATTEMPTS = 3  # iperf3's server refuses a test while it still tears down the last


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
        raise BenchError(f"iperf3 reported no bytes received: {report.get('error', '')}")
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
    )

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return iperf3_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        values: dict[str, float] = {}
        amount = ["-t", str(plan.iperf_seconds)] if plan.iperf_seconds else ["-n", plan.iperf_bytes]
        for direction, (flags, _) in DIRECTIONS.items():
            argv = ["iperf3", "-c", HOST, "-p", str(subject.port), "-J", *amount, *flags]
            cpu_before = subject.cpu_seconds()
            report = _run_iperf3(argv)
            cpu = subject.cpu_seconds() - cpu_before
            moved, seconds = iperf3_bytes(report)
            values[f"throughput.{direction}"] = moved * 8 / seconds / 1e9
            if subject.subject.forwarder:
                values[f"cpu_per_gb.{direction}"] = cpu / (moved / 1e9)
        return values


def _run_iperf3(argv: list[str]) -> dict[str, Any]:
    error = ""
    for attempt in range(_ATTEMPTS):
        if attempt:
            time.sleep(0.2 * attempt)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        try:
            report: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            error = (done.stderr or done.stdout).strip()[-300:]
            continue
        if done.returncode == 0 and "error" not in report:
            return report
        error = str(report.get("error", done.stderr.strip()))
    raise BenchError(f"{' '.join(argv)} failed: {error}")
