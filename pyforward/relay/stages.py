"""The steps of a connection before its bytes are relayed, and what each step may use.

A connection runs its stages one after the other, then the pump:

    client-side stages -> dial -> target-side stages -> (the client's early bytes) -> pump

- A client-side stage runs before any target is contacted. It may read what the client
  sends first (handing every byte it took from the socket to `consumed`, so the target
  still receives it) and may replace `targets` (a route chosen from those bytes).
- The dial (`relay/dial.py`) connects to one of `targets` and sets `target`.
- A target-side stage runs once the target accepted and may write to it (a header the
  target expects before the client's bytes).
- The bytes the client-side stages consumed are written to the target next, by a
  `SendToTarget` of their own, and only then does the pump start.

Ordering is a matter of registration, not of care: the pump is the only code that reads
the client or writes the target once the stages are done, and the connection registers its
readers only after the last stage finished; every stage finishes only once what it wrote
is entirely in the target socket's send queue. So the kernel sends the stages' bytes, then
the client's early bytes, then every spliced or copied byte, in that order.

A stage is one small object per connection, driven by callbacks like the rest of the
relay: `start(host)` begins it; it calls `host.advance()` when it has finished, or
`host.close(...)` when the connection cannot go on; `stop()` releases its timers and
watches if the connection closes while it runs. A stage never blocks and never buffers
without a bound.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, TypeVar

from pyforward.obs.reasons import CloseReason, Side
from pyforward.relay.poller import Poller

if TYPE_CHECKING:
    from pyforward.relay.dial import ResolvedTarget

RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


class StageHost(Protocol):
    """What a stage sees of its connection."""

    loop: asyncio.AbstractEventLoop
    poller: Poller
    client: socket.socket
    client_label: str
    source: str  # the client's address, for allow/deny and per-source limits
    # The client's address and the one it connected to, when a PROXY header read from a
    # load balancer gave them (None: the client socket's own).
    client_address: tuple[str, int] | None
    destination_address: tuple[str, int] | None
    target: socket.socket | None  # set by the dial
    target_label: str
    targets: Sequence[ResolvedTarget]  # a client-side stage may replace them
    error: str  # the close line's `error=` and `msg=`
    error_detail: str

    def advance(self) -> None:
        """The current stage has finished: start the next (or the pump)."""

    @property
    def peer(self) -> tuple[object, ...] | str | None:
        """The client socket's peer address as `accept` gave it (None: not known)."""

    @property
    def local(self) -> tuple[object, ...] | None:
        """The address the client connected to, when its listener has only one (None: a
        wildcard bind, or not known: ask the socket)."""

    def consumed(self, data: bytes) -> None:
        """Bytes a client-side stage took from the client: the target receives them first."""

    def take_early(self) -> bytes:
        """For the last target-side stage, which may send them itself right after its own
        bytes (one write instead of two): the bytes client-side stages consumed, no longer
        sent by the connection. b"" when another stage follows, or nothing was consumed."""

    def has_consumed(self) -> bool:
        """Whether client-side stages took bytes from the client (it has spoken)."""

    def admit(self) -> bool:
        """Check allow/deny and the per-source limit for `source` now (deferred at accept
        for a connection whose client a PROXY header names); False: refused and closed."""

    def close(
        self, reason: CloseReason, *, reset: bool = False, reset_by: Side | None = None
    ) -> None: ...

    def crashed(self, exc: Exception) -> None:
        """An error nothing expected, in one of the stage's callbacks."""

    # Passive health: the dial tells of each target that failed and of the one that accepted.
    def target_failed(self, target: ResolvedTarget, reason: CloseReason) -> None: ...

    def target_connected(self, target: ResolvedTarget) -> None: ...


class Stage:
    """One step of a connection before the pump (see the module's docstring)."""

    __slots__ = ("host",)

    side: ClassVar[Literal["client", "dial", "target"]]
    host: StageHost

    def start(self, host: StageHost) -> None:
        """Begin; call `host.advance()` once finished (now or from a callback), or
        `host.close(...)` when the connection cannot go on."""
        raise NotImplementedError

    def stop(self) -> None:
        """The connection closes while the stage runs: release what it holds (the
        connection itself removes every reader and writer of its sockets)."""


S = TypeVar("S", bound=Stage)


def contained(callback: Callable[[S], None]) -> Callable[[S], None]:
    """For a stage's event-loop callbacks, which run outside the accept path's safety net:
    whatever escapes goes to the connection's `crashed`. (The pump's callbacks run once
    per batch of bytes and catch their own errors.)"""

    def run(stage: S) -> None:
        try:
            callback(stage)
        except Exception as exc:
            stage.host.crashed(exc)

    return run


class FirstByteGate(Stage):
    """Wait for the client to speak before spending a connection on the target: a client
    that connects and sends nothing (slowloris) costs the target nothing. Peeks only: the
    byte stays in the socket for the pump."""

    __slots__ = ("_timer", "timeout")

    side = "client"

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._timer: asyncio.TimerHandle | None = None

    def start(self, host: StageHost) -> None:
        self.host = host
        if host.has_consumed():
            # A stage before this one read what the client sent first (the bytes after a
            # PROXY header): it has spoken, and those bytes are no longer in the socket.
            host.advance()
            return
        host.poller.add_reader(host.client.fileno(), self._on_readable)
        self._timer = host.loop.call_later(self.timeout, self._on_timeout)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @contained
    def _on_readable(self) -> None:
        host = self.host
        host.poller.remove_reader(host.client.fileno())
        self.stop()
        try:
            peeked = host.client.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            peeked = b"?"  # a spurious wakeup: let the pump find out
        except OSError:
            host.close(CloseReason.RESET, reset=True, reset_by=Side.CLIENT)
            return
        if not peeked:
            host.close(CloseReason.EOF)  # gone without a word: no need to bother the target
            return
        host.advance()

    @contained
    def _on_timeout(self) -> None:
        self._timer = None
        self.host.close(CloseReason.FIRST_BYTE_TIMEOUT, reset=True)


class SendToTarget(Stage):
    """Write `data` to the target, all of it, before anything else: the base of a
    target-side stage that sends a header, and the stage that delivers the bytes the
    client-side stages consumed. `data` is bounded by whoever made it."""

    __slots__ = ("data",)

    side = "target"

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def start(self, host: StageHost) -> None:
        self.host = host
        self._send()

    def stop(self) -> None:
        """Nothing of its own to release: the connection removes the target's writer."""

    def _send(self) -> None:
        host = self.host
        target = host.target
        assert target is not None
        try:
            while self.data:
                self.data = self.data[target.send(self.data) :]
        except BlockingIOError:
            host.poller.add_writer(target.fileno(), self._on_writable)
            return
        except OSError as exc:
            code = exc.errno or 0
            if code in RESET_ERRNOS:
                host.close(CloseReason.RESET, reset=True, reset_by=Side.TARGET)
            else:
                host.error = errno.errorcode.get(code, str(code))
                host.close(CloseReason.ERROR, reset=True)
            return
        host.advance()

    @contained
    def _on_writable(self) -> None:
        target = self.host.target
        assert target is not None
        self.host.poller.remove_writer(target.fileno())
        self._send()
