"""The subjects: what stands between the client and the backend, each started fresh."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench import sni
from bench.accounting import Memory, ProcessSet, SetFactory, memory_of
from bench.netutil import HOST, NGINX_STREAM_MODULE, BenchError, free_port, wait_accepting
from bench.udp_load import wait_answering

REPO = Path(__file__).resolve().parent.parent
_START_TIMEOUT = 10.0
_STOP_GRACE = 2.0
SCRAPE_INTERVAL = 1.0  # seconds; Prometheus's default is 15, so this is 15 times the load

HAPROXY_CONFIG = """\
global
{threads}    maxconn 4096
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 5m
    timeout server 5m
listen forward
    bind {host}:{port}
    server backend {server}
"""

# nginx's stream proxy as its documentation sets it up: a worker per core, one shared
# listening socket for TCP (no reuseport), default buffers. {server} is the rest of the
# server block (UDP: NGINX_UDP_SERVER).
NGINX_STREAM_CONFIG = """\
load_module {module};
{user}daemon off;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 4096; }}
stream {{
    server {{
        listen {host}:{port}{listen};
        proxy_pass {upstream};
{server}    }}
}}
"""
# UDP as ngx_stream_core_module and ngx_stream_proxy_module set it up. `reuseport`: the listen
# docs say a UDP listener needs it for the datagrams of one client address to stay in one
# session (on Linux it keeps each client address in one worker; without it any worker may
# read any datagram and start a session of its own for it), and their UDP examples use it.
# `proxy_timeout 20s` is their examples' value (the default is 10 minutes). How a session
# ends follows the traffic (UdpPattern):
# - queries (DNS): `proxy_responses 1`, the documented DNS setup: a session per query, over
#   once its one answer is back.
# - flows (the echoes): no proxy_responses, whose default is no limit, and no proxy_requests
#   (0: no limit): a session per client address, forwarding every datagram and every reply
#   until 20 s pass idle, as socat's fork and pyforward's flow do. `proxy_responses 1` would
#   forward them all too, but would end the session each time the replies caught up with
#   the datagrams in flight, and open a new one with a new socket to the target for the next
#   datagram: session churn that no flow of datagrams (QUIC, WireGuard) has.
NGINX_UDP_SERVER = {
    "queries": "        proxy_timeout 20s;\n        proxy_responses 1;\n",
    "flows": "        proxy_timeout 20s;\n",
}


@dataclass(frozen=True)
class Subject:
    """One way of getting bytes from the client to the backend."""

    key: str  # short name: JSON, command line, chart
    label: str  # what the table prints
    kind: str  # none, socat, haproxy, nginx, pyforward
    options: tuple[str, ...] = ()
    # A line its log shows once it serves, when accepting a connection is not proof of that
    # (pyforward's workers: the main process binds before the workers start).
    ready_line: str = ""

    @property
    def forwarder(self) -> bool:
        return self.kind != "none"

    @property
    def forwards_udp(self) -> bool:
        # HAProxy relays TCP (and QUIC it terminates) only.
        return self.kind in ("none", "socat", "nginx", "pyforward")

    @property
    def metrics(self) -> bool:
        return "metrics" in self.options


SUBJECTS = (
    Subject("none", "no forwarder", "none"),
    Subject("socat", "socat as deployed", "socat"),
    Subject("socat-b256k", "socat -b262144", "socat", ("-b262144",)),
    Subject("haproxy", "HAProxy splice-auto", "haproxy"),
    Subject("haproxy-default", "HAProxy default threads", "haproxy", ("default",)),
    Subject("nginx-stream", "nginx stream auto", "nginx"),
    Subject("pyforward-splice", "pyforward splice uvloop", "pyforward", ("splice", "uvloop")),
    Subject("pyforward-copy", "pyforward copy uvloop", "pyforward", ("copy", "uvloop")),
    # The same as pyforward-splice, with /metrics on and scraped every second throughout.
    Subject(
        "pyforward-splice-metrics",
        "pyforward splice uvloop, metrics scraped 1/s",
        "pyforward",
        ("splice", "uvloop", "metrics"),
    ),
    Subject(
        "pyforward-splice-asyncio", "pyforward splice asyncio", "pyforward", ("splice", "asyncio")
    ),
    Subject("pyforward-copy-asyncio", "pyforward copy asyncio", "pyforward", ("copy", "asyncio")),
    Subject(
        "pyforward-workers",
        "pyforward --workers auto",
        "pyforward",
        ("splice", "uvloop", "workers=auto"),
        ready_line="event=ready workers=",
    ),
)
# Routing by TLS server name (bench/sni.py): run only when named, for the https scenario.
SNI_SUBJECTS = (
    Subject("haproxy-sni", "HAProxy req.ssl_sni", "haproxy-sni"),
    Subject("nginx-sni", "nginx stream ssl_preread", "nginx-sni"),
    Subject("pyforward-sni", "pyforward sni", "pyforward-sni"),
    Subject("pyforward-sni-pp2", "pyforward sni + PROXY v2", "pyforward-sni-pp2"),
)
BASELINE = "socat"  # ratios are to socat as deployed
SECOND_BASELINE = "haproxy-default"  # and to HAProxy as it runs by default

# Where a subject forwards: a port on 127.0.0.1, or the path of a UNIX stream socket.
Target = int | str

# What a client address sends over UDP. queries: each datagram a request with one reply, the
# next one a new exchange (DNS). flows: a stream of datagrams with many in flight (QUIC).
UdpPattern = Literal["queries", "flows"]


@dataclass(frozen=True)
class UdpTraffic:
    """A UDP scenario's traffic: a datagram whose reply shows the forward serves, and its
    pattern (which only nginx's session settings follow)."""

    probe: bytes
    pattern: UdpPattern


_TARGET_FORMS = {
    "socat": ("TCP:{host}:{port}", "UNIX-CONNECT:{path}"),
    "haproxy": ("{host}:{port}", "{path}"),  # HAProxy reads an absolute path as UNIX
    "pyforward": ("{host}:{port}", "unix:{path}"),
}


def target_word(kind: str, target: Target) -> str:
    """How `kind` names `target` on its command line or in its config."""
    tcp, unix = _TARGET_FORMS[kind]
    if isinstance(target, str):
        return unix.format(path=target)
    return tcp.format(host=HOST, port=target)


def command(
    subject: Subject,
    port: int,
    target: Target,
    workdir: Path,
    *,
    udp: UdpPattern | None = None,
    metrics_port: int = 0,
) -> list[str]:
    """The command line that makes `subject` listen on `port` and forward to `target`, over
    UDP with `udp` traffic (and, for a subject with metrics, serve them on `metrics_port`)."""
    if udp is not None:
        assert isinstance(target, int), "a UDP target is a port"
        return udp_command(subject, port, target, workdir, pattern=udp, metrics_port=metrics_port)
    if subject.kind == "socat":
        return [
            "socat",
            *subject.options,
            f"TCP-LISTEN:{port},fork,reuseaddr,bind={HOST}",
            target_word("socat", target),
        ]
    if subject.kind == "haproxy":
        config = workdir / f"haproxy-{port}.cfg"
        threads = "" if subject.options == ("default",) else "    nbthread 1\n"
        server = target_word("haproxy", target)
        text = HAPROXY_CONFIG.format(threads=threads, host=HOST, port=port, server=server)
        config.write_text(text)
        return ["haproxy", "-db", "-f", str(config)]
    if subject.kind == "nginx":
        upstream = f"unix:{target}" if isinstance(target, str) else f"{HOST}:{target}"
        return nginx_command(port, upstream, workdir)
    if subject.kind == "pyforward":
        relay, loop = subject.options[:2]
        metrics = ["--metrics", f"{HOST}:{metrics_port}"] if metrics_port else []
        counts = [o.removeprefix("workers=") for o in subject.options if o.startswith("workers=")]
        workers = ["--workers", *counts, "--log-connections", "none"] if counts else ["--quiet"]
        return [
            sys.executable,
            "-m",
            "pyforward",
            "run",
            "--listen",
            f"{HOST}:{port}",
            "--target",
            target_word("pyforward", target),
            "--relay",
            relay,
            "--loop",
            loop,
            # With workers: info lines, to see them all serving (`ready_line`), but no close lines.
            *workers,
            *metrics,
        ]
    if subject.kind in {s.kind for s in SNI_SUBJECTS}:
        assert isinstance(target, int), "the sni subjects forward to a TCP port"
        return sni.command(subject.kind, port, target, workdir)
    raise ValueError(f"{subject.key} runs no program")


def nginx_command(
    port: int, upstream: str, workdir: Path, listen: str = "", server: str = ""
) -> list[str]:
    """nginx's stream proxy on `port` to `upstream`, its config and files in a new directory."""
    directory = workdir / f"nginx-stream-{port}"
    directory.mkdir()
    config = directory / "nginx.conf"
    config.write_text(
        NGINX_STREAM_CONFIG.format(
            module=NGINX_STREAM_MODULE,
            # As root, nginx's workers run as nobody: they could not open a UNIX target in
            # the benchmark's private directory.
            user="user root;\n" if os.geteuid() == 0 else "",
            dir=directory,
            host=HOST,
            port=port,
            listen=listen,
            upstream=upstream,
            server=server,
        )
    )
    return ["nginx", "-e", "stderr", "-p", str(directory), "-c", str(config)]


def udp_command(
    subject: Subject,
    port: int,
    target: int,
    workdir: Path,
    *,
    pattern: UdpPattern,
    metrics_port: int = 0,
) -> list[str]:
    """The UDP forward: socat forks a child per peer; pyforward keeps a flow per peer; nginx
    a session per peer or per query (NGINX_UDP_SERVER)."""
    if subject.kind == "nginx":
        upstream = f"{HOST}:{target}"
        return nginx_command(port, upstream, workdir, " udp reuseport", NGINX_UDP_SERVER[pattern])
    if subject.kind == "socat":
        return [
            "socat",
            *subject.options,
            f"UDP-LISTEN:{port},fork,reuseaddr,bind={HOST}",
            f"UDP:{HOST}:{target}",
        ]
    if subject.kind == "pyforward":
        loop = subject.options[1]
        counts = [o.removeprefix("workers=") for o in subject.options if o.startswith("workers=")]
        # With workers: info lines, to see them all serving (`ready_line`), but no close lines.
        workers = ["--workers", *counts, "--log-connections", "none"] if counts else ["--quiet"]
        return [
            sys.executable,
            "-m",
            "pyforward",
            "run",
            "--listen",
            f"{HOST}:{port}",
            "--target",
            f"{HOST}:{target}",
            "--protocol",
            "udp",
            "--loop",
            loop,
            *workers,
            *(["--metrics", f"{HOST}:{metrics_port}"] if metrics_port else []),
        ]
    raise ValueError(f"{subject.key} forwards no UDP")


def child_env() -> dict[str, str]:
    """The environment of started programs: this checkout's pyforward comes first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class Running:
    """A started subject: where clients connect, and how to count what it uses."""

    subject: Subject
    port: int  # 0: none, the client goes to `unix` itself
    processes: ProcessSet | None
    started: float = 0.0  # monotonic time of exec
    accepting: float = 0.0  # monotonic time the first connection was accepted
    unix: str | None = None  # the UNIX socket of the backend, for the no-forwarder subject

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by every process of the forwarder (0 with none)."""
        return self.processes.cpu_seconds() if self.processes is not None else 0.0

    def memory(self) -> Memory:
        """Summed PSS and RSS over the forwarder's processes."""
        if self.processes is None:
            return Memory(0, 0, 0)
        return memory_of(self.processes.pids())


@dataclass(frozen=True)
class Environment:
    workdir: Path
    sets: SetFactory


@contextlib.contextmanager
def running(
    subject: Subject, target: Target, env: Environment, udp: UdpTraffic | None = None
) -> Iterator[Running]:
    """Start `subject` forwarding to `target`; stop it and all its processes after. With
    `udp`, it forwards UDP, and is ready once the probe comes back through it."""
    if not subject.forwarder:
        if isinstance(target, str):
            yield Running(subject, 0, None, unix=target)
        else:
            yield Running(subject, target, None)
        return
    port = free_port()
    metrics_port = free_port() if subject.metrics else 0
    pattern = udp.pattern if udp is not None else None
    argv = command(subject, port, target, env.workdir, udp=pattern, metrics_port=metrics_port)
    processes = env.sets.new()
    log_path = env.workdir / f"{subject.key}-{port}.log"
    with log_path.open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=child_env(),
            # The runner starts no threads, so running code between fork and exec is safe;
            # it puts the subject in its cgroup before it can fork a single child.
            preexec_fn=processes.preexec,  # noqa: PLW1509
            process_group=0,
        )
    processes.attach(process.pid)
    try:
        try:
            if udp is None:
                accepting = wait_accepting(port, _START_TIMEOUT, process, subject.label)
            else:
                accepting = wait_answering(port, _START_TIMEOUT, udp.probe)
            if subject.ready_line:
                accepting = wait_line(log_path, subject.ready_line, _START_TIMEOUT, process)
        except BenchError as exc:
            raise BenchError(f"{exc}; its output: {_tail(log_path)}") from None
        with scraping(metrics_port):
            yield Running(subject, port, processes, started, accepting)
    finally:
        stop(process, processes)


