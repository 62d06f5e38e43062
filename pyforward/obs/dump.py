"""A dump of a connection's bytes to stderr, in socat's `-v` / `-x` format. A debugging aid:
it needs the copy relay (spliced bytes never pass through user space).

Each read is one block: a header `> 2026/12/02 01:54:25.000668046  length=55 from=0 to=54`
(`>` client to target, `<` back; `from`/`to` count that direction's bytes; the fraction is
the microseconds, zero-padded to nine digits, as socat 1.7 prints it), then the bytes:
as text (`text`, socat -v: newline and tab kept, CR as `\\r`, other unprintables `.`), as hex
on one line (`hex`, socat -x), or both (`text-hex`, -v -x: 16 bytes a line, hex then text,
a line also ending after a newline, and `--` after the block). Formatting is pure.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TextIO

_HEX_COLUMNS = 16


class DumpMode(StrEnum):
    OFF = "off"
    TEXT = "text"  # socat -v
    HEX = "hex"  # socat -x
    TEXT_HEX = "text-hex"  # socat -v -x


def _printable(byte: int) -> bool:
    return 0x20 <= byte < 0x7F


def _text(data: bytes) -> str:
    out = []
    for byte in data:
        if byte == 0x0D:
            out.append("\\r")
        elif byte in (0x0A, 0x09) or _printable(byte):
            out.append(chr(byte))
        else:
            out.append(".")
    return "".join(out)


def _lines(data: bytes) -> list[bytes]:
    """Pieces of at most 16 bytes, each also ending after a newline."""
    lines: list[bytes] = []
    start = 0
    for index, byte in enumerate(data):
        if byte == 0x0A or index - start + 1 == _HEX_COLUMNS:
            lines.append(data[start : index + 1])
            start = index + 1
    if start < len(data):
        lines.append(data[start:])
    return lines


def header(mark: str, when: float, length: int, start: int) -> str:
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(when))
    micro = int(when * 1e6) % 1_000_000
    return f"{mark} {stamp}.{micro:09d}  length={length} from={start} to={start + length - 1}\n"


def format_block(mode: DumpMode, mark: str, data: bytes, start: int, when: float) -> str:
    """One read of `data`, the `start`-th byte of its direction first, as socat writes it."""
    head = header(mark, when, len(data), start)
    if mode is DumpMode.TEXT:
        return head + _text(data)
    if mode is DumpMode.HEX:
        return head + "".join(f" {byte:02x}" for byte in data) + "\n"
    rows = []
    for line in _lines(data):
        hexes = "".join(f" {byte:02x}" for byte in line).ljust(3 * _HEX_COLUMNS)
        shown = "".join(chr(b) if _printable(b) else "." for b in line)
        rows.append(f"{hexes}  {shown}\n")
    return head + "".join(rows) + "--\n"


def tap(mode: DumpMode, mark: str, out: TextIO | None = None) -> Callable[[memoryview], None]:
    """A function that writes each block handed to it, counting the direction's bytes."""
    seen = 0

    def write(data: memoryview) -> None:
        nonlocal seen
        stream = out or sys.stderr
        stream.write(format_block(mode, mark, bytes(data), seen, time.time()))
        stream.flush()
        seen += len(data)

    return write
