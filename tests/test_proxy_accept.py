"""`accept_proxy_protocol`: pyforward behind a load balancer that sends the PROXY protocol.
HAProxy (`send-proxy`, `send-proxy-v2`) in front of pyforward, which reads its header and
sends one of its own to the target: the target, the close line, allow/deny and the
per-source limit all see the original client, and a header from a peer outside
`proxy_protocol_from` is never believed."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest

from pyforward.config.settings import build_settings
from pyforward.errors import ConfigError
from pyforward.protocols.proxy import ProxyHeader, build_local
from tests.harness import TIMEOUT, Backend, fields, forwarder
from tests.peers_edge import HOST, haproxy_sender, nginx_proxy_protocol
from tests.test_proxy_stage import endpoint, get_from, read_header

CLIENT = "127.0.0.9"
OTHER_CLIENT = "127.0.0.10"
TRUST_HAPROXY = ("--accept-proxy-protocol", "--proxy-protocol-from", "127.0.0.1/32")


class HeaderSink:
    """A target that records the PROXY header and the bytes after it, and echoes those."""

    def __init__(self) -> None:
        self.seen: list[tuple[ProxyHeader, bytes]] = []
        self.arrived = threading.Condition()
        self.backend = Backend(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        header, _, rest = read_header(conn)
        with self.arrived:
            self.seen.append((header, rest))
            self.arrived.notify_all()
        if rest:
            conn.sendall(rest)
        while data := conn.recv(65536):
            conn.sendall(data)

    def wait(self, count: int) -> list[tuple[ProxyHeader, bytes]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.seen) >= count, TIMEOUT)
            return list(self.seen)


def client_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    sock.connect((HOST, port))
    return sock


def reset_or_closed(sock: socket.socket) -> bool:
    """Whether the peer ends the connection without sending a byte."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_it_needs_the_peers_to_trust() -> None:
    route = ["127.0.0.1:0=127.0.0.1:1"]
    needs = r"^accept_proxy_protocol \(route 127.0.0.1:0\) needs proxy_protocol_from"
    with pytest.raises(ConfigError, match=needs):
        build_settings({"route": route, "accept_proxy_protocol": True}, {})
    env = {"PYFORWARD_ACCEPT_PROXY_PROTOCOL": "yes", "PYFORWARD_PROXY_PROTOCOL_FROM": "10.0.0.0/8"}
    [built] = build_settings({"route": route}, env).routes
    assert built.policy.reads_proxy_header("10.1.2.3")
    assert not built.policy.reads_proxy_header("192.0.2.1")
    with pytest.raises(ConfigError, match="PYFORWARD_PROXY_PROTOCOL_FROM: invalid network"):
        build_settings({"route": route}, {**env, "PYFORWARD_PROXY_PROTOCOL_FROM": "10.0.0.0/33"})


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_target_sees_the_client_behind_haproxy(tmp_path: Path, version: str) -> None:
    with (
        nginx_proxy_protocol(tmp_path) as nginx,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", f"{HOST}:{nginx.port}",
            *TRUST_HAPROXY, "--proxy-protocol", "v2",
        ) as fwd,
        haproxy_sender(tmp_path, fwd.port, version) as haproxy,
    ):  # fmt: skip
        body, client_port = get_from(HOST, haproxy.port, CLIENT)
        assert body == f"{CLIENT}:{client_port}"
        [close] = fwd.closes(1)
    assert (close["client"], close["reason"]) == (f"{CLIENT}:{client_port}", "eof")


def test_a_header_from_an_untrusted_peer_is_only_bytes() -> None:
    sink = HeaderSink()
    spoofed = b"PROXY TCP4 6.6.6.6 127.0.0.1 4444 80\r\n"
    with (
        sink.backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", sink.backend.address,
            "--accept-proxy-protocol", "--proxy-protocol-from", "127.0.0.1/32",
            "--proxy-protocol", "v1",
        ) as fwd,
        client_from(CLIENT, fwd.port) as client,
    ):  # fmt: skip
        client_port = client.getsockname()[1]
        client.sendall(spoofed + b"hello")
        [(header, _)] = sink.wait(1)
        echoed = b""
        while len(echoed) < len(spoofed) + 5:
            echoed += client.recv(100)
        client.close()
        [close] = fwd.closes(1)
        output = fwd.output()
    # Served as itself: its own address in the header, its "header" passed on as data.
    assert header.source == endpoint(CLIENT, client_port)
    assert echoed == spoofed + b"hello"
    assert close["client"] == f"{CLIENT}:{client_port}"
    assert "6.6.6.6" not in output


