"""Who may connect, and limits that hold under abuse."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyforward.config.access import AccessList, Network, parse_network, unmapped
from pyforward.engine.listeners import ipv6_available
from pyforward.errors import ConfigError
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


def reaches_target(source: str, port: int) -> bool:
    """Whether a client at `source` (127.x or ::1) is relayed by the forwarder."""
    host = "::1" if ":" in source else "127.0.0.1"
    try:
        sock = connect_from(source, port, host)
    except ConnectionResetError:
        return False
    with sock:
        return echoes(sock)


@pytest.mark.skipif(not ipv6_available(), reason="the host has no IPv6")
@pytest.mark.parametrize(
    ("rule", "let_in", "kept_out"),
    [
        (["--deny", "::ffff:127.0.0.1"], ["127.0.0.2", "::1"], ["127.0.0.1"]),
        (["--deny", "::ffff:0:0/96"], ["::1"], ["127.0.0.1", "127.0.0.2"]),
        (["--allow", "::ffff:127.0.0.0/104"], ["127.0.0.1", "127.0.0.2"], ["::1"]),
        (["--allow", "::ffff:127.0.0.2/128"], ["127.0.0.2"], ["127.0.0.1", "::1"]),
    ],
)
def test_ipv4_mapped_rules_match_ipv4_clients_of_a_dual_stack_listener(
    rule: list[str], let_in: list[str], kept_out: list[str]
) -> None:
    with (
        Backend(echo) as backend,
        forwarder("--listen", "0", "--target", backend.address, *rule) as fwd,
    ):
        for source in let_in:
            assert reaches_target(source, fwd.port), source
        for source in kept_out:
            assert not reaches_target(source, fwd.port), source
    assert backend.accepted == len(let_in)


# --- the rule logic, on any input

ipv4_networks = st.builds(
    lambda address, prefix: ipaddress.IPv4Network((address, prefix), strict=False),
    st.ip_addresses(v=4),
    st.integers(0, 32),
)


def mapped_text(network: ipaddress.IPv4Network) -> str:
    return f"::ffff:{network.network_address}/{96 + network.prefixlen}"


@given(st.one_of(st.text(max_size=60), st.ip_addresses(v=6).map(str)))
def test_parse_network_raises_only_its_own_error(text: str) -> None:
    try:
        network = parse_network(text)
    except ConfigError:
        return
    # What parses is never left mapped: such a rule would match no client.
    mapped_block = ipaddress.IPv6Network("::ffff:0:0/96")
    assert not (isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped_block))


@given(ipv4_networks, st.ip_addresses(v=4))
def test_a_mapped_rule_decides_as_its_ipv4_network(
    network: ipaddress.IPv4Network, client: ipaddress.IPv4Address
) -> None:
    assert parse_network(mapped_text(network)) == network
    for allow, deny in (([mapped_text(network)], []), ([], [mapped_text(network)])):
        mapped = AccessList.parse(allow, deny)
        plain = AccessList.parse([str(network)] if allow else [], [str(network)] if deny else [])
        for seen_as in (str(client), f"::ffff:{client}"):
            assert mapped.permits(seen_as) == plain.permits(seen_as) == plain.permits(str(client))


@given(
    st.lists(st.one_of(ipv4_networks, st.ip_addresses(v=6).map(ipaddress.IPv6Network)), max_size=3),
    st.lists(st.one_of(ipv4_networks, st.ip_addresses(v=6).map(ipaddress.IPv6Network)), max_size=3),
    st.ip_addresses(),
)
def test_deny_wins_and_an_allow_list_admits_only_its_networks(
    allow: list[Network], deny: list[Network], client: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    access = AccessList.parse(map(str, allow), map(str, deny))
    seen = client
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        seen = client.ipv4_mapped
    allowed = [unmapped(n) for n in allow]
    denied = [unmapped(n) for n in deny]
    expected = not any(seen in n for n in denied) and (
        not allowed or any(seen in n for n in allowed)
    )
    assert access.permits(str(client)) == expected
