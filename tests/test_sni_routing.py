"""Routing by TLS server name through a real `pyforward run`, to real nginx TLS servers.

One listen address holds several routes: curl (`--resolve`) reaches the backend of each name
over HTTP/1.1 and HTTP/2, TLS 1.2 and 1.3, a wildcard and an exact name beside it; a hello
written a byte at a time still routes; an unknown name or a client that does not speak TLS
goes to the default, or is reset with its reason where there is none; 64 MiB pass byte-exact
and spliced; a route with `proxy_protocol = "v2"` shows nginx the client's address.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import TIMEOUT, Backend, ForwarderProcess, echo, fields, forwarder, recv_all
from tests.hellos import real_hello
from tests.peers_edge import HOST, TLSNginx, free_port, nginx_tls, require

EXACT, WILDCARD, OTHER = "jenkins.dev.local.me", "*.dev.local.me", "other.example"
CLIENT = "127.0.0.9"


def config_for(tls: TLSNginx, port: int, *, default: bool, extra: str = "") -> str:
    """Three routes on 127.0.0.1:`port`: one per name, and the plain backend as default."""
    text = "".join(
        f'[[route]]\nlisten = "{HOST}:{port}"\nsni = ["{name}"]\n'
        f'target = "{HOST}:{backend}"\n{extra}\n'
        for name, backend in tls.ports.items()
    )
    if default:
        text += f'[[route]]\nlisten = "{HOST}:{port}"\ntarget = "{HOST}:{tls.plain_port}"\n'
    return text


@contextlib.contextmanager
def sni_forwarder(
    tmp_path: Path, tls: TLSNginx, *, default: bool, extra: str = "", relay: str = "auto"
) -> Iterator[tuple[ForwarderProcess, int]]:
    port = free_port()
    config = tmp_path / f"sni-{port}.toml"
    config.write_text(config_for(tls, port, default=default, extra=extra))
    with forwarder("--config", str(config), "--relay", relay) as fwd:
        yield fwd, port


def curl(tls: TLSNginx, name: str, port: int, *flags: str) -> str:
    """`curl https://NAME:PORT/` resolved to 127.0.0.1, trusting the test CA: the body."""
    result = subprocess.run(
        [
            require("curl"), "-sS", "--max-time", str(TIMEOUT), "--cacert", str(tls.ca_path),
            "--resolve", f"{name}:{port}:{HOST}", "-w", " %{http_version}", *flags,
            f"https://{name}:{port}/",
        ],
        capture_output=True, text=True, check=False, timeout=TIMEOUT + 5,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSNginx]:
    with nginx_tls(tmp_path_factory.mktemp("nginx"), [EXACT, WILDCARD, OTHER]) as peer:
        yield peer


@pytest.mark.parametrize(
    "flags",
    [
        ["--http1.1", "--tlsv1.2", "--tls-max", "1.2"],
        ["--http1.1", "--tlsv1.3"],
        ["--http2", "--tlsv1.2", "--tls-max", "1.2"],
        ["--http2", "--tlsv1.3"],
    ],
    ids=["h1-tls12", "h1-tls13", "h2-tls12", "h2-tls13"],
)
def test_each_name_reaches_its_backend(tmp_path: Path, tls: TLSNginx, flags: list[str]) -> None:
    http = "2" if "--http2" in flags else "1.1"
    with sni_forwarder(tmp_path, tls, default=True) as (fwd, port):
        assert curl(tls, EXACT, port, *flags) == f"{EXACT}\n {http}"
        # The wildcard takes a name one label under it; the exact name wins over it.
        assert curl(tls, "app.dev.local.me", port, *flags) == f"{WILDCARD}\n {http}"
        assert curl(tls, OTHER.upper(), port, *flags) == f"{OTHER}\n {http}"
        closes = fwd.closes(3)
    assert [c["target"] for c in closes] == [
        f"{HOST}:{tls.ports[name]}" for name in (EXACT, WILDCARD, OTHER)
    ]
    assert {c["listen"] for c in closes} == {f"{HOST}:{port}"}
    assert {c["reason"] for c in closes} == {"eof"}


def handshake_byte_by_byte(tls: TLSNginx, port: int, name: str) -> bytes:
    """A TLS client whose ClientHello goes out one byte per segment; the reply to a GET."""
    context = tls.client_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = True
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = outgoing.read()
                if first:
                    for index in range(len(data)):
                        sock.sendall(data[index : index + 1])
                    first = False
                else:
                    sock.sendall(data)
                chunk = sock.recv(65536)
                assert chunk, "the connection closed during the handshake"
                incoming.write(chunk)
        client.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        sock.sendall(outgoing.read())
        reply = b""
        while True:
            try:
                data = client.read(65536)
                if not data:
                    break
                reply += data
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            incoming.write(chunk)
            sock.sendall(outgoing.read())
    return reply


def test_a_hello_written_a_byte_at_a_time_routes_right(tmp_path: Path, tls: TLSNginx) -> None:
    with sni_forwarder(tmp_path, tls, default=True) as (fwd, port):
        reply = handshake_byte_by_byte(tls, port, EXACT)
        [close] = fwd.closes(1)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(f"{EXACT}\n".encode())
    assert close["target"] == f"{HOST}:{tls.ports[EXACT]}"


def reset_without_a_byte(port: int, first: bytes) -> bool:
    """Whether pyforward ends a connection that starts with `first` without a byte back."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(first)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def test_without_a_default_unknown_names_and_plain_clients_are_reset(
    tmp_path: Path, tls: TLSNginx
) -> None:
    with sni_forwarder(tmp_path, tls, default=False) as (fwd, port):
        assert reset_without_a_byte(port, real_hello("unknown.example"))
        assert reset_without_a_byte(port, real_hello("a.b.dev.local.me"))  # one label only
        assert reset_without_a_byte(port, b"GET / HTTP/1.0\r\n\r\n")
        assert reset_without_a_byte(port, b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
        # The right name still works beside them.
        assert curl(tls, EXACT, port, "--http1.1") == f"{EXACT}\n 1.1"
        closes = fwd.closes(5)
    assert [(c["reason"], c["target"]) for c in closes[:4]] == [
        ("no-route", "-"),
        ("no-route", "-"),
        ("not-tls", "-"),
        ("bad-tls-hello", "-"),
    ]
    assert fwd.output().count("event=bad-tls-hello") == 1
    stopped_reasons = [c["reason"] for c in closes]
    assert stopped_reasons[4] == "eof"


def test_plain_clients_and_unknown_names_go_to_the_default(tmp_path: Path, tls: TLSNginx) -> None:
    with sni_forwarder(tmp_path, tls, default=True) as (fwd, port):
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        [close] = fwd.closes(1)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"default\n")
    assert (close["target"], close["reason"]) == (f"{HOST}:{tls.plain_port}", "eof")