def test_a_trusted_peer_without_a_valid_header_is_reset() -> None:
    sink = HeaderSink()
    with (
        sink.backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", sink.backend.address, *TRUST_HAPROXY
        ) as fwd,
    ):  # fmt: skip
        for request in (b"GET / HTTP/1.0\r\n\r\n", b"PROXY TCP4 1.2.3.4\r\n", b"PROXY TCP9"):
            with client_from(HOST, fwd.port) as peer:
                peer.sendall(request)
                if request == b"PROXY TCP9":
                    peer.shutdown(socket.SHUT_WR)  # cut short: EOF inside the header
                assert reset_or_closed(peer)
        closes = fwd.closes(3)
        assert fwd.stop() == 0
    assert [c["reason"] for c in closes] == ["bad-proxy-header"] * 3
    assert sink.backend.accepted == 0  # the target never contacted
    # One warning for the three: at most one every 5 s.
    warnings = [line for line in fwd.lines if "event=bad-proxy-header" in line]
    assert len(warnings) == 1 and "level=warning" in warnings[0]
    assert fields(fwd.wait_line("event=stopped"))["closed_bad-proxy-header"] == "3"


def test_a_trusted_peer_that_sends_no_header_in_time_is_reset() -> None:
    with (
        Backend(lambda conn: None) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address, *TRUST_HAPROXY) as fwd,
        client_from(HOST, fwd.port) as peer,
    ):
        [close] = fwd.closes(1, timeout=TIMEOUT)
        assert close["reason"] == "bad-proxy-header"
        assert reset_or_closed(peer)
        assert backend.accepted == 0
    assert "no complete PROXY header in 5 s" in fwd.output()


def test_allow_deny_and_the_per_source_limit_see_the_client_behind_haproxy(
    tmp_path: Path,
) -> None:
    sink = HeaderSink()
    with (
        sink.backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", sink.backend.address, *TRUST_HAPROXY,
            "--proxy-protocol", "v2", "--deny", "127.0.0.66", "--max-connections-per-source", "1",
        ) as fwd,
        haproxy_sender(tmp_path, fwd.port, "v2") as haproxy,
        contextlib.ExitStack() as held,
    ):  # fmt: skip
        # Two clients at once, both through HAProxy's one address: one connection each.
        for source in (CLIENT, OTHER_CLIENT):
            client = held.enter_context(client_from(source, haproxy.port))
            client.sendall(b"ping")
            assert client.recv(4) == b"ping"
        # A second one from 127.0.0.9 is over its limit; 127.0.0.66 is denied.
        for source in (CLIENT, "127.0.0.66"):
            with client_from(source, haproxy.port) as refused:
                refused.sendall(b"ping")
                assert reset_or_closed(refused)
        fwd.wait_line(r"event=close .*reason=denied")
        closes = list(fwd.close_lines)  # before the held clients close
        warned = fwd.wait_line("event=refused")
    seen = sink.wait(2)
    assert sorted(str(h.source.address) for h, _ in seen if h.source) == sorted(
        [CLIENT, OTHER_CLIENT]
    )
    # HAProxy tries a server connection reset at once again (`retries`, 3 by default), so a
    # refusal may be logged more than once; each is of the client behind it, for its reason.
    refusals = [(c["reason"], c["client"].rsplit(":", 1)[0]) for c in closes]
    assert refusals[0] == ("source-limit", CLIENT)
    assert set(refusals) == {("source-limit", CLIENT), ("denied", "127.0.0.66")}
    assert refusals.index(("denied", "127.0.0.66")) > refusals.index(("source-limit", CLIENT))
    assert "client=127.0.0.9" in warned


def test_the_first_byte_gate_counts_the_bytes_that_came_with_the_header() -> None:
    """A load balancer that writes its header and the client's first bytes in one segment:
    those bytes were read with the header, and the gate must not wait for more."""
    sink = HeaderSink()
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n"
    with (
        sink.backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", sink.backend.address, *TRUST_HAPROXY,
            "--proxy-protocol", "v1", "--first-byte-timeout", "30",
        ) as fwd,
        client_from(HOST, fwd.port) as peer,
    ):  # fmt: skip
        peer.sendall(header + b"hello")
        echoed = b""
        while len(echoed) < 5:
            echoed += peer.recv(5)
        assert echoed == b"hello"
        [(sent, _)] = sink.wait(1)
        peer.close()
        [close] = fwd.closes(1)
    assert sent.source == endpoint("203.0.113.7", 40000)
    assert (close["client"], close["up"]) == ("203.0.113.7:40000", "5")


def test_a_local_header_leaves_the_connection_the_balancers_own() -> None:
    sink = HeaderSink()
    with (
        sink.backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", sink.backend.address, *TRUST_HAPROXY,
            "--proxy-protocol", "v2",
        ) as fwd,
        client_from(HOST, fwd.port) as peer,
    ):  # fmt: skip
        peer.sendall(build_local() + b"hi")
        echoed = b""
        while len(echoed) < 2:
            echoed += peer.recv(2)
        [(sent, _)] = sink.wait(1)
        balancer_port = peer.getsockname()[1]
        peer.close()
        [close] = fwd.closes(1)
    assert echoed == b"hi"
    assert sent.source == endpoint(HOST, balancer_port)
    assert close["client"] == f"{HOST}:{balancer_port}"
