"""The ClientHello reader: real hellos from OpenSSL at any split, hand-made edge cases, the
bounds, and any input raising only the module's error."""

from __future__ import annotations

import ipaddress
import itertools
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyforward.protocols.tls import (
    MAX_HELLO_BYTES,
    MAX_WIRE_BYTES,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    NotTLS,
    parse_client_hello,
)
from tests.hellos import (
    extension,
    handshake_of,
    hello,
    hello_message,
    real_hello,
    records,
    server_name_extension,
)

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def _read(chunks: list[bytes]) -> ClientHello | NotTLS | None:
    reader = ClientHelloReader()
    for chunk in chunks:
        answer = reader.feed(chunk)
        if answer is not None:
            return answer
    return None


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("alpn", [False, True], ids=["", "alpn"])
def test_real_hellos_name_their_server(version: ssl.TLSVersion, alpn: bool) -> None:
    wire = real_hello("Jenkins.dev.local.me", version, alpn)
    assert parse_client_hello(wire) == ClientHello("Jenkins.dev.local.me", len(wire))
    assert parse_client_hello(wire + b"\x17\x03\x03early") == ClientHello(
        "Jenkins.dev.local.me", len(wire)
    )
    # One byte at a time: no answer until the last byte, then the same one.
    reader = ClientHelloReader()
    answers = [reader.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert answers[:-1] == [None] * (len(wire) - 1)
    assert answers[-1] == ClientHello("Jenkins.dev.local.me", len(wire))


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_real_hello_without_a_name(version: ssl.TLSVersion) -> None:
    wire = real_hello(None, version)
    assert parse_client_hello(wire) == ClientHello(None, len(wire))


def test_not_tls_is_told_from_the_first_bytes() -> None:
    for wire, why in [
        (b"GET / HTTP/1.1\r\n", "first byte 0x47"),
        (b"PROXY TCP4 ", "first byte 0x50"),
        (b"SSH-2.0-OpenSSH\r\n", "first byte 0x53"),
        (b"\x80\x2e\x01\x00\x02", "first byte 0x80"),  # an SSLv2-style hello
        (b"\x16\x02", "major 2"),
        (b"\x16\x03\x05", "3.5"),
    ]:
        answer = parse_client_hello(wire)
        assert isinstance(answer, NotTLS)
        assert why in answer.reason
        assert isinstance(ClientHelloReader().feed(wire[:3]), NotTLS)
    assert parse_client_hello(b"") is None
    assert parse_client_hello(b"\x16\x03") is None
    assert parse_client_hello(b"\x16\x03\x00") is None  # SSL 3.0 in the record: still TLS


def test_hand_made_hellos() -> None:
    name = server_name_extension((0, b"a.example"))
    assert parse_client_hello(hello(None)) == ClientHello(None, len(hello(None)))
    assert parse_client_hello(hello(b"")).server_name is None  # type: ignore[union-attr]
    assert parse_client_hello(hello(extension(0, b""))).server_name is None  # type: ignore[union-attr]
    other = server_name_extension((7, b"\x00\x01"), (0, b"b.example"))
    assert parse_client_hello(hello(other)).server_name == "b.example"  # type: ignore[union-attr]
    wire = hello(extension(0x10, b"\x00\x03\x02h2") + name + extension(0xFE0D, bytes(200)))
    assert parse_client_hello(wire) == ClientHello("a.example", len(wire))
    dotted = hello(server_name_extension((0, b"a.example.")))
    assert parse_client_hello(dotted).server_name == "a.example."  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "wire",
    [
        hello(server_name_extension((0, b""))),
        hello(server_name_extension((0, b"a b"))),
        hello(server_name_extension((0, "é.example".encode()))),
        hello(server_name_extension((0, b"a"), (0, b"b"))),
        hello(server_name_extension((0, b"a.example")) + server_name_extension((0, b"a"))),
        hello(extension(0, b"\x00\x05\x00\x00\x01a")),  # list length short of its entry
        hello(extension(0, b"\x00\x04\x00\x00\x01a\xff")),  # a byte after the list
        hello(b"\x00"),  # an extension cut in its type
        hello(extension(1, b"x")[:-1] + b""),
        records(hello_message(None, session_id=bytes(33)), []),
        records(b"\x02" + hello_message(None)[1:], []),  # a ServerHello
        records(hello_message(None)[:-2] + b"\x00\x00", []) + b"\x16\x03\x01\x00\x00",
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x40\x01",  # a record over 2^14
        records(hello_message(None)[:10], []) + b"\x17\x03\x03\x00\x01x",  # data mid-hello
        records(hello_message(None)[:10], []) + b"\x16\x04\x03\x00\x01x",
    ],
)
def test_malformed_hellos_are_refused(wire: bytes) -> None:
    with pytest.raises(ClientHelloError):
        parse_client_hello(wire)


def test_the_bounds_refuse_early() -> None:
    # A handshake header announcing more than the bound is refused from its first 4 bytes.
    big = b"\x01" + (MAX_HELLO_BYTES - 3).to_bytes(3, "big")
    with pytest.raises(ClientHelloError, match="over"):
        ClientHelloReader().feed(b"\x16\x03\x01\x40\x00" + big)
    just = b"\x01" + (MAX_HELLO_BYTES - 4).to_bytes(3, "big")
    assert ClientHelloReader().feed(b"\x16\x03\x01\x40\x00" + just) is None
    # Records whose end would lie past the wire bound are refused from their header.
    message = hello_message(extension(0xFFCE, bytes(MAX_HELLO_BYTES - 100)))
    assert len(message) <= MAX_HELLO_BYTES
    wire = records(message, [8])  # 5 bytes of header per 8 of hello
    reader = ClientHelloReader()
    with pytest.raises(ClientHelloError, match=f"first {MAX_WIRE_BYTES} bytes"):
        for offset in range(0, MAX_WIRE_BYTES + 5, 997):
            reader.feed(wire[offset : offset + 997])
    assert reader.result is None


