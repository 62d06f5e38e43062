"""The backends every subject forwards to: iperf3, nginx and an echo server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.netutil import HOST, BenchError, free_port, wait_accepting

_START_TIMEOUT = 10.0

NGINX_CONFIG = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log error;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {host}:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


@contextlib.contextmanager
def program(argv: list[str], port: int, name: str, workdir: Path) -> Iterator[int]:
    """Run `argv` until the block ends, once it accepts on `port`; its output goes to a log
    in `workdir`, whose tail a failure to start quotes."""
    log_path = workdir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        try:
            wait_accepting(port, _START_TIMEOUT, process, name)
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


def iperf3_server(workdir: Path) -> contextlib.AbstractContextManager[int]:
    """An iperf3 server on a free loopback port; yields the port."""
    port = free_port()
    return program(["iperf3", "-s", "-B", HOST, "-p", str(port)], port, "iperf3", workdir)


def nginx_server(workdir: Path) -> contextlib.AbstractContextManager[int]:
    """nginx, one worker, answering every request with a 3-byte body; yields the port."""
    port = free_port()
    directory = workdir / f"nginx-{port}"
    directory.mkdir()
    config = directory / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(dir=directory, host=HOST, port=port))
    argv = ["nginx", "-e", "stderr", "-p", str(directory), "-c", str(config)]
    return program(argv, port, "nginx", workdir)


def echo_server(workdir: Path) -> contextlib.AbstractContextManager[int]:
    """The echo backend (bench/echo_server.py) in its own process; yields the port."""
    port = free_port()
    script = Path(__file__).with_name("echo_server.py")
    return program([sys.executable, str(script), str(port)], port, "echo", workdir)


NGINX_UNIX_CONFIG = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    sendfile on;
    server {{
        listen unix:{socket};
        root {dir}/www;
    }}
}}
"""


@contextlib.contextmanager
def nginx_unix_files(workdir: Path, size: int) -> Iterator[str]:
    """nginx on a UNIX socket serving /blob, `size` bytes; yields the socket's path."""
    directory = workdir / f"nginx-unix-{size}"
    (directory / "www").mkdir(parents=True)
    with (directory / "www" / "blob").open("wb") as blob:
        chunk = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(size // len(chunk)):
            blob.write(chunk)
    socket_path = str(directory / "nginx.sock")
    config = directory / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""  # else workers cannot read the files
    config.write_text(user + NGINX_UNIX_CONFIG.format(dir=directory, socket=socket_path))
    argv = ["nginx", "-e", "stderr", "-p", str(directory), "-c", str(config)]
    log_path = directory / "nginx.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _unix_accepts(socket_path):
            if process.poll() is not None or time.monotonic() > deadline:
                output = " ".join(log_path.read_text(errors="replace").split())[-300:]
                raise BenchError(f"nginx did not listen on {socket_path}: {output or '(none)'}")
            time.sleep(0.005)
        yield socket_path
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _unix_accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(path) == 0
