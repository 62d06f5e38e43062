"""The pump: a connection's bytes both ways, by splice or copy, until both sides finish.

- EOF from one side becomes `shutdown(SHUT_WR)` on the other; the reverse direction
  keeps flowing. The connection closes cleanly once both sides have finished.
- A reset on either side, or any close while bytes are still in flight, becomes a reset
  on both, so a truncated stream never looks complete.
- The idle timer is re-armed lazily: a batch only notes the time, and the timer, when it
  fires, sleeps again for what is left (no timer work per batch).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import TYPE_CHECKING

from pyforward.obs.dump import DumpMode, tap
from pyforward.obs.ratelimit import Every
from pyforward.obs.reasons import CloseReason, Side
from pyforward.relay.directions import CopyDirection, Direction, SpliceDirection
from pyforward.relay.stages import RESET_ERRNOS

if TYPE_CHECKING:
    from pyforward.relay.connection import Connection

log = logging.getLogger("pyforward.relay.connection")

# A splice that fails on these before moving a byte falls back to copying; pipe2 fails
# with EMFILE/ENFILE when descriptors run out.
_SPLICE_FALLBACK = {
    errno.EINVAL,
    errno.ENOSYS,
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOMEM,
    errno.ENOBUFS,  # PipeTooSmall
}
_fallback_log = Every(5.0)
_READ_ROUNDS = 8  # batches moved per wakeup before yielding to other connections
# Which side an error came from: reading a direction's source, or writing its destination.
_SOURCE = (Side.CLIENT, Side.TARGET)  # by direction index: 0 is client -> target
_DESTINATION = (Side.TARGET, Side.CLIENT)


class Pump:
    """Relays between the connection's client and target; closes it when done."""

    __slots__ = (
        "_connection",
        "_idle_timeout",
        "_idle_timer",
        "_last_active",
        "_loop",
        "_poller",
        "directions",
    )

    def __init__(self, connection: Connection, target: socket.socket) -> None:
        self._connection = connection
        self._loop = connection.loop
        self._poller = connection.poller
        owner = connection.owner
        client = connection.client
        pipes = owner.pipes
        self.directions: list[Direction]
        if pipes is not None:
            self.directions = [
                SpliceDirection(client, target, owner.stats, pipes),
                SpliceDirection(target, client, owner.stats, pipes),
            ]
        else:
            self.directions = [
                CopyDirection(client, target, owner.stats),
                CopyDirection(target, client, owner.stats),
            ]
        if connection.policy.dump is not DumpMode.OFF:
            for direction, mark in zip(self.directions, "><", strict=True):
                direction.tap = tap(connection.policy.dump, mark)
        self._idle_timeout = connection.policy.idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        watch = self._poller.watch
        watch(client.fileno(), self._readable, 0, self._on_trouble, client)
        watch(target.fileno(), self._readable, 1, self._on_trouble, target)
        if self._idle_timeout:
            self._last_active = self._loop.time()
            self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def start(self) -> None:
        """Relay what the client already sent, without waiting for the poller to say so:
        a client that speaks first (HTTP, TLS) has sent by the time its target accepted, so
        this saves the wakeup that would report it; a client that has not costs one read
        that finds nothing (the watch then reports its bytes as usual)."""
        self._readable(0)

    def _readable(self, index: int) -> None:
        direction = self.directions[index]
        if self._idle_timer is not None:
            self._last_active = self._loop.time()
        for _ in range(_READ_ROUNDS):
            try:
                moved = direction.fill()
            except BlockingIOError:
                return
            except OSError as exc:
                if direction.kind == "splice" and exc.errno in _SPLICE_FALLBACK:
                    direction = self._fall_back_to_copy(index, exc)
                    continue
                self._abort(exc, _SOURCE[index])
                return
            if not moved:
                self._eof(index)
                return
            try:
                direction.flush()
            except BlockingIOError:
                # The destination is full: stop reading until it drains (backpressure).
                self._poller.remove_reader(direction.src_fd)
                self._poller.add_writer(direction.dst_fd, self._writable, index)
                return
            except OSError as exc:
                self._abort(exc, _DESTINATION[index])
                return
            if moved < 16384 and not self._poller.peer_closed:
                # A short read: the source is very likely empty now. (When its peer has
                # closed, the next read is the EOF: taken now, not at another wakeup.)
                return

    def _writable(self, index: int) -> None:
        direction = self.directions[index]
        if self._idle_timer is not None:
            self._last_active = self._loop.time()
        try:
            direction.flush()
        except BlockingIOError:
            return
        except OSError as exc:
            self._abort(exc, _DESTINATION[index])
            return
        self._poller.remove_writer(direction.dst_fd)
        self._poller.add_reader(direction.src_fd, self._readable, index)
        self._readable(index)

    def _on_trouble(self, sock: socket.socket) -> None:
        """An error or hang-up on a socket we neither read nor write just now (its bytes
        wait behind a peer that is not reading)."""
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            # Reset (or timed out): pass it on now; the bytes still waiting have no one to
            # go to, and the peer that is not reading may never start again.
            side = Side.CLIENT if sock is self._connection.client else Side.TARGET
            self._abort(OSError(code, os.strerror(code)), side)
        else:
            # A hang-up alone: the peer finished sending and we finished sending to it; its
            # last bytes are still to be relayed. Nothing to do, so stop being woken for it.
            self._poller.unwatch_errors(sock.fileno())

    def _fall_back_to_copy(self, index: int, exc: OSError) -> Direction:
        old = self.directions[index]
        old.release()
        new = CopyDirection(old.src, old.dst, self._connection.owner.stats)
        new.total = old.total
        self.directions[index] = new
        if _fallback_log.due(self._loop.time()):
            _fallback_log.warn(
                log,
                {
                    "event": "splice-fallback",
                    "client": self._connection.client_label,
                    "error": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                    "msg": exc.strerror,
                },
            )
        return new

    def _eof(self, index: int) -> None:
        direction = self.directions[index]
        direction.done = True
        if self.directions[1 - index].done:
            # Both sides have finished. The close sends the FIN a shutdown would (both
            # receive queues are read to their end, so it is no reset), and drops every
            # watch of both sockets.
            self._connection.close(CloseReason.EOF)
            return
        self._poller.remove_reader(direction.src_fd)
        # Not contextlib.suppress: this runs for every connection, and a plain try is free.
        try:  # noqa: SIM105
            direction.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the destination is already gone: its own direction will say so

    def _abort(self, exc: OSError, side: Side) -> None:
        code = exc.errno or 0
        connection = self._connection
        if code in RESET_ERRNOS:
            connection.close(CloseReason.RESET, reset=True, reset_by=side)
        else:
            connection.error = errno.errorcode.get(code, str(code))
            connection.close(CloseReason.ERROR, reset=True)

    def _check_idle(self) -> None:
        idle = self._idle_timeout
        assert idle is not None
        quiet_for = self._loop.time() - self._last_active
        if quiet_for >= idle:
            self._idle_timer = None
            self._connection.close(CloseReason.IDLE_TIMEOUT, reset=self.in_flight)
        else:
            self._idle_timer = self._loop.call_later(idle - quiet_for, self._check_idle)

    @property
    def in_flight(self) -> bool:
        """Bytes read from one side and not yet written to the other."""
        first, second = self.directions
        return bool(first.pending or second.pending)

    def release(self) -> None:
        """Stop the idle timer and give back the directions' pipes (the connection closes
        the sockets)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for direction in self.directions:
            direction.release()
