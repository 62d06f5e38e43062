"""The byte streams the soak suite sends: deterministic, cheap to make and to check.

A stream is named by a seed; its byte at offset i is fixed, so a receiver checks every
byte against what must be there without the sender telling it anything. The block's odd
length means a chunk delivered at the wrong offset (duplicated, dropped, reordered) does
not match.
"""

from __future__ import annotations

import random
import struct

BLOCK_SIZE = (1 << 20) + 7
_BLOCK = random.Random(0x50AC).randbytes(BLOCK_SIZE)
_DOUBLE = _BLOCK + _BLOCK  # any slice of up to BLOCK_SIZE bytes is contiguous here
_STRIDE = 104_729  # a prime: streams with nearby seeds start far apart in the block

HEADER = struct.Struct("!4sIQQ")  # magic, seed, bytes up, bytes down
MAGIC = b"SOAK"


def _start(seed: int, offset: int) -> int:
    return (seed * _STRIDE + offset) % BLOCK_SIZE


def chunk(seed: int, offset: int, size: int) -> bytes:
    """Bytes [offset, offset + size) of stream `seed`; size at most BLOCK_SIZE."""
    assert 0 <= size <= BLOCK_SIZE
    start = _start(seed, offset)
    return _DOUBLE[start : start + size]


def matches(seed: int, offset: int, data: bytes) -> bool:
    """True when `data` is exactly what stream `seed` holds at `offset`."""
    # bytes == bytes is a memcmp; a memoryview comparison goes item by item, 30x slower.
    position = 0
    while position < len(data):
        size = min(BLOCK_SIZE, len(data) - position)
        piece = data if size == len(data) else data[position : position + size]
        start = _start(seed, offset + position)
        if piece != _DOUBLE[start : start + size]:
            return False
        position += size
    return True


def up_seed(stream: int) -> int:
    """The seed of the client-to-server direction of stream number `stream`."""
    return 2 * stream


def down_seed(stream: int) -> int:
    """The seed of the server-to-client direction of stream number `stream`."""
    return 2 * stream + 1


def header(stream: int, up: int, down: int) -> bytes:
    """What a client sends first: which stream, and how many bytes go each way."""
    return HEADER.pack(MAGIC, stream, up, down)


def parse_header(data: bytes) -> tuple[int, int, int]:
    """(stream, up, down) from a header; ValueError when it is not one."""
    if len(data) != HEADER.size:
        raise ValueError(f"a soak stream header has {HEADER.size} bytes, not {len(data)}")
    magic, stream, up, down = HEADER.unpack(data)
    if magic != MAGIC:
        raise ValueError(f"not a soak stream header: {data!r}")
    return stream, up, down
