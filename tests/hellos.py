"""TLS ClientHellos for tests: real ones from Python's ssl module, and hand-made ones."""

from __future__ import annotations

import contextlib
import ssl
import struct
from collections.abc import Sequence


def real_hello(
    server_name: str | None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3, alpn: bool = False
) -> bytes:
    """The first flight of Python's ssl module (OpenSSL) connecting to `server_name`.

    With `server_name` None the hello carries no server_name extension.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = version
    context.maximum_version = version
    if alpn:
        context.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def records(handshake: bytes, sizes: Sequence[int], version: bytes = b"\x03\x01") -> bytes:
    """`handshake` cut into handshake records of the fragment `sizes` (the last repeats)."""
    out = b""
    offset = 0
    index = 0
    while offset < len(handshake):
        size = max(1, sizes[min(index, len(sizes) - 1)]) if sizes else len(handshake)
        fragment = handshake[offset : offset + size]
        out += b"\x16" + version + struct.pack("!H", len(fragment)) + fragment
        offset += len(fragment)
        index += 1
    return out


def handshake_of(wire: bytes) -> bytes:
    """The handshake bytes inside a run of records (the reverse of `records`)."""
    out = b""
    while wire:
        (size,) = struct.unpack_from("!H", wire, 3)
        out += wire[5 : 5 + size]
        wire = wire[5 + size :]
    return out


def extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def server_name_extension(*entries: tuple[int, bytes]) -> bytes:
    names = b"".join(struct.pack("!BH", kind, len(name)) + name for kind, name in entries)
    return extension(0, struct.pack("!H", len(names)) + names)


def hello_message(extensions: bytes | None, session_id: bytes = b"") -> bytes:
    """A ClientHello handshake message (its 4-byte header included) with these extensions."""
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id
    body += b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def hello(extensions: bytes | None) -> bytes:
    """A hand-made ClientHello in one record."""
    return records(hello_message(extensions), [])
