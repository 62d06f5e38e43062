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
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pyforward.obs.closelog import CloseSummary, LogConnections, logs_close
from pyforward.obs.logfmt import logfmt
from pyforward.obs.ratelimit import Every
from pyforward.obs.stats import Stats
from pyforward.relay.directions import CopyDirection, Direction, SpliceDirection
from pyforward.relay.pipes import PipePool
from pyforward.relay.poller import Poller

log = logging.getLogger("pyforward.relay.connection")

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
# getaddrinfo's error codes by value, for a gaierror's name in the close line.
_GAI_NAMES = {getattr(socket, name): name for name in dir(socket) if name.startswith("EAI_")}


@dataclass(frozen=True)
class ResolvedTarget:
    family: int
    sockaddr: tuple[object, ...]
    label: str


@dataclass(frozen=True)
class ConnectFailure:
    """Why one target was not connected to."""

    reason: str  # the close reason: refused, connect-timeout, unreachable or error
    error: str  # the close line's `error=`: an errno name, or what else went wrong
    detail: str = ""  # the close line's `msg=`, where the name alone says too little

    @classmethod
    def of_errno(cls, code: int) -> ConnectFailure:
        if code == errno.ECONNREFUSED:
            reason = "refused"
        elif code == errno.ETIMEDOUT:
            reason = "connect-timeout"
        elif code in _UNREACHABLE_ERRNOS:
            reason = "unreachable"
        else:
            reason = "error"
        return cls(reason, errno.errorcode.get(code, str(code)))

    @classmethod
    def of_exception(cls, exc: Exception) -> ConnectFailure:
        if isinstance(exc, socket.gaierror):
            name = _GAI_NAMES.get(exc.errno, "gaierror")
            return cls("error", name, exc.strerror or str(exc))
        if isinstance(exc, OSError) and exc.errno:
            return cls.of_errno(exc.errno)
        return cls("error", type(exc).__name__, str(exc))


class Owner(Protocol):
    """What a connection needs from the server that made it."""

    loop: asyncio.AbstractEventLoop
    poller: Poller
    stats: Stats
    pipes: PipePool | None  # None: copy only
    close_summary: CloseSummary  # closes whose line the route's log_connections leaves out

    def connection_closed(self, connection: Connection) -> None: ...

    # An error no part of the connection expected (a bug): it must cost this connection
    # alone, never the server, the connection's slot or its descriptors.
    def connection_crashed(self, connection: Connection, exc: Exception) -> None: ...

    # Passive health: a target that refused or timed out, and one that accepted.
    def target_failed(self, target: ResolvedTarget, reason: str) -> None: ...

    def target_connected(self, target: ResolvedTarget) -> None: ...


@dataclass(frozen=True)
class Policy:
    connect_timeout: float
    idle_timeout: float | None
    keepalive: bool
    first_byte_timeout: float | None = None
    log_connections: LogConnections = LogConnections.ALL