# The scraper is a process of its own: a thread of the benchmark would take the GIL from the
# clients that time the round trips, and charge the scrapes to the wrong side.
_SCRAPER = """
import sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
while True:
    with urllib.request.urlopen(url, timeout=5) as answer:
        answer.read()
    print("scraped", flush=True)
    time.sleep(interval)
"""


@contextlib.contextmanager
def scraping(port: int, interval: float = SCRAPE_INTERVAL) -> Iterator[None]:
    """GET /metrics on `port` every `interval` seconds until the block ends (nothing for
    port 0). A scrape that fails is a benchmark error: the figures would not be what they
    claim to be."""
    if not port:
        yield
        return
    url = f"http://{HOST}:{port}/metrics"
    scraper = subprocess.Popen(
        [sys.executable, "-c", _SCRAPER, url, str(interval)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert scraper.stdout is not None
    try:
        # Its interpreter's start and its first scrape are over before anything is measured.
        failed = not scraper.stdout.readline()
        if not failed:
            yield
            failed = scraper.poll() is not None
    finally:
        scraper.kill()
        _, errors = scraper.communicate()  # its stdout: a line a second, never full
    if failed:
        last = errors.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise BenchError(f"scraping {url} failed: {last[0]}")


def wait_line(path: Path, text: str, timeout: float, process: subprocess.Popen[bytes]) -> float:
    """Poll `path` until a line holds `text`; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if process.poll() is not None:
            raise BenchError(f"exited with code {process.returncode} before {text!r}")
        if time.monotonic() > deadline:
            raise BenchError(f"no {text!r} in its log in {timeout}s")
        time.sleep(0.005)
    return time.monotonic()


def stop(process: subprocess.Popen[bytes], processes: ProcessSet) -> None:
    """SIGTERM the subject's process group, then SIGKILL whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_STOP_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # Forks that left the group (none of ours do) would still be in the cgroup.
    deadline = time.monotonic() + _STOP_GRACE
    while processes.pids() and time.monotonic() < deadline:
        for pid in processes.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    processes.close()


def _tail(path: Path, limit: int = 300) -> str:
    text = path.read_text(errors="replace").strip()
    return " ".join(text[-limit:].split()) or "(none)"


def select(keys: list[str] | None) -> list[Subject]:
    """The subjects named (all when None), in the suite's order."""
    if not keys:
        return list(SUBJECTS)
    every = (*SUBJECTS, *SNI_SUBJECTS)
    known = {s.key: s for s in every}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise BenchError(f"unknown subject {', '.join(unknown)} (known: {', '.join(known)})")
    return [s for s in every if s.key in keys]
