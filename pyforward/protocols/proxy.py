"""The PROXY protocol, versions 1 and 2: headers built, and read as their bytes arrive.

The specification is HAProxy's `doc/proxy-protocol.txt`; this module follows it to the byte.

Building. `build_v1` and `build_v2` take the client's `(host, port)` and the address it
connected to, as `getpeername()` and `getsockname()` give them. An IPv4 client on a dual-stack
socket (`::ffff:a.b.c.d`) is sent as IPv4; an IPv6 zone (`%eth0`) is not part of an address on
the wire and is dropped. When one side is IPv4 and the other IPv6, the IPv4 one is sent mapped
(`::ffff:a.b.c.d`) as TCP6, as HAProxy does. When an address is not known (`None`), v1 says
`PROXY UNKNOWN` and v2 sends the LOCAL command with no address, again as HAProxy does.

Reading. `ProxyHeaderReader.feed` takes bytes as they arrive and answers `None` (need more)
or the `ProxyHeader`, whose `length` is how many of the bytes fed were the header; the bytes
after it (`excess`) belong to the client's stream. Anything else raises `ProxyHeaderError`,
and as early as the bytes allow: a first byte that starts neither form, a signature that
diverges, a lone CR or LF in a v1 line, a v2 length over the cap. The reader never needs a
byte past the header to decide, and never holds more than the bound:

- v1: at most 107 bytes, CRLF included (the specification's worst case, `PROXY UNKNOWN` with
  two full IPv6 addresses). Addresses must be canonical (no leading zeros, no IPv6 zone) and
  ports decimal without leading zeros, as the specification requires; for `UNKNOWN` the rest
  of the line is ignored.
- v2: exactly 16 + length bytes, with length at most `V2_MAX_LENGTH` (4096). The addresses
  take at most 216 bytes (two UNIX paths); every TLV the specification registers fits in a
  few hundred more, a client certificate (`PP2_SUBTYPE_SSL_CLIENT_CERT`, 1-2 KiB of DER)
  included. A sender announcing more is refused before any of its body is read. TLVs are
  checked to tile the rest of the header exactly, and returned uninterpreted (no CRC32c check:
  a receiver that does not check it is allowed by the specification).

A v2 header's UNSPEC family, UNIX or UDP addresses carry no TCP client, so they give no
addresses (`source is None`): the receiver then uses the connection's own, which is what the
specification asks of LOCAL and allows for the rest. An address read as `::ffff:a.b.c.d` is
given as the IPv4 address, as pyforward reports clients everywhere.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

SIGNATURE_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
V2_FIXED_LENGTH = 16
V2_MAX_LENGTH = 4096

# The 13th byte: version 2 in the high nibble, the command in the low one.
_V2_LOCAL = 0x20
_V2_PROXY = 0x21
# The 14th byte: address family in the high nibble, transport in the low one.
_FAMILY_UNSPEC = 0x00
_TCP_OVER_IPV4 = 0x11
_TCP_OVER_IPV6 = 0x21
# Family bytes the specification defines, with the bytes of addresses each requires.
_ADDRESS_BYTES = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_TLV_HEADER = struct.Struct("!BH")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyHeaderError(ValueError):
    """The peer sent something that is not a valid PROXY header (the peer's fault)."""


@dataclass(frozen=True)
class Endpoint:
    """One end of the proxied connection."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class ProxyHeader:
    """A header read from the wire.

    `source` and `destination` are None when the header carries no TCP addresses (v1
    `UNKNOWN`, v2 LOCAL, or a v2 family other than TCP): use the connection's own then.
    """

    version: int
    source: Endpoint | None
    destination: Endpoint | None
    length: int  # bytes of the stream the header took
    local: bool = False  # v2 LOCAL: the sender's own connection, such as a health check
    tlvs: tuple[tuple[int, bytes], ...] = ()


# Building --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _address(host: str) -> IPAddress:
    """The wire form of a host string from the socket module: unmapped, without a zone.
    Cached: a forwarder's headers name its few listen addresses and its clients, again and
    again, and parsing one costs more than the rest of a header."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _port(port: int) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    return port


def _pair(
    client: tuple[str, int], destination: tuple[str, int]
) -> tuple[IPAddress, int, IPAddress, int]:
    source = _address(client[0])
    target = _address(destination[0])
    if source.version != target.version:
        # One family per header: the IPv4 side goes mapped, as HAProxy sends it.
        source = ipaddress.IPv6Address(f"::ffff:{source}") if source.version == 4 else source
        target = ipaddress.IPv6Address(f"::ffff:{target}") if target.version == 4 else target
    return source, _port(client[1]), target, _port(destination[1])


def build_v1(client: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """The v1 line for a connection from `client` to `destination`; UNKNOWN if either is None."""
    if client is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    source, source_port, target, target_port = _pair(client, destination)
    family = "TCP4" if source.version == 4 else "TCP6"
    return f"PROXY {family} {source} {target} {source_port} {target_port}\r\n".encode("ascii")


def build_v2(
    client: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """The v2 header for a connection from `client` to `destination`, with optional TLVs.

    Either address None gives the LOCAL command with no address (and no TLVs).
    """
    if client is None or destination is None:
        return SIGNATURE_V2 + bytes((_V2_LOCAL, _FAMILY_UNSPEC)) + b"\x00\x00"
    source, source_port, target, target_port = _pair(client, destination)
    family = _TCP_OVER_IPV4 if source.version == 4 else _TCP_OVER_IPV6
    body = source.packed + target.packed + struct.pack("!HH", source_port, target_port)
    for kind, value in tlvs:
        body += _TLV_HEADER.pack(kind, len(value)) + value
    if len(body) > 0xFFFF:
        raise ValueError(f"header too long: {len(body)} bytes after the fixed 16")
    return SIGNATURE_V2 + bytes((_V2_PROXY, family)) + struct.pack("!H", len(body)) + body


def build_local() -> bytes:
    """The v2 LOCAL header: a connection of the sender's own (a health check)."""
    return build_v2(None, None)


# Reading ---------------------------------------------------------------------------------------


def parse(data: bytes, max_v2_length: int = V2_MAX_LENGTH) -> ProxyHeader | None:
    """The header at the start of `data`, or None if more bytes are needed to tell.

    Raises ProxyHeaderError when `data` cannot begin a valid header.
    """
    if not data:
        return None
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    if data[0] == SIGNATURE_V2[0]:
        return _parse_v2(data, max_v2_length)
    raise ProxyHeaderError("no PROXY header: the first byte starts neither v1 nor v2")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    window = data[:V1_MAX_LENGTH]
    prefix = window[: len(V1_PREFIX)]
    if prefix != V1_PREFIX[: len(prefix)]:
        raise ProxyHeaderError("no PROXY header: the bytes are not 'PROXY '")
    cr = window.find(b"\r")
    lf = window.find(b"\n")
    if (lf != -1 and lf != cr + 1) or (cr != -1 and cr + 1 < len(window) and lf != cr + 1):
        raise ProxyHeaderError("PROXY v1 line ends with a lone CR or LF")
    if lf == -1:
        if len(window) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 line has no CRLF in its first {V1_MAX_LENGTH} bytes")
        return None
    length = lf + 1
    line = window[len(V1_PREFIX) : cr]
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        # The receiver must ignore what an UNKNOWN line says before its CRLF.
        return ProxyHeader(1, None, None, length)
    try:
        fields = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    if len(fields) != 5 or fields[0] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 line is not 'TCP4|TCP6 src dst sport dport'")
    version = 4 if fields[0] == "TCP4" else 6
    source = _v1_address(fields[1], version)
    target = _v1_address(fields[2], version)
    return ProxyHeader(
        1,
        Endpoint(source, _v1_port(fields[3])),
        Endpoint(target, _v1_port(fields[4])),
        length,
    )


def _v1_address(text: str, version: int) -> IPAddress:
    if "%" in text:
        raise ProxyHeaderError(f"PROXY v1 address has a zone: {text!r}")
    try:
        # ipaddress refuses leading zeros in IPv4, as the specification does.
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address is not an IP address: {text!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1 address {text!r} is not of the line's family")
    return _unmapped(address)


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1 port is not a decimal without leading zeros: {text!r}")
    port = int(text)
    if port > 0xFFFF:
        raise ProxyHeaderError(f"PROXY v1 port out of range: {text}")
    return port


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_v2(data: bytes, max_length: int) -> ProxyHeader | None:
    signature = data[: len(SIGNATURE_V2)]
    if signature != SIGNATURE_V2[: len(signature)]:
        raise ProxyHeaderError("no PROXY header: the bytes diverge from the v2 signature")
    if len(data) > 12 and data[12] >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header of version {data[12] >> 4}")
    if len(data) > 12 and data[12] not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2 command {data[12] & 0x0F} is not LOCAL or PROXY")
    # LOCAL ignores the family byte (the specification says to discard it); PROXY must name one.
    if len(data) > 13 and data[12] == _V2_PROXY and data[13] not in _ADDRESS_BYTES:
        raise ProxyHeaderError(f"PROXY v2 family/transport byte 0x{data[13]:02x} is not defined")
    if len(data) < V2_FIXED_LENGTH:
        return None
    command, family = data[12], data[13]
    (length,) = struct.unpack_from("!H", data, 14)
    if length > max_length:
        raise ProxyHeaderError(f"PROXY v2 header announces {length} bytes, over {max_length}")
    total = V2_FIXED_LENGTH + length
    if len(data) < total:
        return None
    body = data[V2_FIXED_LENGTH:total]
    if command == _V2_LOCAL:
        return ProxyHeader(2, None, None, total, local=True)
    needed = _ADDRESS_BYTES[family]
    if length < needed:
        raise ProxyHeaderError(f"PROXY v2 length {length} is short of its {needed} address bytes")
    tlvs = _tlvs(body[needed:]) if family != _FAMILY_UNSPEC else ()
    if family == _TCP_OVER_IPV4:
        source: IPAddress = ipaddress.IPv4Address(body[0:4])
        target: IPAddress = ipaddress.IPv4Address(body[4:8])
        ports = struct.unpack_from("!HH", body, 8)
    elif family == _TCP_OVER_IPV6:
        source = _unmapped(ipaddress.IPv6Address(body[0:16]))
        target = _unmapped(ipaddress.IPv6Address(body[16:32]))
        ports = struct.unpack_from("!HH", body, 32)
    else:
        return ProxyHeader(2, None, None, total, tlvs=tlvs)
    return ProxyHeader(2, Endpoint(source, ports[0]), Endpoint(target, ports[1]), total, tlvs=tlvs)


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    found = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _TLV_HEADER.size:
            raise ProxyHeaderError("PROXY v2 TLV cut short in its type and length")
        kind, size = _TLV_HEADER.unpack_from(data, offset)
        offset += _TLV_HEADER.size
        if size > len(data) - offset:
            raise ProxyHeaderError(f"PROXY v2 TLV 0x{kind:02x} runs past the header")
        found.append((kind, bytes(data[offset : offset + size])))
        offset += size
    return tuple(found)


class ProxyHeaderReader:
    """Reads one header from the bytes of a connection as they arrive.

    `feed` returns None until the header is complete, then the header; the bytes fed beyond
    it are `excess`, the start of the client's stream. It holds at most the bound of the form
    being read (107 bytes, or 16 + `max_v2_length`) plus the rest of the chunk that completed
    the header.
    """

    def __init__(self, max_v2_length: int = V2_MAX_LENGTH) -> None:
        self._max_v2_length = max_v2_length
        self._buffer = b""
        self.header: ProxyHeader | None = None
        self.excess = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Take the next bytes; the header once complete (then never again), else None."""
        if self.header is not None:
            raise RuntimeError("the header was already read")
        self._buffer += bytes(data)
        header = parse(self._buffer, self._max_v2_length)
        if header is not None:
            self.header = header
            self.excess = self._buffer[header.length :]
            self._buffer = b""
        return header
