"""Real peers of the edge features, started on loopback: nginx reading the PROXY protocol,
nginx serving TLS for several host names, HAProxy sending the PROXY protocol, and a socket that
keeps the first bytes a client sends.

Each peer runs the Debian program itself (`nginx`, `haproxy`) from a config written under the
test's directory, on free loopback ports, and is handed over only once its ports accept
connections (a connect that succeeds, never a sleep). Each is a context manager that stops
the program, and fails with the program's own output when it does not start. A test that
needs one and finds the program missing is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import pytest
import trustme

HOST = "127.0.0.1"
HOST6 = "::1"
START_TIMEOUT = 10.0
T = TypeVar("T")


def require(program: str) -> str:
    """The path of `program`, or skip the test that needs it."""
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/sbin/{program}") if Path(p).exists()), None
    )
    if path is None:
        pytest.skip(f"{program} is not installed")
    return path


def has_ipv6() -> bool:
    """Whether ::1 can be bound here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind((HOST6, 0))
    except OSError:
        return False
    return True


def free_port(host: str = HOST) -> int:
    """A port the kernel just handed out on `host` and that nothing holds now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


# The source address of start-up checks, so a peer can tell them from clients (HAProxy refuses
# them before touching its target).
PROBE_SOURCE = "127.0.0.254"


def _accepts(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if family == socket.AF_INET:
            sock.bind((PROBE_SOURCE, 0))
        code = sock.connect_ex((host, port))
    if code in (0, errno.ECONNRESET):
        return True
    if code in (errno.ECONNREFUSED, errno.EAGAIN, errno.ETIMEDOUT):
        return False
    raise OSError(code, f"connecting to {host}:{port}: {errno.errorcode.get(code, code)}")


@contextlib.contextmanager
def running(
    argv: Sequence[str], listens: Sequence[tuple[str, int]], name: str, workdir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` until the block ends; yield once every (host, port) in `listens` accepts."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = list(listens)
        while waiting:
            if _accepts(*waiting[0]):
                waiting.pop(0)
                continue
            if process.poll() is not None or time.monotonic() > deadline:
                output = " ".join(log_path.read_text(errors="replace").split())[-500:]
                state = (
                    f"exited with code {process.returncode}"
                    if process.returncode is not None
                    else f"did not accept on {waiting[0]} in {START_TIMEOUT}s"
                )
                raise RuntimeError(f"{name} {state}; its output: {output or '(none)'}")
            time.sleep(0.005)  # polling a connect; the condition is the accept, not the time
        yield process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_NGINX_HEAD = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type text/plain;
{servers}
}}
"""


@contextlib.contextmanager
def _nginx(servers: str, listens: list[tuple[str, int]], workdir: Path) -> Iterator[Path]:
    nginx = require("nginx")
    directory = workdir / f"nginx-{listens[0][1]}"
    directory.mkdir()
    config = directory / "nginx.conf"
    config.write_text(_NGINX_HEAD.format(dir=directory, servers=servers))
    argv = [nginx, "-e", "stderr", "-p", str(directory), "-c", str(config)]
    with running(argv, listens, "nginx", directory):
        yield directory


@dataclass(frozen=True)
class ProxyProtocolNginx:
    """nginx answering every request with `$proxy_protocol_addr:$proxy_protocol_port`.

    It requires a PROXY header (v1 or v2) on every connection, on 127.0.0.1:`port` and, where
    the host has IPv6, on [::1]:`port6`.
    """

    port: int
    port6: int | None
    directory: Path


@contextlib.contextmanager
def nginx_proxy_protocol(workdir: Path) -> Iterator[ProxyProtocolNginx]:
    """Start nginx with `listen ... proxy_protocol` (see ProxyProtocolNginx)."""
    port = free_port()
    port6 = free_port(HOST6) if has_ipv6() else None
    listens = [(HOST, port)] + ([(HOST6, port6)] if port6 is not None else [])
    lines = "".join(f"        listen {_address(h, p)} proxy_protocol;\n" for h, p in listens)
    servers = (
        "    server {\n"
        f"{lines}"
        '        location / { return 200 "$proxy_protocol_addr:$proxy_protocol_port"; }\n'
        "    }"
    )
    with _nginx(servers, listens, workdir) as directory:
        yield ProxyProtocolNginx(port, port6, directory)


@dataclass(frozen=True)
class TLSNginx:
    """nginx serving HTTPS (HTTP/1.1 and HTTP/2, TLS 1.2 and 1.3), one port per host name.

    `ports[name]` answers `name` to every request, with a certificate for that name (and
    nothing else) from `ca`; `ca_path` is the CA's certificate in PEM, for clients.
    `plain_port` is plain HTTP answering `default`: the backend for a default route.
    """

    ports: dict[str, int]
    plain_port: int
    ca: trustme.CA
    ca_path: Path
    directory: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts `ca` (and checks host names)."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.set_alpn_protocols(["http/1.1"])
        return context


