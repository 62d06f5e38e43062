"""The PROXY protocol module: the specification's vectors, builders against the reader, and
the reader on any input, at any split of it into chunks."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyforward.protocols.proxy import (
    SIGNATURE_V2,
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    Endpoint,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
    build_local,
    build_v1,
    build_v2,
    parse,
)


def _ep(host: str, port: int) -> Endpoint:
    return Endpoint(ipaddress.ip_address(host), port)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _feed(chunks: list[bytes]) -> tuple[ProxyHeaderReader, bytes]:
    """Feed the chunks until the header is read: the reader, and the bytes after the header."""
    reader = ProxyHeaderReader()
    for index, chunk in enumerate(chunks):
        if reader.feed(chunk) is not None:
            return reader, reader.excess + b"".join(chunks[index + 1 :])
    return reader, b""


# The specification's examples ----------------------------------------------------------------

SPEC_V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
# The same connection in the binary form, written out field by field from section 2.2.
SPEC_V2 = bytes.fromhex(
    "0d0a0d0a000d0a515549540a"  # signature
    "21"  # version 2, PROXY
    "11"  # TCP over IPv4
    "000c"  # 12 bytes of addresses
    "c0a80001"  # 192.168.0.1
    "c0a8000b"  # 192.168.0.11
    "dc04"  # 56324
    "01bb"  # 443
)
EXPECTED = (_ep("192.168.0.1", 56324), _ep("192.168.0.11", 443))


def test_the_specification_example_reads_in_both_forms() -> None:
    request = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
    for wire, version in ((SPEC_V1, 1), (SPEC_V2, 2)):
        reader, after = _feed([wire + request])
        assert reader.header == ProxyHeader(version, *EXPECTED, length=len(wire))
        assert after == request


def test_the_builders_write_the_specification_example() -> None:
    assert build_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == SPEC_V1
    assert build_v2(("192.168.0.1", 56324), ("192.168.0.11", 443)) == SPEC_V2


@pytest.mark.parametrize(
    ("line", "size"),
    [
        (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", 56),
        (b"PROXY TCP6 " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n", 104),
        (b"PROXY UNKNOWN\r\n", 15),
        (b"PROXY UNKNOWN " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n", 107),
    ],
)
def test_the_specification_longest_lines_fit(line: bytes, size: int) -> None:
    assert len(line) == size <= V1_MAX_LENGTH
    header = parse(line + b"x")
    assert header is not None
    assert header.length == size


def test_v2_ipv6_local_and_unspec() -> None:
    v6 = build_v2(("2001:db8::1", 40000), ("2001:db8::2", 443))
    assert v6[12:16] == b"\x21\x21\x00\x24"  # PROXY, TCP over IPv6, 36 bytes
    assert parse(v6) == ProxyHeader(2, _ep("2001:db8::1", 40000), _ep("2001:db8::2", 443), 52)
    local = build_local()
    assert local == SIGNATURE_V2 + b"\x20\x00\x00\x00"
    assert parse(local) == ProxyHeader(2, None, None, 16, local=True)
    # LOCAL with a length: the receiver skips exactly that many bytes, whatever they are.
    assert parse(SIGNATURE_V2 + b"\x20\x11\x00\x03abcrest") == ProxyHeader(
        2, None, None, 19, local=True
    )
    # LOCAL ignores even a family byte the specification does not define.
    assert parse(SIGNATURE_V2 + b"\x20\x99\x00\x00") == ProxyHeader(2, None, None, 16, local=True)
    # PROXY of a family without TCP addresses: skipped whole, no addresses.
    unix = SIGNATURE_V2 + b"\x21\x31\x00\xd8" + bytes(216)
    assert parse(unix) == ProxyHeader(2, None, None, 232)
    assert parse(SIGNATURE_V2 + b"\x21\x00\x00\x02zz") == ProxyHeader(2, None, None, 18)


def test_v2_tlvs_are_returned_and_bounded() -> None:
    tlvs = [(0x02, b"jenkins.dev.local.me"), (0x04, b""), (0xE0, bytes(300))]
    wire = build_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tlvs)
    header = parse(wire)
    assert header is not None
    assert header.tlvs == tuple(tlvs)
    assert header.length == len(wire)
    cut = bytearray(wire)
    cut[15] -= 1  # the last TLV now runs past the header
    with pytest.raises(ProxyHeaderError, match="runs past"):
        parse(bytes(cut))


def test_senders_view_of_dual_stack_and_zones() -> None:
    # A dual-stack listener reports an IPv4 client and its own address as ::ffff:a.b.c.d.
    mapped = (("::ffff:127.0.0.9", 5000), ("::ffff:127.0.0.1", 443))
    assert build_v1(*mapped) == b"PROXY TCP4 127.0.0.9 127.0.0.1 5000 443\r\n"
    assert build_v2(*mapped)[13] == 0x11
    assert (
        build_v1(("fe80::1%eth0", 1), ("fe80::2%eth0", 2)) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"
    )
    # Mixed families go as TCP6 with the IPv4 side mapped, as HAProxy sends them.
    assert build_v1(("2001:db8::1", 1), ("127.0.0.1", 2)) == (
        b"PROXY TCP6 2001:db8::1 ::ffff:7f00:1 1 2\r\n"
    )
    assert build_v1(None, ("127.0.0.1", 2)) == b"PROXY UNKNOWN\r\n"
    assert build_v2(("127.0.0.1", 1), None) == build_local()
    with pytest.raises(ValueError, match="not an IP address"):
        build_v1(("localhost", 1), ("127.0.0.1", 2))
    with pytest.raises(ValueError, match="port"):
        build_v2(("127.0.0.1", 65536), ("127.0.0.1", 2))


@pytest.mark.parametrize(
    "wire",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # TLS
        b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",  # CR alone
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  # a trailing space
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # a leading zero in an address
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # ... in a port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # the family says IPv4
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # an Arabic-Indic digit
        b"PROXY TCP4 " + b"1" * 120,  # no CRLF within 107 bytes
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        SIGNATURE_V2[:5] + b"X",
        SIGNATURE_V2 + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in the binary form
        SIGNATURE_V2 + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
        SIGNATURE_V2 + b"\x21\x41\x00\x0c" + bytes(12),  # family 4
        SIGNATURE_V2 + b"\x21\x11\x00\x0b" + bytes(11),  # too short for IPv4
        SIGNATURE_V2 + b"\x21\x21\x00\x0c" + bytes(12),  # too short for IPv6
        SIGNATURE_V2 + b"\x21\x11\x00\x0e" + bytes(14),  # two bytes that are not a TLV
    ],
)
def test_malformed_headers_are_refused(wire: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(wire)


def test_unknown_ignores_the_rest_of_its_line() -> None:
    line = b"PROXY UNKNOWN anything \xff at all\r\n"
    assert parse(line + b"data") == ProxyHeader(1, None, None, len(line))


def test_refused_as_soon_as_the_bytes_allow() -> None:
    assert parse(b"PROX") is None
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXX")
    with pytest.raises(ProxyHeaderError):
        parse(b"X")
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXY TCP4 1.2.3.4\n")  # before the line could be complete
    assert parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is None
    assert parse(b"P" + b"ROXY " + b"x" * (V1_MAX_LENGTH - 7)) is None  # 106 bytes
    with pytest.raises(ProxyHeaderError, match="no CRLF"):
        parse(b"PROXY " + b"x" * (V1_MAX_LENGTH - 6))  # 107 bytes, no CRLF
    # A v2 length over the cap is refused from the fixed 16 bytes, before any body.
    fixed = SIGNATURE_V2 + b"\x21\x11" + (V2_MAX_LENGTH + 1).to_bytes(2, "big")
    with pytest.raises(ProxyHeaderError, match="announces"):
        parse(fixed)
    at_cap = SIGNATURE_V2 + b"\x21\x11" + V2_MAX_LENGTH.to_bytes(2, "big")
    assert parse(at_cap) is None
    with pytest.raises(ProxyHeaderError):
        parse(at_cap, max_v2_length=100)


def test_the_reader_reads_one_header_only() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(SPEC_V1[:10]) is None
    assert reader.feed(SPEC_V1[10:] + SPEC_V1) is not None
    assert reader.excess == SPEC_V1  # a second header is the client's bytes, not ours
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


# Properties ----------------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str).filter(lambda a: ipaddress.IPv6Address(a).ipv4_mapped is None)
ports = st.integers(0, 65535)
same_family = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
    st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
)
tlv_lists = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=64)), max_size=5)


@given(
    same_family,
    st.sampled_from(["v1", "v2"]),
    tlv_lists,
    st.binary(max_size=64),
    st.lists(st.integers(0, 1000), max_size=8),
)
def test_what_the_builders_write_reads_back_at_any_split(
    ends: tuple[tuple[str, int], tuple[str, int]],
    version: str,
    tlvs: list[tuple[int, bytes]],
    rest: bytes,
    cuts: list[int],
) -> None:
    client, destination = ends
    wire = build_v1(client, destination) if version == "v1" else build_v2(*ends, tlvs)
    reader, after = _feed(_chunks(wire + rest, cuts))
    header = reader.header
    assert header is not None
    assert header.length == len(wire)
    assert header.source == _ep(*client)
    assert header.destination == _ep(*destination)
    assert header.tlvs == (tuple(tlvs) if version == "v2" else ())
    assert after == rest  # nothing past the header was taken


@given(same_family, st.sampled_from(["v1", "v2"]))
def test_one_byte_at_a_time_needs_exactly_the_header(
    ends: tuple[tuple[str, int], tuple[str, int]], version: str
) -> None:
    wire = build_v1(*ends) if version == "v1" else build_v2(*ends)
    reader = ProxyHeaderReader()
    answers = [reader.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert answers[:-1] == [None] * (len(wire) - 1)
    assert answers[-1] is not None
    assert reader.excess == b""


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_any_bytes_raise_only_the_module_error(data: bytes) -> None:
    _parse_or_refuse(data)


@settings(max_examples=400)
@given(
    st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", SIGNATURE_V2]),
    st.binary(max_size=200),
)
def test_near_headers_raise_only_the_module_error(prefix: bytes, data: bytes) -> None:
    _parse_or_refuse(prefix + data)


@settings(max_examples=400)
@given(same_family, st.sampled_from(["v1", "v2"]), st.integers(0, 200), st.integers(0, 255))
def test_damaged_headers_raise_only_the_module_error(
    ends: tuple[tuple[str, int], tuple[str, int]], version: str, where: int, byte: int
) -> None:
    wire = bytearray(build_v1(*ends) if version == "v1" else build_v2(*ends))
    wire[where % len(wire)] = byte
    _parse_or_refuse(bytes(wire))


def _parse_or_refuse(data: bytes) -> None:
    """Parse whole and byte by byte: both agree, and fail only with ProxyHeaderError."""
    try:
        whole = parse(data)
    except ProxyHeaderError:
        whole = None
        refused = True
    else:
        refused = False
    reader = ProxyHeaderReader()
    try:
        for i in range(len(data)):
            if reader.feed(data[i : i + 1]) is not None:
                break
    except ProxyHeaderError:
        assert refused
        return
    assert reader.header == whole
    if whole is not None:
        assert whole.length <= len(data)
        limit = V1_MAX_LENGTH if whole.version == 1 else 16 + V2_MAX_LENGTH
        assert whole.length <= limit
