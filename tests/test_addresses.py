from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyforward.config.addresses import Address, client_host, format_peer, parse_listen, parse_target
from pyforward.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("443", Address(None, 443)),
        (":8443", Address(None, 8443)),
        ("0", Address(None, 0)),
        ("127.0.0.1:80", Address("127.0.0.1", 80)),
        ("[::1]:443", Address("::1", 443)),
        ("[::]:443", Address("::", 443)),
        ("localhost:8080", Address("localhost", 8080)),
        (" 10.0.0.5:32653 ", Address("10.0.0.5", 32653)),
    ],
)
def test_listen_forms(text: str, expected: Address) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.211.55.14:32653", Address("10.211.55.14", 32653)),
        ("[fe80::1%eth0]:443", Address("fe80::1%eth0", 443)),
        ("node-1.cluster.local:30443", Address("node-1.cluster.local", 30443)),
    ],
)
def test_target_forms(text: str, expected: Address) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("443", "expected HOST:PORT"),
        (":443", "expected HOST:PORT"),
        ("host:0", "port must be 1-65535"),
        ("host:65536", "port must be 1-65535"),
        ("host:http", "is not a number"),
        ("host:", "the port is empty"),
        ("::1:443", "[ADDRESS]:PORT"),
        ("[::1]443", "expected [IPV6]:PORT"),
        ("[nothex]:443", "is not an IPv6 address"),
        ("999.1.1.1:80", "is not a host name"),
        ("under_score:80", "is not a host name"),
        ("host:٣", "is not a number"),
    ],
)
def test_target_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="target address") as info:
        parse_target(text)
    assert message in str(info.value)


def test_str_round_trips() -> None:
    for text in ("*:443", "127.0.0.1:80", "[::1]:443"):
        parsed = parse_listen(text.replace("*", ""))
        assert str(parsed) == text


def test_ipv4_clients_on_dual_stack_sockets_read_as_ipv4() -> None:
    assert client_host("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_host("::1") == "::1"
    assert format_peer(("::ffff:127.0.0.1", 5000, 0, 0)) == "127.0.0.1:5000"
    assert format_peer(("::1", 5000, 0, 0)) == "[::1]:5000"


@given(st.text(max_size=40))
def test_parsers_raise_only_their_own_error(text: str) -> None:
    for parse in (parse_listen, parse_target):
        try:
            address = parse(text)
        except ConfigError:
            continue
        assert 0 <= address.port <= 65535
        # What is accepted prints back to something that parses to the same address.
        printed = str(address).removeprefix("*")
        assert parse(printed) == address


@given(st.ip_addresses(), st.integers(1, 65535))
def test_every_ip_address_and_port_parses(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    assert parse_target(text) == Address(str(ip), port)


# The exploit of a zone that held a unit file's next lines, and its near relatives.
HOSTILE_ZONES = [
    '%\nExecStartPre=/bin/sh -c "id >/tmp/x"\nListenStream=127.0.0.1:8443\n#',
    "eth0\n",
    "eth0\r",
    "eth\x00",
    "eth 0",
    "e%d",
    "a/b",
    "a:b",
    "..",
    ".",
    "",
    "0",
    "2147483648",
    "sixteen-chars-xx",
    "éth0",
]


@pytest.mark.parametrize("zone", HOSTILE_ZONES)
@pytest.mark.parametrize("parse", [parse_listen, parse_target])
def test_a_zone_that_is_no_interface_name_is_refused(
    zone: str, parse: Callable[[str], Address]
) -> None:
    with pytest.raises(ConfigError, match=r"zone|interface") as info:
        parse(f"[fe80::1%{zone}]:443")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("zone", ["eth0", "lo", "enp0s31f6", "wg-home_1", "br.10", "2", "x" * 15])
def test_interface_names_and_indexes_are_zones(zone: str) -> None:
    assert parse_listen(f"[fe80::1%{zone}]:443") == Address(f"fe80::1%{zone}", 443)


def is_interface_name(zone: str) -> bool:
    """An interface name as Linux makes them and systemd accepts them, or an ifindex."""
    if zone.isascii() and zone.isdigit():
        return 1 <= int(zone) < 2**31
    return (
        0 < len(zone) < 16
        and zone not in {".", ".."}
        and all(33 <= ord(char) <= 126 and char not in ":/%" for char in zone)
    )


ZONES = st.one_of(st.text(max_size=24), st.text(st.characters(max_codepoint=127), max_size=20))


@given(ZONES, st.sampled_from(["fe80::1", "::1", "2001:db8::7"]))
def test_accepted_zones_are_interface_names(zone: str, address: str) -> None:
    for parse in (parse_listen, parse_target):
        try:
            parsed = parse(f"[{address}%{zone}]:443")
        except ConfigError:
            continue
        assert parsed.host == f"{address}%{zone}"
        assert is_interface_name(zone)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40).map(lambda s: f"[::1%{s}"))
def test_bracketed_text_raises_only_the_modules_error(text: str) -> None:
    for parse in (parse_listen, parse_target):
        try:
            address = parse(text)
        except ConfigError:
            continue
        assert address.host is not None
        assert all(33 <= ord(char) <= 126 for char in address.host)
