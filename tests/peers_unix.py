"""Real peers on UNIX sockets: nginx serving and storing files (WebDAV PUT) on a UNIX socket
or on loopback TCP, and curl talking to either, through pyforward.

nginx is handed over once its socket accepts a connection; a test that finds nginx or curl
missing is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.peers_edge import free_port, require, running

START_TIMEOUT = 10.0

_CONFIG = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    server {{
        listen {listen};
        root {dir}/www;
        client_max_body_size 64m;
        dav_methods PUT;
    }}
}}
"""


@dataclass(frozen=True)
class FileNginx:
    """nginx serving `www` (GET) and storing uploads there (PUT)."""

    www: Path
    socket_path: Path | None  # listening on this UNIX socket, or
    port: int | None  # on 127.0.0.1:port


def _wait_unix(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not listen on {path}: {log.read_text(errors='replace')}")
        time.sleep(0.005)  # polling a connect; the condition is the accept, not the time


@contextlib.contextmanager
def file_nginx(workdir: Path, *, unix: bool) -> Iterator[FileNginx]:
    """nginx with a file root, on a UNIX socket in `workdir` or on a free loopback port."""
    nginx = require("nginx")
    directory = workdir / "nginx"
    (directory / "www").mkdir(parents=True)
    socket_path = directory / "nginx.sock" if unix else None
    port = None if unix else free_port()
    listen = f"unix:{socket_path}" if unix else f"127.0.0.1:{port}"
    config = directory / "nginx.conf"
    # As root, nginx's workers would run as nobody, who cannot read the test's directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    config.write_text(_CONFIG.format(dir=directory, listen=listen, user=user))
    argv = [nginx, "-e", "stderr", "-p", str(directory), "-c", str(config)]
    if unix:
        assert socket_path is not None
        log = directory / "nginx.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            _wait_unix(socket_path, process, log)
            yield FileNginx(directory / "www", socket_path, None)
        finally:
            process.terminate()
            process.wait(5)
    else:
        assert port is not None
        with running(argv, [("127.0.0.1", port)], "nginx", directory):
            yield FileNginx(directory / "www", None, port)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run curl (failing on HTTP errors), its body on stdout."""
    program = require("curl")
    return subprocess.run(
        [program, "--silent", "--show-error", "--fail", "--max-time", "30", *args],
        capture_output=True,
        check=False,
        timeout=40,
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