def test_64_mib_through_an_sni_route_arrive_exactly_and_spliced(tmp_path: Path) -> None:
    size = 64 << 20
    payload = hashlib.shake_256(b"sni").digest(1 << 20) * 64
    hello = real_hello("bulk.example")
    port = free_port()
    with Backend(echo) as backend:
        config = tmp_path / "bulk.toml"
        config.write_text(
            f'[[route]]\nlisten = "{HOST}:{port}"\nsni = "bulk.example"\n'
            f'target = "{HOST}:{backend.port}"\n'
            f'[[route]]\nlisten = "{HOST}:{port}"\ntarget = "{HOST}:1"\n'
        )
        with forwarder("--config", str(config), "--relay", "splice") as fwd:
            with socket.create_connection((HOST, port), timeout=TIMEOUT) as client:

                def send() -> None:
                    client.sendall(hello + payload)
                    client.shutdown(socket.SHUT_WR)

                sender = threading.Thread(target=send)
                sender.start()
                digest, total = hashlib.sha256(), 0
                buffer = bytearray(1 << 20)
                while received := client.recv_into(buffer):
                    digest.update(memoryview(buffer)[:received])
                    total += received
                sender.join(TIMEOUT)
            [close] = fwd.closes(1)
            assert fwd.stop() == 0
    # The echo returns what the target received: exactly the client's bytes, hello first.
    expected = len(hello) + size
    assert (total, digest.digest()) == (expected, hashlib.sha256(hello + payload).digest())
    assert (close["up"], close["down"], close["reason"]) == (str(expected), str(expected), "eof")
    assert close["relay"] == "splice"
    stopped = fields(fwd.wait_line("event=stopped"))
    spliced, copied = int(stopped["spliced_bytes"]), int(stopped["copied_bytes"])
    # Only what was read to find the name went through user space.
    assert copied <= len(hello) + 4096
    assert spliced + copied == 2 * expected


