"""`proxy_protocol`: the PROXY header pyforward sends its target, from the settings to the
bytes a real target reads. nginx with `listen ... proxy_protocol` behind pyforward tells
which client it was given; a sink that parses the header with the pure reader shows the
header is the first thing the target receives, on both relay paths, and that the client's
bytes after it arrive exactly (spliced, where the relay splices)."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from pyforward.config.policy import ProxyProtocol
from pyforward.config.settings import build_settings
from pyforward.discovery.runtime import Discovery
from pyforward.discovery.watcher import WatchTiming
from pyforward.engine.runtime import serve
from pyforward.engine.server import Forwarder
from pyforward.errors import ConfigError
from pyforward.obs.ratelimit import Every
from pyforward.protocols.proxy import SIGNATURE_V2, Endpoint, ProxyHeader, ProxyHeaderReader
from pyforward.relay.connection import Policy, stages_for
from pyforward.relay.dial import Dial
from pyforward.relay.pipes import splice_available
from pyforward.relay.proxy_header import SendProxyHeader
from tests.harness import TIMEOUT, Backend, fields, forwarder
from tests.kubeapi import KubeApi, node, service
from tests.peers_edge import HOST, HOST6, has_ipv6, nginx_proxy_protocol
from tests.test_pipeline import HandOver, Owner, close_line, connect, read_to_eof, tcp_pair

CLIENT = "127.0.0.9"  # a loopback address of this host that the target can tell apart
VERSIONS = ["v1", "v2"]
RELAYS = [*(["splice"] if splice_available() else []), "copy"]
needs_ipv6 = pytest.mark.skipif(not has_ipv6(), reason="no IPv6 on this host")


def get_from(host: str, port: int, source: str) -> tuple[str, int]:
    """GET / (HTTP/1.0) from `source`: the reply's body, and the client's own port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        sock.connect((host, port))
        client_port: int = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode(), client_port


def read_header(conn: socket.socket) -> tuple[ProxyHeader, bytes, bytes]:
    """Read the PROXY header a connection must start with: the header, its raw bytes, and
    the bytes that came after it in the same reads."""
    reader = ProxyHeaderReader()
    raw = b""
    while True:
        chunk = conn.recv(4096)
        assert chunk, f"EOF before a complete PROXY header: {raw!r}"
        raw += chunk
        header = reader.feed(chunk)  # raises ProxyHeaderError unless it starts the stream
        if header is not None:
            return header, raw[: header.length], reader.excess


def endpoint(host: str, port: int) -> Endpoint:
    return Endpoint(ipaddress.ip_address(host), port)


# --- settings and registration


def test_every_layer_sets_it_and_a_route_table_overrides_the_top_level() -> None:
    route = ["--route", "127.0.0.1:0=127.0.0.1:1"]
    [flagged] = build_settings({"route": route[1:], "proxy_protocol": "v2"}, {}).routes
    assert flagged.policy.proxy_protocol is ProxyProtocol.V2
    [from_env] = build_settings({"route": route[1:]}, {"PYFORWARD_PROXY_PROTOCOL": "V1"}).routes
    assert from_env.policy.proxy_protocol is ProxyProtocol.V1
    [default] = build_settings({"route": route[1:]}, {}).routes
    assert default.policy.proxy_protocol is ProxyProtocol.OFF
    file_data: dict[str, Any] = {
        "proxy_protocol": "v1",
        "route": [
            {"listen": "127.0.0.1:7001", "target": "127.0.0.1:1"},
            {"listen": "127.0.0.1:7002", "target": "127.0.0.1:1", "proxy_protocol": "v2"},
            {"listen": "127.0.0.1:7003", "target": "127.0.0.1:1", "proxy_protocol": "off"},
        ],
    }
    routes = build_settings({}, {}, file_data).routes
    assert [r.policy.proxy_protocol.value for r in routes] == ["v1", "v2", "off"]
    with pytest.raises(ConfigError, match=r"PYFORWARD_PROXY_PROTOCOL: expected one of off, v1, v2"):
        build_settings({"route": route[1:]}, {"PYFORWARD_PROXY_PROTOCOL": "v3"})


