"""The server name of a TLS ClientHello, read as its bytes arrive, without terminating TLS.

`ClientHelloReader.feed` takes the client's first bytes as they arrive and answers `None`
(need more), `NotTLS` (the stream does not start like TLS at all), or a `ClientHello` whose
`server_name` is the SNI host name, or None when the hello names none. A stream that starts
like TLS but breaks its rules raises `ClientHelloError`. The reader keeps nothing of the
bytes (the stage that feeds it keeps them, to send them on unchanged): it walks the records as
they complete and joins their handshake fragments. A hello whole in one record in the first
bytes fed (what clients send) is read in place, with no copy.

What counts as not TLS: a first byte other than 0x16 (a handshake record), or a record version
whose first byte is not 3 or whose second is above 4 (TLS 1.3 still writes 3.1-3.3 there;
3.0-3.4 are accepted). That is decided from the first three bytes, so plain HTTP, SSH, a
PROXY header or an SSLv2-style hello are told apart at once. Everything after those three bytes
is TLS's rules: a record of another type before the ClientHello is complete, an empty or
oversized record, a first handshake message that is not a ClientHello, a ClientHello whose
lengths do not add up, two extensions of one type, or a server name that is empty, not
printable ASCII, or given twice, is malformed.

Bounds. The ClientHello message (its 4-byte header included) may be at most 16 KiB, the
plaintext of one record: every real client's fits one record (post-quantum key shares make
1.5-2 KiB common; padding extensions go to 512 bytes), and a client that splits it into
several records still needs no more. The records that carry it, headers included, must lie
within the first `MAX_WIRE_BYTES` (16 KiB + 1 KiB) of the stream, which leaves room for the
record headers of a hello split into up to 200 fragments. A record header or a handshake header
that announces more than the bound is refused when it is read, before its body arrives; so the
stage never buffers more than the bound plus one read.

`length` of a ClientHello is the bytes up to the end of the record that completed it: the
part of the stream read to decide, not the part to strip (nothing is stripped). Bytes after the
ClientHello in that record, or in records after it, are not looked at: they are the target's
to judge, like everything the client sends.

Encrypted Client Hello keeps an outer server_name (the public name): that is the one read.
A trailing dot on the name is kept as sent; the host-name matcher treats it as absent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_HELLO_BYTES = 16 * 1024
MAX_WIRE_BYTES = MAX_HELLO_BYTES + 1024
MAX_RECORD_BYTES = 16 * 1024  # RFC 8446 5.1: a record's plaintext is at most 2^14 bytes

_RECORD_HEADER = 5
_HANDSHAKE_RECORD = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME = 0x0000
_HOST_NAME = 0x00
_EXTENSION_HEADER = struct.Struct("!HH")
_PRINTABLE = bytes(range(0x21, 0x7F))  # what a host_name may hold (deleted, nothing is left)


class ClientHelloError(ValueError):
    """The client's bytes start like TLS but are not a valid ClientHello (the client's fault)."""


@dataclass(frozen=True)
class NotTLS:
    """The stream does not start with a TLS handshake record."""

    reason: str


@dataclass(frozen=True)
class ClientHello:
    """A complete ClientHello."""

    server_name: str | None  # the host_name of server_name; None when the hello has none
    length: int  # bytes of the stream through the record that completed the hello


def _not_tls(prefix: bytes | bytearray) -> NotTLS | None:
    """Why the first bytes are not TLS, or None while they still may be."""
    if len(prefix) >= 1 and prefix[0] != _HANDSHAKE_RECORD:
        return NotTLS(f"first byte 0x{prefix[0]:02x} is not a TLS handshake record")
    if len(prefix) >= 2 and prefix[1] != 3:
        return NotTLS(f"record version major {prefix[1]} is not 3")
    if len(prefix) >= 3 and prefix[2] > 4:
        return NotTLS(f"record version 3.{prefix[2]} is not SSL 3.0 to TLS 1.3")
    return None


class ClientHelloReader:
    """Reads the ClientHello at the start of a connection, record by record."""

    __slots__ = ("_handshake", "_offset", "_pending", "result")

    def __init__(self) -> None:
        self._pending = bytearray()  # the bytes of the record being read, its header first
        self._offset = 0  # bytes of the stream consumed in whole records
        self._handshake = bytearray()  # the handshake fragments joined so far
        self.result: ClientHello | NotTLS | None = None

    def feed(self, data: bytes) -> ClientHello | NotTLS | None:
        """Take the next bytes; the answer once there is one (then never again), else None."""
        if self.result is not None:
            raise RuntimeError("the ClientHello was already read")
        if not self._offset and not self._pending and len(data) > 8:
            # What nearly every client sends: the whole hello in its first record, in the
            # first read. Read in place, with no copy; anything else (a hello cut into
            # records or segments, or a bad one) takes the general path below, which
            # reaches the same answer or error for these bytes.
            size = data[3] << 8 | data[4]
            hello = data[6] << 16 | data[7] << 8 | data[8]
            if (
                data[0] == _HANDSHAKE_RECORD
                and data[1] == 3
                and data[2] <= 4
                and 4 + hello <= size <= MAX_RECORD_BYTES
                and len(data) >= _RECORD_HEADER + size
                and data[5] == _CLIENT_HELLO
            ):
                self.result = ClientHello(_server_name(data, 9, 9 + hello), _RECORD_HEADER + size)
                return self.result
        self._pending += data
        if self._offset == 0 and (verdict := _not_tls(self._pending[:3])) is not None:
            self.result = verdict
            return verdict
        while len(self._pending) >= _RECORD_HEADER:
            kind, _major, _minor, size = struct.unpack_from("!BBBH", self._pending)
            if kind != _HANDSHAKE_RECORD:
                raise ClientHelloError(f"record of type 0x{kind:02x} before the ClientHello ended")
            if _major != 3:
                raise ClientHelloError(f"record version major {_major} is not 3")
            if size == 0 or size > MAX_RECORD_BYTES:
                raise ClientHelloError(f"handshake record of {size} bytes")
            end = self._offset + _RECORD_HEADER + size
            if end > MAX_WIRE_BYTES:
                raise ClientHelloError(
                    f"ClientHello records run past the first {MAX_WIRE_BYTES} bytes"
                )
            if len(self._pending) < _RECORD_HEADER + size:
                if len(self._handshake) < 4:
                    # Judge the handshake header as soon as it is in, not at the record's end.
                    self._check_header(self._handshake + self._pending[_RECORD_HEADER:])
                return None
            self._handshake += self._pending[_RECORD_HEADER : _RECORD_HEADER + size]
            del self._pending[: _RECORD_HEADER + size]
            self._offset = end
            length = self._check_header(self._handshake)
            if length is not None and len(self._handshake) >= 4 + length:
                name = _server_name(self._handshake, 4, 4 + length)
                self.result = ClientHello(name, self._offset)
                return self.result
        return None

    @staticmethod
    def _check_header(handshake: bytes | bytearray) -> int | None:
        """The ClientHello's length from its handshake header, None while that is not all in."""
        if len(handshake) >= 1 and handshake[0] != _CLIENT_HELLO:
            raise ClientHelloError(f"first handshake message is of type {handshake[0]}")
        if len(handshake) < 4:
            return None
        size = int.from_bytes(handshake[1:4], "big")
        if 4 + size > MAX_HELLO_BYTES:
            raise ClientHelloError(f"ClientHello of {size} bytes, over {MAX_HELLO_BYTES}")
        return size