def test_a_route_with_proxy_protocol_shows_nginx_the_client(tmp_path: Path) -> None:
    with nginx_tls(tmp_path, [EXACT, OTHER], proxy_protocol=True) as tls:
        port = free_port()
        config = tmp_path / "pp.toml"
        config.write_text(
            f'[[route]]\nlisten = "{HOST}:{port}"\nsni = "{EXACT}"\n'
            f'target = "{HOST}:{tls.ports[EXACT]}"\nproxy_protocol = "v2"\n'
            f'[[route]]\nlisten = "{HOST}:{port}"\nsni = "{OTHER}"\n'
            f'target = "{HOST}:{tls.ports[OTHER]}"\nproxy_protocol = "v1"\n'
        )
        with forwarder("--config", str(config)) as fwd:
            answers = {
                name: curl(tls, name, port, "--interface", CLIENT) for name in (EXACT, OTHER)
            }
            closes = fwd.closes(2)
    for name, answer in answers.items():
        body, _ = answer.split("\n")
        served, client = body.split(" ")
        assert served == name
        assert client.startswith(f"{CLIENT}:")
    assert {c["client"] for c in closes} == {
        a.split("\n")[0].split(" ")[1] for a in answers.values()
    }


def banner(conn: socket.socket) -> None:
    """A server that speaks first (as SMTP or SSH do), then echoes."""
    conn.sendall(b"220 ready\r\n")
    echo(conn)


def test_timeouts_deny_and_a_nameless_hello(tmp_path: Path) -> None:
    port = free_port()
    with Backend(banner) as default, Backend(echo) as named:
        config = tmp_path / "t.toml"
        config.write_text(
            f'sni_timeout = 0.5\n[[route]]\nlisten = "{HOST}:{port}"\nsni = "denied.example"\n'
            f'target = "{HOST}:{named.port}"\ndeny = ["127.0.0.0/8"]\n'
            f'[[route]]\nlisten = "{HOST}:{port}"\nsni = "named.example"\n'
            f'target = "{HOST}:{named.port}"\n'
            f'[[route]]\nlisten = "{HOST}:{port}"\ntarget = "{HOST}:{default.port}"\n'
        )
        with forwarder("--config", str(config)) as fwd:
            # Silent past sni_timeout: the default, whose server speaks first.
            with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
                assert sock.recv(64) == b"220 ready\r\n"
            # Part of a hello, then silence: reset once sni_timeout passes.
            assert reset_without_a_byte(port, real_hello("named.example")[:20])
            # A hello without a name: the default.
            with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
                sock.sendall(real_hello(None))
                sock.shutdown(socket.SHUT_WR)
                assert recv_all(sock).startswith(b"220 ready\r\n")
            # The chosen route's own deny list.
            assert reset_without_a_byte(port, real_hello("denied.example"))
            with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
                hello = real_hello("named.example")
                sock.sendall(hello)
                received = b""
                while len(received) < len(hello):
                    received += sock.recv(65536)
                assert received == hello
                sock.shutdown(socket.SHUT_WR)
                assert recv_all(sock) == b""
            closes = fwd.closes(5)
            refused = fwd.wait_line("event=refused")
    assert [c["reason"] for c in closes] == ["eof", "sni-timeout", "eof", "denied", "eof"]
    assert [c["target"] for c in closes] == [
        f"{HOST}:{default.port}",
        "-",
        f"{HOST}:{default.port}",
        f"{HOST}:{named.port}",  # chosen, then refused by its deny list before any dial
        f"{HOST}:{named.port}",
    ]
    assert fields(refused)["reason"] == "denied"
