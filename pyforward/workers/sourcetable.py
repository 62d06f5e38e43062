"""Open connections per client address, shared by every worker: `max_connections_per_source`
for the forwarder as a whole, coordinated rather than divided (a client's connections land
on whichever worker is free, so no share of the limit per worker could keep its meaning).

One table in shared memory (a memfd the main process makes and sends to each worker,
mapped by all): `slots` entries of (key, count), the key a 64-bit hash of the address
(BLAKE2b, the same in every process), found by linear probing. An entry whose count fell
to 0 keeps its key and is reused. Every take and give back holds an fcntl lock on the file
for its few reads and writes: two system calls per admission and two per close, paid only
with a per-source limit and more than one worker."""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct

_ENTRY = struct.Struct("=QQ")  # key (0: never used), open connections


def table_size(max_connections: int | None) -> int:
    """Slots for the table: a power of two, at least twice the connections it may hold."""
    wanted = max(1 << 16, 2 * (max_connections or 0))
    return 1 << (wanted - 1).bit_length()


def create(slots: int) -> int:
    """A new, zeroed table; its descriptor (the main process keeps and sends it)."""
    fd = os.memfd_create("pyforward-sources", os.MFD_CLOEXEC)
    os.ftruncate(fd, slots * _ENTRY.size)
    return fd


class SharedSourceCounts:
    """One process's view of the table in `fd` (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        size = os.fstat(fd).st_size
        self.slots = size // _ENTRY.size
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def take(self, source: str, cap: int) -> bool:
        key = _key(source)
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            index, count = self._find(key, insert=True)
            if index < 0 or count >= cap:
                return False  # at the cap (or, past any real use, a full table)
            _ENTRY.pack_into(self.map, index * _ENTRY.size, key, count + 1)
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def give_back(self, source: str) -> None:
        key = _key(source)
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            index, count = self._find(key, insert=False)
            if index >= 0 and count > 0:
                _ENTRY.pack_into(self.map, index * _ENTRY.size, key, count - 1)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def count(self, source: str) -> int:
        """The open connections of `source` now (for tests and status)."""
        return max(self._find(_key(source), insert=False)[1], 0)

    def _find(self, key: int, *, insert: bool) -> tuple[int, int]:
        """(slot, count) of `key`; with `insert`, a free slot for it when absent (count 0);
        (-1, -1) when absent (and, with `insert`, the table full)."""
        mask = self.slots - 1
        reusable = -1
        for step in range(self.slots):
            index = (key + step) & mask
            found, count = _ENTRY.unpack_from(self.map, index * _ENTRY.size)
            if found == key:
                return index, count
            if found == 0:  # the end of the probe: `key` is not in the table
                break
            if count == 0 and reusable < 0:
                reusable = index
        else:
            index = -1
        if not insert:
            return -1, -1
        if reusable >= 0:
            return reusable, 0
        return index, 0 if index >= 0 else -1

    def close(self) -> None:
        self.map.close()


def _key(source: str) -> int:
    digest = hashlib.blake2b(source.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1  # 0 marks a slot never used