def test_a_discovered_route_table_takes_it(tmp_path: Path) -> None:
    file_data = {
        "discover": True,
        "kubeconfig": str(tmp_path / "kubeconfig"),
        "route": [
            {"listen": "127.0.0.1:7443", "service_port": "https", "proxy_protocol": "v2"},
            {"listen": "127.0.0.1:7080", "service_port": "http2"},
        ],
    }
    https, http = build_settings({}, {}, file_data).routes
    assert (https.service_port, https.policy.proxy_protocol) == ("https", ProxyProtocol.V2)
    assert (http.service_port, http.policy.proxy_protocol) == ("http2", ProxyProtocol.OFF)


def test_the_header_is_the_first_target_side_stage() -> None:
    policy = Policy(connect_timeout=1.0, idle_timeout=None, keepalive=False)
    assert [type(s) for s in stages_for(policy, Every(1))] == [Dial]
    on = Policy(1.0, None, False, first_byte_timeout=2.0, proxy_protocol=ProxyProtocol.V2)
    stages = stages_for(on, Every(1))
    assert [s.side for s in stages] == ["client", "dial", "target"]
    assert isinstance(stages[-1], SendProxyHeader)


@pytest.mark.asyncio
async def test_a_client_gone_before_the_header_is_a_client_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "pyforward.relay.connection")
    loop = asyncio.get_running_loop()
    owner = Owner(loop, splice=False)
    client_peer, client = tcp_pair()
    target, target_peer = tcp_pair()
    client_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client_peer.close()  # a reset: the accepted socket has no peer any more
    try:
        connect(owner, client, [HandOver(target, []), SendProxyHeader(ProxyProtocol.V2)])
        await asyncio.wait_for(owner.closed.wait(), TIMEOUT)
        close = close_line(caplog)
        assert (close["reason"], close["reset_by"]) == ("reset", "client")
        # The target got no header with a made-up address, only a reset.
        with pytest.raises(ConnectionResetError):
            await read_to_eof(loop, target_peer)
    finally:
        target_peer.close()
        owner.close()


# --- nginx reading the header


@pytest.mark.parametrize("relay", RELAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_nginx_sees_the_client_not_pyforward(tmp_path: Path, version: str, relay: str) -> None:
    with (
        nginx_proxy_protocol(tmp_path) as nginx,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", f"{HOST}:{nginx.port}",
            "--proxy-protocol", version, "--relay", relay,
        ) as fwd,
    ):  # fmt: skip
        body, client_port = get_from(HOST, fwd.port, CLIENT)
        assert body == f"{CLIENT}:{client_port}"
        [close] = fwd.closes(1)
    assert (close["client"], close["reason"], close["relay"]) == (
        f"{CLIENT}:{client_port}",
        "eof",
        relay,
    )


def test_the_header_still_leads_behind_the_first_byte_gate(tmp_path: Path) -> None:
    """The gate waits for the client's first byte before the dial: that byte, already in
    the socket, must still reach nginx after the header, not before it."""
    with (
        nginx_proxy_protocol(tmp_path) as nginx,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", f"{HOST}:{nginx.port}",
            "--proxy-protocol", "v2", "--first-byte-timeout", "5",
        ) as fwd,
    ):  # fmt: skip
        body, client_port = get_from(HOST, fwd.port, CLIENT)
        assert body == f"{CLIENT}:{client_port}"


@needs_ipv6
@pytest.mark.parametrize("version", VERSIONS)
def test_nginx_sees_an_ipv6_client(tmp_path: Path, version: str) -> None:
    with (
        nginx_proxy_protocol(tmp_path) as nginx,
        forwarder(
            "--listen", "[::1]:0", "--target", f"[{HOST6}]:{nginx.port6}",
            "--proxy-protocol", version,
        ) as fwd,
    ):  # fmt: skip
        body, client_port = get_from(HOST6, fwd.port, HOST6)
        assert body == f"{HOST6}:{client_port}"