def set_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _contained(callback: Callable[[Connection], None]) -> Callable[[Connection], None]:
    """For the event loop's callbacks of the connecting phase, which run outside the
    accept path's safety net: whatever escapes goes to the owner's `connection_crashed`.
    (The relay's callbacks run once per batch of bytes and catch their own errors.)"""

    def contained(connection: Connection) -> None:
        try:
            callback(connection)
        except Exception as exc:
            connection._owner.connection_crashed(connection, exc)

    return contained


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
        failover_log: Every,
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
        self._failover_log = failover_log  # shared by the route's connections
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
        self._error_detail = ""  # what went wrong, when the failure is not an errno
        self.closed = False
        # Read by the metrics at scrape time and at close (obs/metrics.py).
        self.reason: str | None = None  # why it closed, once it has
        self._connect_began = 0.0
        self.connect_seconds: float | None = None  # time for the target to accept

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

    @_contained
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

    @_contained
    def _on_first_byte_timeout(self) -> None:
        self._timer = None
        self.close("first-byte-timeout", reset=True)

    def _begin_connecting(self) -> None:
        self._connect_began = time.monotonic()  # finer than uvloop's millisecond clock
        self._deadline = self._loop.time() + self._policy.connect_timeout
        self._connect_next()

    def _connect_next(self) -> None:
        """Start a connect to the next target that takes one; reset the client when none
        is left. A loop, not recursion: hundreds of targets may fail within this call."""
        while self._attempt < len(self._targets):
            target = self._targets[self._attempt]
            self.target_label = target.label
            remaining_targets = len(self._targets) - self._attempt
            budget = max(self._deadline - self._loop.time(), 0.0) / remaining_targets
            failure = self._dial(target)
            if failure is None:
                self._attempt_deadline = self._loop.time() + budget
                self._timer = self._loop.call_at(self._attempt_deadline, self._on_connect_timeout)
                return
            self._connect_failed(failure)
        self.close(self._last_failure, reset=True)

    def _dial(self, target: ResolvedTarget) -> ConnectFailure | None:
        """Begin a non-blocking connect to `target`; the failure, if it failed at once."""
        try:
            sock = socket.socket(target.family, socket.SOCK_STREAM)
        except OSError as exc:
            return ConnectFailure.of_exception(exc)
        self.target = sock
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._policy.keepalive:
                set_keepalive(sock)
            # Besides OSError, a target the checks upstream let through may be one the
            # socket module refuses to take: a port above 65535 (OverflowError), a
            # zone no interface has (gaierror), an address of the wrong shape.
            code = sock.connect_ex(target.sockaddr)
        except (OSError, OverflowError, ValueError, TypeError) as exc:
            return ConnectFailure.of_exception(exc)
        if code not in (0, errno.EINPROGRESS):
            return ConnectFailure.of_errno(code)
        self._poller.add_writer(sock.fileno(), self._on_connect_ready)
        return None

    @_contained
    def _on_connect_ready(self) -> None:
        sock = self.target
        assert sock is not None
        self._poller.remove_writer(sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._connect_failed(ConnectFailure.of_errno(code))
            self._connect_next()
            return
        try:
            sock.getpeername()
        except OSError:
            # A spurious wakeup: still connecting. Wait on, within the same budget.
            self._poller.add_writer(sock.fileno(), self._on_connect_ready)
            self._timer = self._loop.call_at(self._attempt_deadline, self._on_connect_timeout)
            return
        self._start_relay(sock)

    @_contained
    def _on_connect_timeout(self) -> None:
        self._timer = None
        self._connect_failed(ConnectFailure.of_errno(errno.ETIMEDOUT))
        self._connect_next()

    def _connect_failed(self, failure: ConnectFailure) -> None:
        """Give up on the current target: close its socket, note why, move to the next."""
        sock = self.target
        if sock is not None:
            self._poller.remove_writer(sock.fileno())
            sock.close()
            self.target = None
        self._last_failure = failure.reason
        self._error, self._error_detail = failure.error, failure.detail
        if failure.reason != "error":
            self._owner.target_failed(self._targets[self._attempt], failure.reason)
        if self._attempt + 1 < len(self._targets) and self._failover_log.due(self._loop.time()):
            fields: dict[str, object] = {
                "event": "failover",
                "client": self.client_label,
                "target": self.target_label,
                "reason": failure.reason,
                "next": self._targets[self._attempt + 1].label,
            }
            if failure.reason == "error":
                fields["error"] = failure.error
            if suppressed := self._failover_log.take_suppressed():
                fields["more"] = suppressed
            log.warning(logfmt(fields))
        self._attempt += 1

    # --- relaying

    def _start_relay(self, target: socket.socket) -> None:
        owner = self._owner
        self.connect_seconds = time.monotonic() - self._connect_began
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
        self._error = self._error_detail = ""
        add_reader = self._poller.add_reader
        add_reader(self.client.fileno(), self._readable, 0)
        add_reader(target.fileno(), self._readable, 1)
        for sock in (self.client, target):
            self._poller.watch_errors(sock.fileno(), self._on_trouble, sock)
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

    def _on_trouble(self, sock: socket.socket) -> None:
        """An error or hang-up on a socket we neither read nor write just now (its bytes
        wait behind a peer that is not reading)."""
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            # Reset (or timed out): pass it on now; the bytes still waiting have no one to
            # go to, and the peer that is not reading may never start again.
            self._abort(OSError(code, os.strerror(code)))
        else:
            # A hang-up alone: the peer finished sending and we finished sending to it; its
            # last bytes are still to be relayed. Nothing to do, so stop being woken for it.
            self._poller.unwatch_errors(sock.fileno())

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

    def fail(self, exc: Exception) -> None:
        """Close after an error nothing else caught, naming it in the close line."""
        self._error, self._error_detail = type(exc).__name__, str(exc)
        self.close("error", reset=True)

    def close(self, reason: str, *, reset: bool = False) -> None:
        """Close both sides once, log the outcome, and tell the owner."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        try:
            self._release(reset=reset)
            self._log_close(reason)
        finally:
            # Whatever failed above, the slot is given back.
            self._owner.connection_closed(self)

    def byte_counts(self) -> tuple[int, int]:
        """Bytes relayed so far: client to target (up), target to client (down)."""
        if not self._directions:
            return 0, 0
        return self._directions[0].total, self._directions[1].total

    def _release(self, *, reset: bool) -> None:
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
            try:
                poller.remove_reader(fd)
                poller.remove_writer(fd)
                poller.unwatch_errors(fd)
                if reset:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            finally:
                sock.close()

    def _log_close(self, reason: str) -> None:
        self._owner.stats.closed[reason] += 1
        if not logs_close(self._policy.log_connections, reason):
            self._owner.close_summary.count(self.listen_label, reason)
            return
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
            if self._error_detail:
                fields["msg"] = self._error_detail
            log.info(logfmt(fields))