def parse_client_hello(data: bytes) -> ClientHello | NotTLS | None:
    """The answer for the first bytes of a stream, all at once (see ClientHelloReader)."""
    return ClientHelloReader().feed(data)


# The fields are walked by offset within `data[at:end]`, one bound check before each read,
# with no copy of the hello and no call per field: this is most of the time a connection
# routed by name spends in Python. Every read is of bytes the check before it proved to lie
# before `end`, so nothing past the ClientHello's own length is ever looked at.


def _short(what: str, wanted: int, left: int) -> ClientHelloError:
    return ClientHelloError(f"{what} cut short: {wanted} bytes wanted, {left} left")


def _server_name(data: bytes | bytearray, at: int, end: int) -> str | None:
    """The host name the ClientHello body `data[at:end]` names (RFC 8446 4.1.2, RFC 6066 3)."""
    # legacy_version (2), random (32), then the session id's length byte.
    if end - at < 35:
        raise _short("ClientHello", 35, end - at)
    if data[at] != 3:
        raise ClientHelloError("ClientHello legacy_version major is not 3")
    session = data[at + 34]
    if session > 32:
        raise ClientHelloError("ClientHello session id over 32 bytes")
    at += 35 + session
    if end - at < 2:
        raise _short("ClientHello", session + 2, end - at + session)
    suites = data[at] << 8 | data[at + 1]
    at += 2
    if not suites or suites & 1:
        raise ClientHelloError("ClientHello cipher suites empty or of odd length")
    if end - at < suites + 1:
        raise _short("ClientHello", suites + 1, end - at)
    at += suites
    methods = data[at]
    at += 1
    if not methods:
        raise ClientHelloError("ClientHello has no compression method")
    if end - at < methods:
        raise _short("ClientHello", methods, end - at)
    at += methods
    if at == end:
        return None  # a hello without extensions (TLS 1.2 allows it) names no server
    if end - at < 2:
        raise _short("ClientHello", 2, end - at)
    size = data[at] << 8 | data[at + 1]
    at += 2
    if size != end - at:
        if size > end - at:
            raise _short("ClientHello extensions", size, end - at)
        raise ClientHelloError(f"{end - at - size} bytes after the ClientHello extensions")
    seen: set[int] = set()
    name = None
    unpack = _EXTENSION_HEADER.unpack_from
    while at < end:
        if end - at < 4:
            raise ClientHelloError(f"ClientHello extensions cut short: {end - at} bytes left")
        kind, size = unpack(data, at)
        at += 4
        if size > end - at:
            raise _short("ClientHello extensions", size, end - at)
        if kind in seen:
            raise ClientHelloError(f"ClientHello extension {kind} given twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            name = _host_name(data, at, at + size)
        at += size
    return name


def _host_name(data: bytes | bytearray, at: int, end: int) -> str | None:
    """The host_name of the server_name extension body `data[at:end]` (RFC 6066 3)."""
    if at == end:
        return None
    if end - at < 2:
        raise _short("server_name extension", 2, end - at)
    size = data[at] << 8 | data[at + 1]
    at += 2
    if size != end - at:
        if size > end - at:
            raise _short("server_name extension", size, end - at)
        raise ClientHelloError("bytes after the server_name list")
    found = None
    kinds: set[int] = set()
    while at < end:
        if end - at < 3:
            raise _short("server_name list", 3, end - at)
        kind = data[at]
        size = data[at + 1] << 8 | data[at + 2]
        at += 3
        if size > end - at:
            raise _short("server_name list", size, end - at)
        if kind in kinds:
            raise ClientHelloError(f"server_name list names type {kind} twice")
        kinds.add(kind)
        if kind == _HOST_NAME:  # types other than host_name are skipped (none is defined)
            value = data[at : at + size]
            if not value or value.translate(None, _PRINTABLE):
                raise ClientHelloError("server_name host_name is empty or not printable ASCII")
            found = value.decode("ascii")
        at += size
    return found