@contextlib.contextmanager
def nginx_tls(
    workdir: Path, names: Sequence[str], *, proxy_protocol: bool = False
) -> Iterator[TLSNginx]:
    """Start nginx with one TLS server per name in `names` (see TLSNginx). With
    `proxy_protocol`, the TLS servers require a PROXY header and answer
    `NAME ADDR:PORT`, the client the header names."""
    ca = trustme.CA()
    keys = workdir / ("tls-pp" if proxy_protocol else "tls")
    keys.mkdir(exist_ok=True)
    listen_options = "ssl http2 proxy_protocol" if proxy_protocol else "ssl http2"
    ca_path = keys / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ports = {name: free_port() for name in names}
    plain_port = free_port()
    blocks = []
    answer = " $proxy_protocol_addr:$proxy_protocol_port" if proxy_protocol else ""
    for index, (name, port) in enumerate(ports.items()):
        leaf = ca.issue_cert(name)
        cert, key = keys / f"{index}.crt", keys / f"{index}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        blocks.append(
            "    server {\n"
            f"        listen {HOST}:{port} {listen_options};\n"
            f"        server_name {name};\n"
            f"        ssl_certificate {cert};\n"
            f"        ssl_certificate_key {key};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
            f'        location / {{ return 200 "{name}{answer}\\n"; }}\n'
            "    }"
        )
    blocks.append(
        "    server {\n"
        f"        listen {HOST}:{plain_port};\n"
        '        location / { return 200 "default\\n"; }\n'
        "    }"
    )
    listens = [(HOST, port) for port in ports.values()] + [(HOST, plain_port)]
    with _nginx("\n".join(blocks), listens, workdir) as directory:
        yield TLSNginx(ports, plain_port, ca, ca_path, directory)


@dataclass(frozen=True)
class HAProxySender:
    """HAProxy on 127.0.0.1:`port` forwarding each connection to the target with a PROXY header.

    Connections from PROBE_SOURCE are refused (the start-up check); every other client's
    connection reaches the target, behind a header with the client's address and `port`.
    """

    port: int
    target: int
    version: str  # "v1" (send-proxy) or "v2" (send-proxy-v2)


_HAPROXY_CONFIG = """\
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
listen sender
    bind {host}:{port}
    # The start-up check connects from its own address: refused here, it reaches no target.
    tcp-request connection reject if {{ src {probe} }}
    server target {host}:{target} {option}
"""


@contextlib.contextmanager
def haproxy_sender(workdir: Path, target: int, version: str = "v2") -> Iterator[HAProxySender]:
    """Start HAProxy sending the PROXY protocol (`version` "v1" or "v2") to 127.0.0.1:target."""
    haproxy = require("haproxy")
    option = {"v1": "send-proxy", "v2": "send-proxy-v2"}[version]
    port = free_port()
    config = workdir / f"haproxy-{port}.cfg"
    config.write_text(
        _HAPROXY_CONFIG.format(
            host=HOST, probe=PROBE_SOURCE, port=port, target=target, option=option
        )
    )
    with running([haproxy, "-db", "-f", str(config)], [(HOST, port)], "haproxy", workdir):
        yield HAProxySender(port, target, version)


@dataclass
class Capture(Generic[T]):
    """What a client sent first: the answer of the reader fed with it, and the bytes read."""

    answer: T | None = None
    data: bytes = b""
    error: BaseException | None = None


class FirstBytes(Generic[T]):
    """A loopback listener that reads the first bytes of one connection into a reader.

    `feed` is given each chunk as it arrives and returns None until it has its answer; the
    connection is closed then (or at EOF, or after `limit` bytes). Run the client after
    `start()`, then `result()` waits for the capture.
    """

    def __init__(self, feed: Callable[[bytes], T | None], limit: int = 65536) -> None:
        self._feed = feed
        self._limit = limit
        self._server = socket.create_server((HOST, 0))
        self.port: int = self._server.getsockname()[1]
        self._capture: Capture[T] = Capture()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> FirstBytes[T]:
        self._thread.start()
        return self

    def _serve(self) -> None:
        capture = self._capture
        try:
            self._server.settimeout(START_TIMEOUT)
            conn, _ = self._server.accept()
            with conn:
                conn.settimeout(START_TIMEOUT)
                while len(capture.data) < self._limit:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    capture.data += chunk
                    capture.answer = self._feed(chunk)
                    if capture.answer is not None:
                        break
        except Exception as exc:  # handed to the test by result()
            capture.error = exc
        finally:
            self._server.close()

    def result(self, timeout: float = START_TIMEOUT) -> Capture[T]:
        """The capture, once the connection is read; raises what the reader raised."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("no client connected and finished in time")
        if self._capture.error is not None:
            raise self._capture.error
        return self._capture

    def close(self) -> None:
        self._server.close()
