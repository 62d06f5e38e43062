"""New connections per second, and time to the first response byte of a new connection.

wrk sends one HTTP request per connection (`Connection: close`) to nginx, which answers
3 bytes and closes. wrk starts its clock when it writes the request on a connection that
has just been established, and stops it when the response is complete, so its latency is
the time a brand-new connection waits for its first (and only) response segment: the
forwarder's accept, its connect to the backend, and one relay each way. The no-forwarder
row is wrk's and nginx's own ceiling on this machine.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from pathlib import Path

from bench.backends import nginx_server
from bench.model import Metric, Plan
from bench.netutil import HOST, BenchError
from bench.subjects import Running

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}  # to milliseconds


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise BenchError(f"wrk printed a latency it cannot read: {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, the latency percentiles (ms) and the error count from wrk --latency."""
    values: dict[str, float] = {}
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if rate is None:
        raise BenchError(f"wrk printed no request rate: {' '.join(output.split())[-300:]}")
    values["rate"] = float(rate[1])
    requests = re.search(r"^\s+(\d+) requests in", output, re.M)
    values["requests"] = float(requests[1]) if requests else 0.0
    for percent in ("50", "99"):
        found = re.search(rf"^\s+{percent}%\s+(\S+)", output, re.M)
        if found is None:
            raise BenchError(f"wrk printed no {percent}% latency")
        values[f"p{percent}"] = _milliseconds(found[1])
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors is not None:
        errors += sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx is not None:
        errors += int(non_2xx[1])
    values["errors"] = errors
    return values


def run_wrk(url: str, subject: Running, plan: Plan) -> tuple[dict[str, float], float, float]:
    """wrk's figures (`parse_wrk`) for new connections to `url`, one request each
    (`Connection: close`), with the forwarder's CPU seconds during the run and its length."""
    argv = [
        "wrk", "-t1", f"-c{plan.wrk_connections}", f"-d{plan.wrk_seconds}s", "--latency",
        "-H", "Connection: close", url,
    ]  # fmt: skip
    cpu_before = subject.cpu_seconds()
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=plan.wrk_seconds + 60, check=False
    )
    elapsed = time.monotonic() - started
    cpu = subject.cpu_seconds() - cpu_before
    if done.returncode != 0:
        raise BenchError(f"wrk failed: {' '.join((done.stderr or done.stdout).split())}")
    return parse_wrk(done.stdout), cpu, elapsed


class ConnectionRate:
    name = "connrate"
    title = "new connections (wrk, Connection: close, against nginx)"
    tools = ("wrk", "nginx")
    metrics = (
        Metric("connrate.rate", "new connections per second", "conn/s", "higher"),
        Metric("connrate.ttfb_p50", "time to first byte of a new connection, p50", "ms", "lower"),
        Metric("connrate.ttfb_p99", "time to first byte of a new connection, p99", "ms", "lower"),
        Metric("connrate.cpu", "forwarder CPU during the run", "% of a core", "", True),
        Metric("connrate.cpu_per_conn", "forwarder CPU per connection", "us", "lower", True),
        Metric("connrate.errors", "wrk socket errors and non-2xx answers", "count", "lower"),
    )

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return nginx_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        wrk, cpu, elapsed = run_wrk(f"http://{HOST}:{subject.port}/", subject, plan)
        values = {
            "connrate.rate": wrk["rate"],
            "connrate.ttfb_p50": wrk["p50"],
            "connrate.ttfb_p99": wrk["p99"],
            "connrate.errors": wrk["errors"],
        }
        if subject.subject.forwarder:
            values["connrate.cpu"] = 100 * cpu / elapsed
            if wrk["requests"]:
                values["connrate.cpu_per_conn"] = cpu / wrk["requests"] * 1e6
        return values
