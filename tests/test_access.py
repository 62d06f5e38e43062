"""Who may connect, and limits that hold under abuse."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from pyforward.listeners import ipv6_available
from tests.harness import Backend, echo, fields, forwarder, reads_until_closed


def connect_from(source: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def refused_at_once(source: str, port: int) -> bool:
    """True when the forwarder closes the connection without relaying a byte."""
    try:
        sock = connect_from(source, port)
    except ConnectionResetError:
        return True  # reset before connect() even returned
    with sock:
        data, _ = reads_until_closed(sock)
        return data == b""


def echoes(sock: socket.socket) -> bool:
    """True when the connection relays; False when the forwarder closed it."""
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"
    except (ConnectionResetError, BrokenPipeError):
        return False


def test_deny_refuses_a_network_before_touching_the_target() -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--deny", "127.0.0.2/32"
        ) as fwd,
    ):
        assert refused_at_once("127.0.0.2", fwd.port)
        line = fields(fwd.wait_line("event=refused"))
        assert (line["reason"], line["client"]) == ("denied", "127.0.0.2")
        with connect_from("127.0.0.1", fwd.port) as allowed:
            assert echoes(allowed)
    assert backend.accepted == 1  # only the allowed client reached the target


@pytest.mark.skipif(not ipv6_available(), reason="the host has no IPv6")
def test_allow_list_with_ipv6_and_ipv4_clients_on_a_dual_stack_listener() -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen",
            "0",
            "--target",
            backend.address,
            "--allow",
            "::1/128",
            "--allow",
            "127.0.0.2",
        ) as fwd,
    ):
        port = fwd.port
        with connect_from("::1", port, "::1") as six:
            assert echoes(six)
        # 127.0.0.2 arrives as ::ffff:127.0.0.2 on the dual-stack socket, and matches as IPv4.
        with connect_from("127.0.0.2", port) as four_allowed:
            assert echoes(four_allowed)
        assert refused_at_once("127.0.0.1", port)
    assert backend.accepted == 2


def test_refusals_under_a_flood_are_counted_but_logged_sparingly() -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--deny", "127.0.0.0/8"
        ) as fwd,
    ):
        for _ in range(200):
            assert refused_at_once("127.0.0.3", fwd.port)
        fwd.wait_line("event=refused")
        assert fwd.stop() == 0
    refusal_lines = [line for line in fwd.lines if "event=refused" in line]
    assert 1 <= len(refusal_lines) <= 2
    assert backend.accepted == 0


def test_per_source_cap() -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen",
            "127.0.0.1:0",
            "--target",
            backend.address,
            "--max-connections-per-source",
            "2",
        ) as fwd,
    ):
        held = [connect_from("127.0.0.1", fwd.port) for _ in range(2)]
        assert all(echoes(sock) for sock in held)
        assert refused_at_once("127.0.0.1", fwd.port)
        assert fields(fwd.wait_line("event=refused"))["reason"] == "source-limit"
        with connect_from("127.0.0.2", fwd.port) as other_source:
            assert echoes(other_source)
        held.pop().close()
        fwd.closes(2)  # the other source's and the released one
        with connect_from("127.0.0.1", fwd.port) as again:
            assert echoes(again)  # a slot freed for the first source
        for sock in held:
            sock.close()


def test_first_byte_timeout_drops_silent_clients_without_touching_the_target() -> None:
    accepted = threading.Event()

    def note(conn: socket.socket) -> None:
        accepted.set()
        echo(conn)

    with (
        Backend(note) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--first-byte-timeout", "0.5"
        ) as fwd,
    ):
        started = time.monotonic()
        with connect_from("127.0.0.1", fwd.port) as silent:
            data, error = reads_until_closed(silent)
        assert data == b""
        assert isinstance(error, ConnectionResetError)
        assert 0.4 <= time.monotonic() - started < 5
        assert fwd.closes(1)[0]["reason"] == "first-byte-timeout"
        assert backend.accepted == 0
        with connect_from("127.0.0.1", fwd.port) as talker:
            assert echoes(talker)
        assert accepted.is_set()
