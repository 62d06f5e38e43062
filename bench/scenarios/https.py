"""New HTTPS connections per second: a full TLS handshake per connection, the forwarder
passing it on untouched (or, for the subjects of `bench/sni.py`, routing it by its name).

wrk connects to `https://localhost:P/` with `Connection: close`, so every request is a new
TCP connection and a new TLS handshake with nginx (ECDSA P-256), and the ClientHello names
`localhost`. The no-forwarder row is wrk's and nginx's own ceiling on this machine.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bench.model import Metric, Plan
from bench.scenarios.connrate import run_wrk
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
        wrk, cpu, elapsed = run_wrk(f"https://{NAME}:{subject.port}/", subject, plan)
        values = {
            "https.rate": wrk["rate"],
            "https.ttfb_p50": wrk["p50"],
            "https.ttfb_p99": wrk["p99"],
            "https.errors": wrk["errors"],
        }
        if subject.subject.forwarder and wrk["requests"] and elapsed > 0:
            values["https.cpu_per_conn"] = cpu / wrk["requests"] * 1e6
        return values