def test_a_hello_near_the_bound_in_many_records_is_read() -> None:
    message = hello_message(
        server_name_extension((0, b"big.example")) + extension(21, bytes(15000))
    )
    wire = records(message, [200])
    assert len(wire) <= MAX_WIRE_BYTES
    assert parse_client_hello(wire) == ClientHello("big.example", len(wire))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# Host names; an IP literal is none (OpenSSL, as RFC 6066 says, sends no server_name for it).
names = (
    st.lists(
        st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20),
        min_size=1,
        max_size=4,
    )
    .map(".".join)
    .filter(lambda name: not _is_address(name))
)


@given(
    names,
    st.sampled_from(VERSIONS),
    st.lists(st.integers(1, 300), max_size=6),
    st.lists(st.integers(0, 3000), max_size=10),
    st.binary(max_size=40),
)
def test_real_hellos_read_at_any_split_into_records_and_segments(
    name: str,
    version: ssl.TLSVersion,
    fragments: list[int],
    cuts: list[int],
    after: bytes,
) -> None:
    # OpenSSL writes one record; the same handshake cut into records of other sizes, then
    # into TCP segments anywhere, must read the same.
    wire = records(handshake_of(real_hello(name, version)), fragments)
    assert _read(_chunks(wire + after, cuts)) == ClientHello(name, len(wire))


@settings(max_examples=400)
@given(st.binary(max_size=400))
def test_any_bytes_raise_only_the_module_error(data: bytes) -> None:
    _read_or_refuse(data)


@settings(max_examples=400)
@given(st.binary(max_size=400))
def test_handshake_shaped_bytes_raise_only_the_module_error(data: bytes) -> None:
    _read_or_refuse(b"\x16\x03\x01" + len(data).to_bytes(2, "big") + b"\x01" + data)


@settings(max_examples=400)
@given(st.sampled_from(VERSIONS), st.integers(0, 10_000), st.integers(0, 255))
def test_damaged_real_hellos_raise_only_the_module_error(
    version: ssl.TLSVersion, where: int, byte: int
) -> None:
    wire = bytearray(real_hello("a.example", version))
    wire[where % len(wire)] = byte
    _read_or_refuse(bytes(wire))


def _read_or_refuse(data: bytes) -> None:
    """Whole and byte by byte agree, and fail only with ClientHelloError."""
    try:
        whole = parse_client_hello(data)
    except ClientHelloError:
        whole = None
        refused = True
    else:
        refused = False
    reader = ClientHelloReader()
    answer = None
    try:
        for i in range(len(data)):
            answer = reader.feed(data[i : i + 1])
            if answer is not None:
                break
    except ClientHelloError:
        assert refused
        return
    assert not refused
    assert answer == whole
    if isinstance(whole, ClientHello):
        assert whole.length <= min(len(data), MAX_WIRE_BYTES)


entries = st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=30)), max_size=3)
extension_lists = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)).map(lambda e: extension(*e)),
        entries.map(lambda e: server_name_extension(*e)),
    ),
    max_size=4,
).map(b"".join)


@settings(max_examples=400)
@given(
    st.one_of(st.none(), extension_lists),
    st.binary(max_size=34),
    st.lists(st.integers(1, 100), max_size=4),
    st.integers(0, 3),
)
def test_structured_hellos_read_or_raise_only_the_module_error(
    extensions: bytes | None, session_id: bytes, fragments: list[int], trim: int
) -> None:
    # Well-formed framing around contents of any shape: every field boundary gets exercised.
    message = hello_message(extensions, session_id)
    wire = records(message[: len(message) - trim] if trim < len(message) else message, fragments)
    _read_or_refuse(wire)
    try:
        answer = parse_client_hello(wire)
    except ClientHelloError:
        return
    if isinstance(answer, ClientHello):
        assert answer.length == len(wire)
        assert answer.server_name is None or answer.server_name.isascii()


@settings(max_examples=300)
@given(st.sampled_from(VERSIONS), st.booleans(), st.integers(1, 2000))
def test_nothing_past_the_hellos_own_length_is_read(
    version: ssl.TLSVersion, alpn: bool, cut: int
) -> None:
    # The record goes on with the rest of the real hello, but the handshake header says the
    # ClientHello ends earlier: what lies after that end (the server_name among it) is
    # never read, so the hello is cut short, or, cut right after its compression methods,
    # one without extensions.
    wire = bytearray(real_hello("a.example", version, alpn))
    length = int.from_bytes(wire[6:9], "big")
    shorter = max(0, length - cut)
    wire[6:9] = shorter.to_bytes(3, "big")
    for chunks in ([bytes(wire)], [bytes(wire[i : i + 1]) for i in range(len(wire))]):
        try:
            answer = _read(chunks)
        except ClientHelloError:
            continue
        assert answer == ClientHello(None, len(wire))
        session = wire[9 + 34]
        suites = int.from_bytes(wire[9 + 35 + session : 9 + 37 + session], "big")
        methods_end = 9 + 37 + session + suites + 1 + wire[9 + 37 + session + suites]
        assert shorter == methods_end - 9
