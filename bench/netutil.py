"""Loopback plumbing shared by the subjects and the scenarios."""

from __future__ import annotations

import errno
import random
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


class BenchError(Exception):
    """A failure that ends the run with one line naming it."""


# Where free_port looks first: below the ports the kernel gives connect() (the local port
# range, ip_local_port_range), which the load generators use by the tens of thousands. A
# port picked there and released could be taken by a client's connect before the subject
# binds it; one below it can only be taken by another bind.
_LOW_PORTS = (10_000, 32_768)


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return _LOW_PORTS[1]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds now, below the kernel's range for outgoing
    connections where there is room (else one the kernel hands out)."""
    low, high = _LOW_PORTS[0], min(_LOW_PORTS[1], _ephemeral_low())
    for _ in range(50 if high > low else 0):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        found: int = probe.getsockname()[1]
        return found


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
