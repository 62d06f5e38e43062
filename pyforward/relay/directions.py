"""One direction of a relay: bytes from a source socket to a destination socket.

Both kinds hold at most one bounded batch in flight (a pipe's worth, or one buffer),
and read from the source only once that batch is fully written: that is the whole of
the backpressure, and it means a `BlockingIOError` from `fill` always says "source
empty", never "pipe full" (the rule Go's splice code follows).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from pyforward.obs.stats import Stats
from pyforward.relay.pipes import SPLICE_FLAGS, Pipe, PipePool

SPLICE_CHUNK = 1 << 16  # a default pipe's capacity; larger pipes measured no faster
COPY_BUFFER = 1 << 18


class Direction:
    """Moves bytes from `src` to `dst`; the driver calls fill() and flush()."""

    __slots__ = ("done", "dst", "dst_fd", "pending", "src", "src_fd", "stats", "tap", "total")

    kind = ""

    def __init__(self, src: socket.socket, dst: socket.socket, stats: Stats) -> None:
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.stats = stats
        self.pending = 0  # read from src, not yet written to dst
        self.total = 0  # bytes read from src
        self.done = False
        # Shown each batch read (a dump, obs/dump.py); only the copy path has the bytes.
        self.tap: Callable[[memoryview], None] | None = None

    def fill(self) -> int:
        """Read a batch from src; 0 means EOF. BlockingIOError: nothing to read yet."""
        raise NotImplementedError

    def flush(self) -> None:
        """Write pending bytes to dst, as many as it takes. BlockingIOError: dst is full."""
        raise NotImplementedError

    def release(self) -> None:
        """Give back what the direction holds."""


class SpliceDirection(Direction):
    """socket -> pipe -> socket, in the kernel. A pipe is held only while bytes are in it,
    so an idle connection holds no pipe at all. (`os.splice`'s flags are passed by
    position: parsing a keyword argument costs more than the rest of the call.)"""

    __slots__ = ("_pipe", "_pool")

    kind = "splice"

    def __init__(self, src: socket.socket, dst: socket.socket, stats: Stats, pool: PipePool):
        # Direction's fields, set here rather than by a call to its __init__: two of these
        # are made for every connection.
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.stats = stats
        self.pending = self.total = 0
        self.done = False
        self.tap = None
        self._pool = pool
        self._pipe: Pipe | None = None

    def fill(self) -> int:
        pipe = self._pipe
        if pipe is None:
            # `PipePool.acquire`, its common case inline (this runs for every batch).
            free = self._pool.free
            pipe = self._pipe = free.pop() if free else self._pool.acquire()
        try:
            moved = os.splice(self.src_fd, pipe[1], SPLICE_CHUNK, None, None, SPLICE_FLAGS)
        except BaseException:
            self.release()
            raise
        if not moved:
            self._give_back_empty(pipe)
            return 0
        self.pending = moved
        self.total += moved
        self.stats.spliced_bytes += moved
        return moved

    def flush(self) -> None:
        pipe = self._pipe
        assert pipe is not None
        while self.pending:
            self.pending -= os.splice(pipe[0], self.dst_fd, self.pending, None, None, SPLICE_FLAGS)
        self._give_back_empty(pipe)

    def _give_back_empty(self, pipe: Pipe) -> None:
        self._pipe = None
        pool = self._pool
        free = pool.free
        if len(free) < pool.capacity:
            free.append(pipe)
        else:
            pool.release(pipe, empty=True)  # the pool is full: it closes the pipe

    def release(self) -> None:
        if self._pipe is not None:
            self._pool.release(self._pipe, empty=self.pending == 0)
            self._pipe = None


class CopyDirection(Direction):
    """recv_into/send through user space. Bytes are read into one scratch buffer shared
    by every connection; only what the destination does not take at once is copied out
    and kept, so an idle or freely flowing connection holds no buffer."""

    __slots__ = ("_data", "_start")

    kind = "copy"
    _scratch = memoryview(bytearray(COPY_BUFFER))

    def __init__(self, src: socket.socket, dst: socket.socket, stats: Stats) -> None:
        super().__init__(src, dst, stats)
        self._data = self._scratch
        self._start = 0

    def fill(self) -> int:
        received = self.src.recv_into(self._scratch)
        if received and self.tap is not None:
            self.tap(self._scratch[:received])
        self._data = self._scratch
        self._start = 0
        self.pending = received
        self.total += received
        self.stats.copied_bytes += received
        return received

    def flush(self) -> None:
        try:
            while self.pending:
                sent = self.dst.send(self._data[self._start : self._start + self.pending])
                self._start += sent
                self.pending -= sent
        except BlockingIOError:
            if self._data is self._scratch:
                # The scratch buffer is everyone's: keep our remainder apart.
                end = self._start + self.pending
                self._data = memoryview(bytes(self._scratch[self._start : end]))
                self._start = 0
            raise