class Sink:
    """A target that records the PROXY header each connection starts with, then closes."""

    def __init__(self) -> None:
        self.headers: list[tuple[ProxyHeader, bytes]] = []
        self.received = threading.Event()
        self.backend = Backend(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        header, raw, _ = read_header(conn)
        self.headers.append((header, raw))
        self.received.set()

    def one(self) -> tuple[ProxyHeader, bytes]:
        assert self.received.wait(TIMEOUT), "no connection reached the target"
        return self.headers[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_an_ipv4_client_of_a_dual_stack_listener_is_sent_as_ipv4(version: str) -> None:
    sink = Sink()
    with (
        sink.backend,
        forwarder(
            "--listen", "0", "--target", sink.backend.address, "--proxy-protocol", version
        ) as fwd,
        socket.socket() as client,
    ):  # fmt: skip
        client.bind((CLIENT, 0))
        client.connect((HOST, fwd.port))
        client_port = client.getsockname()[1]
        header, raw = sink.one()
    if has_ipv6():
        # The listener really is dual-stack: it hands an IPv4 client over as ::ffff:.
        assert fwd.listen_addresses()[0][0] == "::"
    assert header.source == endpoint(CLIENT, client_port)
    assert header.destination == endpoint(HOST, fwd.port)
    if version == "v1":
        assert raw == f"PROXY TCP4 {CLIENT} {HOST} {client_port} {fwd.port}\r\n".encode()
    else:
        assert raw[:12] == SIGNATURE_V2
        assert (raw[12], raw[13], raw[14:16]) == (0x21, 0x11, b"\x00\x0c")  # TCP over IPv4
        assert len(raw) == 16 + 12


# --- the client's bytes after the header


def echo_after_header(headers: list[ProxyHeader]) -> Any:
    """A backend handler: strip and keep the header, then echo everything after it."""

    def handle(conn: socket.socket) -> None:
        header, _, excess = read_header(conn)
        headers.append(header)
        if excess:
            conn.sendall(excess)
        buffer = bytearray(1 << 20)
        while received := conn.recv_into(buffer):
            conn.sendall(memoryview(buffer)[:received])
        conn.shutdown(socket.SHUT_WR)

    return handle


@pytest.mark.parametrize("relay", RELAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_bulk_after_the_header_arrives_exactly(version: str, relay: str) -> None:
    size = 32 << 20
    payload = hashlib.sha256(b"bulk").digest() * (size // 32)
    headers: list[ProxyHeader] = []
    with (
        Backend(echo_after_header(headers)) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address,
            "--proxy-protocol", version, "--relay", relay,
        ) as fwd,
    ):  # fmt: skip
        with socket.socket() as client:
            client.settimeout(TIMEOUT)
            client.bind((CLIENT, 0))
            client.connect((HOST, fwd.port))
            client_port = client.getsockname()[1]

            def send() -> None:
                # At once: the first bytes are waiting before the target has even accepted.
                client.sendall(payload)
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
    assert (total, digest.digest()) == (size, hashlib.sha256(payload).digest())
    [header] = headers
    assert header.version == int(version[1])
    assert header.source == endpoint(CLIENT, client_port)
    # `up` and `down` are the client's bytes and the target's: the header is pyforward's.
    assert (close["up"], close["down"], close["reason"]) == (str(size), str(size), "eof")
    stopped = fields(fwd.wait_line("event=stopped"))
    counts = (int(stopped["spliced_bytes"]), int(stopped["copied_bytes"]))
    assert counts == ((2 * size, 0) if relay == "splice" else (0, 2 * size))


# --- a discovered route


@pytest.mark.asyncio
async def test_a_discovered_nodeport_gets_the_header(tmp_path: Path) -> None:
    with nginx_proxy_protocol(tmp_path) as nginx:
        kube = KubeApi(tmp_path)
        kube.start()
        try:
            ports = (("http2", 80, None), ("https", 443, nginx.port))
            kube.put_service(service(ports=ports))
            kube.put_node(node("here", HOST))
            file_data = {
                "discover": True,
                "kubeconfig": str(kube.kubeconfig),
                "state_dir": str(tmp_path / "state"),
                "discover_timeout": 10,
                "route": [
                    {"listen": "127.0.0.1:0", "service_port": "https", "proxy_protocol": "v1"}
                ],
            }
            settings = build_settings({}, {}, file_data)
            stop = asyncio.Event()
            ready: asyncio.Future[Forwarder] = asyncio.get_running_loop().create_future()
            timing = WatchTiming(watch_timeout=30, backoff_initial=0.05, backoff_max=0.3)
            discovery = Discovery(settings, timing=timing)
            task = asyncio.create_task(
                serve(
                    settings,
                    targets=discovery,
                    shutdown_trigger=stop.wait,
                    on_ready=ready.set_result,
                )
            )
            try:
                forwarder_ = await asyncio.wait_for(ready, 15)
                port = forwarder_.listeners[0].sock.getsockname()[1]
                body, client_port = await asyncio.to_thread(get_from, HOST, port, CLIENT)
                assert body == f"{CLIENT}:{client_port}"
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
        finally:
            kube.stop()
