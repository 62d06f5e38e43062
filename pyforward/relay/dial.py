"""The dial: connect to one of a connection's targets, in failover order, within one
shared connect budget, telling passive health of each result.

The targets come in the order to try them (healthy ones first, see engine/health.py).
The route's `connect_timeout` is the budget of the whole dial, not of each attempt: each
attempt gets an equal share of what is left, so a dead first target cannot use it all,
and a target that fails at once gives its share to the ones after it.

With `connect_retries` (socat's `retry=N`, `forever`), a dial in which every target failed
starts again after `connect_retry_interval`, with a new budget, until the retries are used
up; the client waits meanwhile (its bytes wait in the kernel, unread).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from dataclasses import dataclass

from pyforward.obs.ratelimit import Every
from pyforward.obs.reasons import CloseReason
from pyforward.relay.sockets import BORN_NONBLOCKING, TARGET_SOCKET_TYPE, prepare
from pyforward.relay.stages import Stage, StageHost, contained

log = logging.getLogger("pyforward.relay.connection")

# A UNIX target without a file, or with a full backlog, refuses as a closed port does.
_REFUSED_ERRNOS = {errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN}
_UNREACHABLE_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
# A connect asked again while the first is under way says so; once done, it gives 0 (or
# EISCONN) or the reason it failed, as SO_ERROR would, in one call.
_CONNECTING = {errno.EINPROGRESS, errno.EALREADY}
_CONNECTED = {0, errno.EISCONN}
# getaddrinfo's error codes by value, for a gaierror's name in the close line.
_GAI_NAMES = {getattr(socket, name): name for name in dir(socket) if name.startswith("EAI_")}


@dataclass(frozen=True)
class ResolvedTarget:
    family: int
    sockaddr: tuple[object, ...] | str  # a str: a UNIX socket's path or abstract name
    label: str


@dataclass(frozen=True)
class ConnectFailure:
    """Why one target was not connected to."""

    reason: CloseReason  # refused, connect-timeout, unreachable or error
    error: str  # the close line's `error=`: an errno name, or what else went wrong
    detail: str = ""  # the close line's `msg=`, where the name alone says too little

    @classmethod
    def of_errno(cls, code: int) -> ConnectFailure:
        if code in _REFUSED_ERRNOS:
            reason = CloseReason.REFUSED
        elif code == errno.ETIMEDOUT:
            reason = CloseReason.CONNECT_TIMEOUT
        elif code in _UNREACHABLE_ERRNOS:
            reason = CloseReason.UNREACHABLE
        else:
            reason = CloseReason.ERROR
        return cls(reason, errno.errorcode.get(code, str(code)))

    @classmethod
    def of_exception(cls, exc: Exception) -> ConnectFailure:
        if isinstance(exc, socket.gaierror):
            name = _GAI_NAMES.get(exc.errno, "gaierror")
            return cls(CloseReason.ERROR, name, exc.strerror or str(exc))
        if isinstance(exc, OSError) and exc.errno:
            return cls.of_errno(exc.errno)
        return cls(CloseReason.ERROR, type(exc).__name__, str(exc))


def bind_source_port(sock: socket.socket, family: int, port: int) -> None:
    """Connect from `port` (socat's sourceport=): one connection to a target at a time."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))


class Dial(Stage):
    """Connect to the first of the host's `targets` that accepts; set `host.target`."""

    __slots__ = (
        "_attempt",
        "_attempt_deadline",
        "_attempt_timer",
        "_deadline",
        "_failover_log",
        "_last_failure",
        "_retries_left",
        "_retry_interval",
        "_source_port",
        "connect_timeout",
        "keepalive",
    )

    side = "dial"

    def __init__(
        self,
        connect_timeout: float,
        *,
        keepalive: bool,
        failover_log: Every,
        retries: int | None = 0,
        retry_interval: float = 1.0,
        source_port: int | None = None,
    ) -> None:
        self._source_port = source_port
        self.connect_timeout = connect_timeout
        self._retries_left = retries  # None: forever
        self._retry_interval = retry_interval
        self.keepalive = keepalive
        self._failover_log = failover_log  # shared by the route's connections
        self._attempt = 0
        self._deadline = 0.0
        self._attempt_deadline = 0.0
        self._attempt_timer: asyncio.TimerHandle | None = None
        self._last_failure = CloseReason.REFUSED

    def start(self, host: StageHost) -> None:
        self.host = host
        self._deadline = host.loop.time() + self.connect_timeout
        self._connect_next()

    def stop(self) -> None:
        if self._attempt_timer is not None:
            self._attempt_timer.cancel()
            self._attempt_timer = None

    def _connect_next(self) -> None:
        """Start a connect to the next target that takes one; reset the client when none
        is left. A loop, not recursion: hundreds of targets may fail within this call."""
        host = self.host
        targets = host.targets
        loop = host.loop
        while self._attempt < len(targets):
            target = targets[self._attempt]
            host.target_label = target.label
            remaining_targets = len(targets) - self._attempt
            budget = max(self._deadline - loop.time(), 0.0) / remaining_targets
            outcome = self._begin(target)
            if outcome is False:
                self._attempt_deadline = loop.time() + budget
                self._attempt_timer = loop.call_at(self._attempt_deadline, self._on_timeout)
                return
            if outcome is True:
                self._connected()
                return
            self._failed(outcome)
        if self._retries_left is None or self._retries_left > 0:
            if self._retries_left is not None:
                self._retries_left -= 1
            self._attempt_timer = loop.call_later(self._retry_interval, self._retry)
            return
        host.close(self._last_failure, reset=True)

    @contained
    def _retry(self) -> None:
        """Every target failed: start over, with a new budget."""
        self._attempt_timer = None
        self._attempt = 0
        self._deadline = self.host.loop.time() + self.connect_timeout
        self._connect_next()

    def _begin(self, target: ResolvedTarget) -> ConnectFailure | bool:
        """Begin a non-blocking connect to `target`: False while it is under way (its socket
        watched), True when it is done already, else why it failed at once."""
        try:
            sock = socket.socket(target.family, TARGET_SOCKET_TYPE)
        except OSError as exc:
            return ConnectFailure.of_exception(exc)
        self.host.target = sock
        try:
            prepare(sock, keepalive=self.keepalive, nonblocking=BORN_NONBLOCKING)
            if self._source_port is not None and target.family != socket.AF_UNIX:
                bind_source_port(sock, target.family, self._source_port)
            # Besides OSError, a target the checks upstream let through may be one the
            # socket module refuses to take: a port above 65535 (OverflowError), a
            # zone no interface has (gaierror), an address of the wrong shape.
            code = sock.connect_ex(target.sockaddr)
        except (OSError, OverflowError, ValueError, TypeError) as exc:
            return ConnectFailure.of_exception(exc)
        if code == errno.EINPROGRESS:
            # Asked again at once: a target on this host has most often accepted by now (its
            # handshake ran within the first call), which spares the watch for writability,
            # its wakeup and two calls to learn the outcome; a remote one says EALREADY.
            code = sock.connect_ex(target.sockaddr)
        if code in _CONNECTING:
            self.host.poller.add_writer(sock.fileno(), self._on_ready)
            return False
        if code in _CONNECTED:
            return True
        return ConnectFailure.of_errno(code)

    @contained
    def _on_ready(self) -> None:
        host = self.host
        sock = host.target
        assert sock is not None
        host.poller.done_writing(sock.fileno())
        self.stop()
        code = sock.connect_ex(host.targets[self._attempt].sockaddr)
        if code in _CONNECTING:
            # A spurious wakeup: still connecting. Wait on, within the same budget.
            host.poller.add_writer(sock.fileno(), self._on_ready)
            self._attempt_timer = host.loop.call_at(self._attempt_deadline, self._on_timeout)
            return
        if code not in _CONNECTED:
            self._failed(ConnectFailure.of_errno(code))
            self._connect_next()
            return
        self._connected()

    def _connected(self) -> None:
        host = self.host
        host.target_connected(host.targets[self._attempt])
        host.error = host.error_detail = ""  # a failover that succeeded is no error
        host.advance()

    @contained
    def _on_timeout(self) -> None:
        self._attempt_timer = None
        self._failed(ConnectFailure.of_errno(errno.ETIMEDOUT))
        self._connect_next()

    def _failed(self, failure: ConnectFailure) -> None:
        """Give up on the current target: close its socket, note why, move to the next."""
        host = self.host
        sock = host.target
        if sock is not None:
            host.poller.forget(sock.fileno())  # before the close: the next socket may reuse it
            sock.close()
            host.target = None
        targets = host.targets
        self._last_failure = failure.reason
        host.error, host.error_detail = failure.error, failure.detail
        if failure.reason is not CloseReason.ERROR:
            host.target_failed(targets[self._attempt], failure.reason)
        if self._attempt + 1 < len(targets) and self._failover_log.due(host.loop.time()):
            fields: dict[str, object] = {
                "event": "failover",
                "client": host.client_label,
                "target": host.target_label,
                "reason": failure.reason,
                "next": targets[self._attempt + 1].label,
            }
            if failure.reason is CloseReason.ERROR:
                fields["error"] = failure.error
            self._failover_log.warn(log, fields)
        self._attempt += 1
