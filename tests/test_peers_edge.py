"""The edge peers without pyforward: each fixture of tests/peers_edge.py works as documented,
and the headers and hellos real programs send (HAProxy, curl, openssl) read right."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pyforward.protocols.proxy import (
    Endpoint,
    ProxyHeaderReader,
    build_v1,
    build_v2,
)
from pyforward.protocols.tls import ClientHello, ClientHelloReader, NotTLS
from tests.peers_edge import (
    HOST,
    HOST6,
    FirstBytes,
    haproxy_sender,
    nginx_proxy_protocol,
    nginx_tls,
    require,
)

Builder = Callable[[tuple[str, int], tuple[str, int]], bytes]
CLIENT = "127.0.0.9"  # any 127/8 address is this host's; a source the test can tell apart


def _http_get(host: str, port: int, preamble: bytes = b"", source: str = "") -> str:
    """The body of GET / (HTTP/1.0), with `preamble` sent first, from `source` if given."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        if source:
            sock.bind((source, 0))
        sock.connect((host, port))
        sock.sendall(preamble + b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


@pytest.mark.parametrize("build", [build_v1, build_v2], ids=["v1", "v2"])
def test_nginx_reports_the_address_of_the_proxy_header(tmp_path: Path, build: Builder) -> None:
    with nginx_proxy_protocol(tmp_path) as nginx:
        header = build((CLIENT, 40001), (HOST, nginx.port))
        assert _http_get(HOST, nginx.port, header) == f"{CLIENT}:40001"
        header6 = build(("2001:db8::7", 40002), ("2001:db8::1", 443))
        assert _http_get(HOST, nginx.port, header6) == "2001:db8::7:40002"
        if nginx.port6 is not None:
            header = build((HOST6, 40003), (HOST6, nginx.port6))
            assert _http_get(HOST6, nginx.port6, header) == "::1:40003"
        # Without a header nginx answers nothing: the connection is closed.
        with socket.create_connection((HOST, nginx.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert sock.recv(100) == b""


def test_nginx_serves_each_name_its_own_certificate(tmp_path: Path) -> None:
    names = ["jenkins.dev.local.me", "grafana.other.example", "*.dev.local.me"]
    with nginx_tls(tmp_path, names) as nginx:
        context = nginx.client_context()
        for name, port in nginx.ports.items():
            asked = name.replace("*", "wild")
            with (
                socket.create_connection((HOST, port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=asked) as tls,
            ):
                tls.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
            assert reply.endswith(f"\r\n\r\n{name}\n".encode())
        # The certificate is for its name only.
        other = nginx.ports[names[1]]
        with (
            socket.create_connection((HOST, other), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            context.wrap_socket(raw, server_hostname=names[0])
        assert _http_get(HOST, nginx.plain_port) == "default\n"
        curl = require("curl")
        name, port = names[0], nginx.ports[names[0]]
        for flags in (["--http2", "--tlsv1.3"], ["--http1.1", "--tlsv1.2", "--tls-max", "1.2"]):
            out = subprocess.run(
                [curl, "-sS", "--cacert", str(nginx.ca_path), *flags, "-w", " %{http_version}",
                 "--resolve", f"{name}:{port}:{HOST}", f"https://{name}:{port}/"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout  # fmt: skip
            assert out == f"{name}\n {'2' if '--http2' in flags else '1.1'}"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_sends_a_header_the_reader_reads(tmp_path: Path, version: str) -> None:
    reader = ProxyHeaderReader()
    target = FirstBytes(reader.feed)
    with haproxy_sender(tmp_path, target.port, version) as haproxy:
        target.start()
        with socket.socket() as client:
            client.settimeout(10)
            client.bind((CLIENT, 0))
            client.connect((HOST, haproxy.port))
            client.sendall(b"hello after the header")
            capture = target.result()
            source_port = client.getsockname()[1]
    header = capture.answer
    assert header is not None
    assert header.version == (1 if version == "v1" else 2)
    assert header.source == Endpoint(ipaddress.IPv4Address(CLIENT), source_port)
    assert header.destination == Endpoint(ipaddress.IPv4Address(HOST), haproxy.port)
    assert header.tlvs == ()
    # The header is exactly what a sender of this module would write (HAProxy 2.6 adds no
    # TLV by default), and nothing of the client's bytes was taken for it.
    build = build_v1 if version == "v1" else build_v2
    expected = build((CLIENT, source_port), (HOST, haproxy.port))
    assert capture.data[: header.length] == expected
    assert expected + reader.excess == capture.data
    assert b"hello after the header".startswith(reader.excess)


def _hello_of(argv_for: Callable[[int], list[str]]) -> tuple[ClientHello | NotTLS | None, bytes]:
    """What the program `argv_for(port)` sends first to a listener on `port`, read."""
    reader = ClientHelloReader()
    target = FirstBytes[ClientHello | NotTLS](reader.feed).start()
    process = subprocess.Popen(
        argv_for(target.port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        capture = target.result()
    finally:
        process.kill()
        process.wait()
    return capture.answer, capture.data


@pytest.mark.parametrize(
    "flags",
    [["--tlsv1.3"], ["--tlsv1.2", "--tls-max", "1.2"], ["--http2"], ["--http1.1"]],
    ids=["tls1.3", "tls1.2", "h2", "h1"],
)
def test_curl_hellos_name_their_server(flags: list[str]) -> None:
    curl = require("curl")
    name = "Jenkins.Dev.Local.Me"
    answer, data = _hello_of(
        lambda port: [curl, "-sk", "--max-time", "10", *flags,
                      "--resolve", f"{name}:{port}:{HOST}", f"https://{name}:{port}/"]
    )  # fmt: skip
    # curl sends the name lower-cased, as host names are compared.
    assert answer == ClientHello(name.lower(), len(data))


@pytest.mark.parametrize("tls", ["-tls1_3", "-tls1_2"])
def test_openssl_hellos_name_their_server(tls: str) -> None:
    openssl = require("openssl")
    answer, data = _hello_of(
        lambda port: [openssl, "s_client", tls, "-connect", f"{HOST}:{port}",
                      "-servername", "grafana.other.example"]
    )  # fmt: skip
    assert answer == ClientHello("grafana.other.example", len(data))
    answer, data = _hello_of(
        lambda port: [openssl, "s_client", tls, "-connect", f"{HOST}:{port}", "-noservername"]
    )
    assert answer == ClientHello(None, len(data))
