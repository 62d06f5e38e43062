"""UDP: DNS queries per second to dnsmasq, and datagram throughput to an echo backend.

socat forwards UDP as `UDP-LISTEN:P,fork,reuseaddr UDP:...`: a forked child per client
address. pyforward holds a flow (one socket to the target) per client address in one
process. nginx's stream proxy holds a session (one socket to the target) per DNS query, or
per client address for the echoes (bench/subjects.py, NGINX_UDP_SERVER). The clients are the
bench process's own sockets, each a client address.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.model import Metric, Plan
from bench.netutil import BenchError, free_port
from bench.subjects import Running, UdpTraffic
from bench.udp_load import run_load, wait_answering

DNS_CLIENTS = 20  # as many stub resolvers, one query in flight each
DATAGRAM = 1400  # a QUIC-sized datagram
THROUGHPUT_CLIENTS = 4
THROUGHPUT_WINDOW = 16


def _seconds(plan: Plan) -> float:
    """How long the load runs: the connection-rate scenario's time, cut short in a smoke run."""
    return 0.2 if plan.name == "smoke" else float(plan.wrk_seconds)


def dns_query(query_id: int) -> bytes:
    """An A query for example.test (RFC 1035 4.1), recursion desired."""
    header = struct.pack("!HHHHHH", query_id & 0xFFFF, 0x0100, 1, 0, 0, 0)
    return header + b"\x07example\x04test\x00" + struct.pack("!HH", 1, 1)


@contextlib.contextmanager
def _udp_program(argv: list[str], port: int, probe: bytes, workdir: Path) -> Iterator[int]:
    log_path = workdir / f"udp-backend-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        try:
            wait_answering(port, 10.0, probe)
        except BenchError as exc:
            output = " ".join(log_path.read_text(errors="replace").split())[-300:]
            raise BenchError(f"{exc}; its output: {output or '(none)'}") from None
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def dnsmasq_server(workdir: Path) -> contextlib.AbstractContextManager[int]:
    """dnsmasq answering example.test itself, with no upstream; yields its port."""
    port = free_port()
    user = os.environ.get("USER") or "root"
    argv = [
        shutil.which("dnsmasq") or "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--address=/example.test/127.0.0.5",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--cache-size=0",
        f"--pid-file={workdir / f'dnsmasq-{port}.pid'}",
        f"--user={user}",
    ]
    return _udp_program(argv, port, dns_query(1), workdir)


def udp_echo_server(workdir: Path) -> contextlib.AbstractContextManager[int]:
    port = free_port()
    script = Path(__file__).resolve().parent.parent / "udp_echo.py"
    return _udp_program([sys.executable, str(script), str(port)], port, b"probe", workdir)


class UdpQueries:
    name = "udp-dns"
    title = f"DNS queries/s through a UDP forward ({DNS_CLIENTS} clients, dnsmasq)"
    tools: tuple[str, ...] = ("dnsmasq",)
    udp = UdpTraffic(dns_query(1), "queries")
    metrics = (
        Metric("udp-dns.rate", "DNS queries answered", "1/s", "higher"),
        Metric("udp-dns.cpu_per_query", "forwarder CPU per query", "us", "lower", True),
    )

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return dnsmasq_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        cpu_before = subject.cpu_seconds()
        load = run_load(
            subject.port, dns_query, clients=DNS_CLIENTS, window=1, seconds=_seconds(plan)
        )
        cpu = subject.cpu_seconds() - cpu_before
        values = {"udp-dns.rate": load.per_second}
        if subject.subject.forwarder and load.replies:
            values["udp-dns.cpu_per_query"] = cpu / load.replies * 1e6
        return values


class UdpThroughput:
    name = "udp-throughput"
    title = (
        f"{DATAGRAM}-byte datagrams echoed through a UDP forward "
        f"({THROUGHPUT_CLIENTS} clients, {THROUGHPUT_WINDOW} in flight each)"
    )
    tools: tuple[str, ...] = ()
    udp = UdpTraffic(b"probe", "flows")
    metrics = (
        Metric("udp-throughput.rate", "datagram payload echoed", "Mbit/s", "higher"),
        Metric("udp-throughput.lost", "datagrams lost", "per 1000", "lower"),
    )

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return udp_echo_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        payload = bytes(DATAGRAM)
        load = run_load(
            subject.port,
            lambda _n: payload,
            clients=THROUGHPUT_CLIENTS,
            window=THROUGHPUT_WINDOW,
            seconds=_seconds(plan),
        )
        sent = load.replies + load.lost
        return {
            "udp-throughput.rate": load.mbit_per_second,
            "udp-throughput.lost": 1000 * load.lost / sent if sent else 0.0,
        }
