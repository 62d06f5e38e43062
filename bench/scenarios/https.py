"""New HTTPS connections per second: a full TLS handshake per connection, the forwarder
passing it on untouched (or, for the subjects of `bench/sni.py`, routing it by its name).

wrk connects to `https://localhost:P/` with `Connection: close`, so every request is a new
TCP connection and a new TLS handshake with nginx (ECDSA P-256), and the ClientHello names
`localhost`. The no-forwarder row is wrk's and nginx's own ceiling on this machine.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from bench.model import Metric, Plan
from bench.netutil import BenchError
from bench.scenarios.connrate import parse_wrk
from bench.sni import NAME, https_server
from bench.subjects import Running


class HttpsConnectionRate:
    name = "https"
    title = "new HTTPS connections (wrk, Connection: close, TLS to nginx)"
    tools = ("wrk", "nginx", "openssl")
    metrics = (
        Metric("https.rate", "new HTTPS connections per second", "conn/s", "higher"),
        Metric(
            "https.ttfb_p50", "time to the response of a new HTTPS connection, p50", "ms", "lower"
        ),
        Metric(
            "https.ttfb_p99", "time to the response of a new HTTPS connection, p99", "ms", "lower"
        ),
        Metric("https.cpu_per_conn", "forwarder CPU per HTTPS connection", "us", "lower", True),
        Metric("https.errors", "wrk socket errors and non-2xx answers", "count", "lower"),
    )

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return https_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        argv = [
            "wrk", "-t1", f"-c{plan.wrk_connections}", f"-d{plan.wrk_seconds}s", "--latency",
            "-H", "Connection: close", f"https://{NAME}:{subject.port}/",
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
        wrk = parse_wrk(done.stdout)
        values = {
            "https.rate": wrk["rate"],
            "https.ttfb_p50": wrk["p50"],
            "https.ttfb_p99": wrk["p99"],
            "https.errors": wrk["errors"],
        }
        if subject.subject.forwarder and wrk["requests"] and elapsed > 0:
            values["https.cpu_per_conn"] = cpu / wrk["requests"] * 1e6
        return values
