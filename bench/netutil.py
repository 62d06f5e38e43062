"""Loopback plumbing shared by the subjects and the scenarios."""

from __future__ import annotations

import errno
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


class BenchError(Exception):
    """A failure that ends the run with one line naming it."""


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 and that nothing holds now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def try_connect(port: int) -> bool:
    """True when a TCP connection to 127.0.0.1:port completes (and is closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        code = sock.connect_ex((HOST, port))
    if code in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EAGAIN, errno.ETIMEDOUT):
        return False
    if code:
        raise BenchError(f"connecting to {HOST}:{port}: {errno.errorcode.get(code, code)}")
    return True


def wait_accepting(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None, name: str = ""
) -> float:
    """Poll-connect until 127.0.0.1:port accepts; return the monotonic time it did.

    Fails at once when `process` (the program meant to listen there) has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if try_connect(port):
            return time.monotonic()
        if process is not None and process.poll() is not None:
            raise BenchError(f"{name or 'process'} exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{name or 'nothing'} did not accept on {HOST}:{port} in {timeout}s")
        time.sleep(0.0005)


# nginx's stream proxy module, as Debian's libnginx-mod-stream installs it (the nginx-stream
# and nginx-sni subjects load it).
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
