"""Pipes for splice(2): a bounded pool, and a probe of whether splice works here.

Rules taken from the mature relays (Go's internal/poll, HAProxy's pipe.c):
- a pipe goes back to the pool only when it is empty; one that still holds bytes is
  closed, so no stale data can ever reach another connection;
- the pool is capped, so an idle forwarder does not hold thousands of descriptors;
- failing to make a pipe (EMFILE, ENFILE) is not fatal: the caller copies instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket

Pipe = tuple[int, int]  # (read end, write end)

SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)

# A process without CAP_SYS_RESOURCE past fs.pipe-user-pages-soft gets new pipes of one
# page. Splicing through a 4 KiB pipe measured about half as fast as through the default
# 64 KiB, and slower than copying (bench/pipe_size.py); so such a pipe is not used: the
# connection copies instead.
MIN_PIPE_SIZE = 1 << 16
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class PipeTooSmall(OSError):
    """The kernel handed out a shrunken pipe (the user's pipe memory is used up)."""


class PipePool:
    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        # Empty pipes ready for use. A splice direction takes one and gives it back on
        # every batch, so it works on this list itself, as `acquire` and `release` do.
        self.free: list[Pipe] = []
        self.created = 0
        self.too_small = 0

    def acquire(self) -> Pipe:
        """A pipe, pooled or new. Raises OSError when none can be made."""
        if self.free:
            return self.free.pop()
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if fcntl.fcntl(write_end, _F_GETPIPE_SZ) < MIN_PIPE_SIZE:
            with contextlib.suppress(OSError):
                fcntl.fcntl(write_end, _F_SETPIPE_SZ, MIN_PIPE_SIZE)
            if fcntl.fcntl(write_end, _F_GETPIPE_SZ) < MIN_PIPE_SIZE:
                os.close(read_end)
                os.close(write_end)
                self.too_small += 1
                raise PipeTooSmall(errno.ENOBUFS, "pipe shrunk: fs.pipe-user-pages-soft reached")
        self.created += 1
        return read_end, write_end

    def release(self, pipe: Pipe, *, empty: bool) -> None:
        if empty and len(self.free) < self.capacity:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        while self.free:
            read_end, write_end = self.free.pop()
            os.close(read_end)
            os.close(write_end)

    def __len__(self) -> int:
        return len(self.free)


def splice_available() -> bool:
    """True when socket-to-pipe-to-socket splice works on this kernel and Python."""
    if not hasattr(os, "splice"):
        return False
    left, right = socket.socketpair()
    try:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        left.close()
        right.close()
        return False
    try:
        left.sendall(b"x")
        right.setblocking(False)
        moved = os.splice(right.fileno(), write_end, 1, flags=SPLICE_FLAGS)
        return moved == 1 and os.splice(read_end, left.fileno(), 1, flags=SPLICE_FLAGS) == 1
    except OSError:
        return False
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        left.close()
        right.close()
