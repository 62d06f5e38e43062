"""One forwarded connection: connect to a target, relay both ways, close once.

The lifecycle is explicit and callback-driven on raw non-blocking sockets that no
transport owns (so `add_reader`/`add_writer` are safe under uvloop):

    connecting -> relaying -> closed

- Nothing is read from the client until the target has accepted: unsent bytes wait in
  the kernel, never in a buffer of ours.
- EOF from one side becomes `shutdown(SHUT_WR)` on the other; the reverse direction
  keeps flowing. The connection closes cleanly once both sides have finished.
- A reset on either side, or any close while bytes are still in flight, becomes a
  reset (SO_LINGER 0) on both, so a truncated stream never looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pyforward.logfmt import logfmt
from pyforward.pipes import PipePool
from pyforward.poller import Poller
from pyforward.ratelimit import Every
from pyforward.relay import CopyDirection, Direction, SpliceDirection
from pyforward.stats import Stats

log = logging.getLogger("pyforward.connection")

_LINGER_RESET = struct.pack("ii", 1, 0)
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
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
_UNREACHABLE_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
_READ_ROUNDS = 8  # batches moved per wakeup before yielding to other connections


@dataclass(frozen=True)
class ResolvedTarget:
    family: int
    sockaddr: tuple[object, ...]
    label: str


class Owner(Protocol):
    """What a connection needs from the server that made it."""

    loop: asyncio.AbstractEventLoop
    poller: Poller
    stats: Stats
    pipes: PipePool | None  # None: copy only

    def connection_closed(self, connection: Connection) -> None: ...

    # Passive health: a target that refused or timed out, and one that accepted.
    def target_failed(self, target: ResolvedTarget, reason: str) -> None: ...

    def target_connected(self, target: ResolvedTarget) -> None: ...


@dataclass(frozen=True)
class Policy:
    connect_timeout: float
    idle_timeout: float | None
    keepalive: bool
    first_byte_timeout: float | None = None


def set_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Connection:
    def __init__(
        self,
        owner: Owner,
        client: socket.socket,
        *,
        client_label: str,
        listen_label: str,
        targets: Sequence[ResolvedTarget],
        policy: Policy,
        source: str = "",
    ) -> None:
        self._owner = owner
        self._loop = owner.loop
        self._poller = owner.poller
        self.client = client
        self.client_label = client_label
        self.source = source  # the client's address, for per-source limits
        self.listen_label = listen_label
        self._targets = targets
        self._policy = policy
        self.target: socket.socket | None = None
        self.target_label = targets[0].label if targets else "-"
        self._started = time.monotonic()
        self._attempt = 0
        self._deadline = 0.0
        self._attempt_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._directions: list[Direction] = []
        self._last_active = 0.0
        self._last_failure = "refused"
        self._error = ""  # errno name of the failure, for the close line
        self.closed = False

    # --- connecting

    def start(self) -> None:
        client = self.client
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._policy.keepalive:
            set_keepalive(client)
        first_byte_timeout = self._policy.first_byte_timeout
        if first_byte_timeout:
            # Wait for the client to speak before spending a connection on the target:
            # a client that connects and sends nothing (slowloris) costs the target nothing.
            self._poller.add_reader(client.fileno(), self._on_first_byte)
            self._timer = self._loop.call_later(first_byte_timeout, self._on_first_byte_timeout)
            return
        self._begin_connecting()

    def _on_first_byte(self) -> None:
        self._poller.remove_reader(self.client.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            peeked = self.client.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            peeked = b"?"  # a spurious wakeup: let the relay find out
        except OSError:
            self.close("reset", reset=True)
            return
        if not peeked:
            self.close("eof")  # gone without a word: no need to bother the target
            return
        self._begin_connecting()

    def _on_first_byte_timeout(self) -> None:
        self._timer = None
        self.close("first-byte-timeout", reset=True)

    def _begin_connecting(self) -> None:
        self._deadline = self._loop.time() + self._policy.connect_timeout
        self._connect_next()

    def _connect_next(self) -> None:
        if self._attempt >= len(self._targets):
            self.close(self._last_failure, reset=True)
            return
        target = self._targets[self._attempt]
        self.target_label = target.label
        remaining_targets = len(self._targets) - self._attempt
        budget = max(self._deadline - self._loop.time(), 0.0) / remaining_targets
        try:
            sock = socket.socket(target.family, socket.SOCK_STREAM)
        except OSError as exc:
            self._connect_failed(exc.errno or errno.EIO)
            return
        self.target = sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._policy.keepalive:
            set_keepalive(sock)
        code = sock.connect_ex(target.sockaddr)
        if code not in (0, errno.EINPROGRESS):
            self._connect_failed(code)
            return
        self._poller.add_writer(sock.fileno(), self._on_connect_ready)
        self._attempt_deadline = self._loop.time() + budget
        self._timer = self._loop.call_at(self._attempt_deadline, self._on_connect_timeout)

    def _on_connect_ready(self) -> None:
        sock = self.target
        assert sock is not None
        self._poller.remove_writer(sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._connect_failed(code)
            return
        try:
            sock.getpeername()
        except OSError:
            # A spurious wakeup: still connecting. Wait on, within the same budget.
            self._poller.add_writer(sock.fileno(), self._on_connect_ready)
            self._timer = self._loop.call_at(self._attempt_deadline, self._on_connect_timeout)
            return
        self._start_relay(sock)

    def _on_connect_timeout(self) -> None:
        self._timer = None
        self._connect_failed(errno.ETIMEDOUT)

    def _connect_failed(self, code: int) -> None:
        sock = self.target
        if sock is not None:
            self._poller.remove_writer(sock.fileno())
            sock.close()
            self.target = None
        if code == errno.ECONNREFUSED:
            self._last_failure = "refused"
        elif code == errno.ETIMEDOUT:
            self._last_failure = "connect-timeout"
        elif code in _UNREACHABLE_ERRNOS:
            self._last_failure = "unreachable"
        else:
            self._last_failure = "error"
        self._error = errno.errorcode.get(code, str(code))
        if self._last_failure != "error":
            self._owner.target_failed(self._targets[self._attempt], self._last_failure)
        if self._attempt + 1 < len(self._targets):
            log.warning(
                logfmt(
                    {
                        "event": "failover",
                        "client": self.client_label,
                        "target": self.target_label,
                        "reason": self._last_failure,
                        "next": self._targets[self._attempt + 1].label,
                    }
                )
            )
        self._attempt += 1
        self._connect_next()

    # --- relaying

    def _start_relay(self, target: socket.socket) -> None:
        owner = self._owner
        owner.target_connected(self._targets[self._attempt])
        pipes = owner.pipes
        if pipes is not None:
            self._directions = [
                SpliceDirection(self.client, target, owner.stats, pipes),
                SpliceDirection(target, self.client, owner.stats, pipes),
            ]
        else:
            self._directions = [
                CopyDirection(self.client, target, owner.stats),
                CopyDirection(target, self.client, owner.stats),
            ]
        self._error = ""
        add_reader = self._poller.add_reader
        add_reader(self.client.fileno(), self._readable, 0)
        add_reader(target.fileno(), self._readable, 1)
        if self._policy.idle_timeout:
            self._last_active = self._loop.time()
            self._timer = self._loop.call_later(self._policy.idle_timeout, self._check_idle)

    def _readable(self, index: int) -> None:
        direction = self._directions[index]
        if self._timer is not None:
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
                self._abort(exc)
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
                self._abort(exc)
                return
            if moved < 16384:
                return  # a short read: the source is very likely empty now

    def _writable(self, index: int) -> None:
        direction = self._directions[index]
        if self._timer is not None:
            self._last_active = self._loop.time()
        try:
            direction.flush()
        except BlockingIOError:
            return
        except OSError as exc:
            self._abort(exc)
            return
        self._poller.remove_writer(direction.dst_fd)
        self._poller.add_reader(direction.src_fd, self._readable, index)
        self._readable(index)

    def _fall_back_to_copy(self, index: int, exc: OSError) -> Direction:
        old = self._directions[index]
        old.release()
        new = CopyDirection(old.src, old.dst, self._owner.stats)
        new.total = old.total
        self._directions[index] = new
        if _fallback_log.due(self._loop.time()):
            fields: dict[str, object] = {
                "event": "splice-fallback",
                "client": self.client_label,
                "error": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                "msg": exc.strerror,
            }
            if suppressed := _fallback_log.take_suppressed():
                fields["more"] = suppressed
            log.warning(logfmt(fields))
        return new

    def _eof(self, index: int) -> None:
        direction = self._directions[index]
        direction.done = True
        self._poller.remove_reader(direction.src_fd)
        # If the destination is already gone, its own direction will say so.
        with contextlib.suppress(OSError):
            direction.dst.shutdown(socket.SHUT_WR)
        if self._directions[1 - index].done:
            self.close("eof")

    def _abort(self, exc: OSError) -> None:
        code = exc.errno or 0
        if code in _RESET_ERRNOS:
            self.close("reset", reset=True)
        else:
            self._error = errno.errorcode.get(code, str(code))
            self.close("error", reset=True)

    def _check_idle(self) -> None:
        idle = self._policy.idle_timeout
        assert idle is not None
        quiet_for = self._loop.time() - self._last_active
        if quiet_for >= idle:
            self._timer = None
            in_flight = any(d.pending for d in self._directions)
            self.close("idle-timeout", reset=in_flight)
        else:
            self._timer = self._loop.call_later(idle - quiet_for, self._check_idle)

    # --- closing

    def close(self, reason: str, *, reset: bool = False) -> None:
        """Close both sides once, log the outcome, and tell the owner."""
        if self.closed:
            return
        self.closed = True
        poller = self._poller
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for direction in self._directions:
            if direction.pending:
                reset = True
            direction.release()
        for sock in (self.client, self.target):
            if sock is None or sock.fileno() < 0:
                continue
            fd = sock.fileno()
            poller.remove_reader(fd)
            poller.remove_writer(fd)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
        stats = self._owner.stats
        stats.closed[reason] += 1
        if log.isEnabledFor(logging.INFO):
            up = self._directions[0].total if self._directions else 0
            down = self._directions[1].total if self._directions else 0
            kinds = {d.kind for d in self._directions}
            fields: dict[str, object] = {
                "event": "close",
                "client": self.client_label,
                "listen": self.listen_label,
                "target": self.target_label,
                "up": up,
                "down": down,
                "dur": round(time.monotonic() - self._started, 6),
                "relay": "copy" if "copy" in kinds else ("splice" if kinds else "-"),
                "reason": reason,
            }
            if self._error:
                fields["error"] = self._error
            log.info(logfmt(fields))
        self._owner.connection_closed(self)
