"""One UDP flow's I/O: its connected socket to the target, the target's datagrams back to
the client, one close. (The client's datagrams go out on this socket from the listener's read
loop, listener.py: no call per datagram.)

A datagram is relayed as one `send`/`sendto` of exactly the bytes received (never merged,
split or truncated: the receive buffer holds the largest datagram whole). Nothing is queued
here: when a socket's send buffer is full the datagram is dropped and counted, as a router
would drop it; the peers' own retries (DNS, QUIC) recover, and memory stays bounded.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import time
from typing import TYPE_CHECKING

from pyforward.config.addresses import format_peer
from pyforward.datagram.flows import FlowState
from pyforward.obs.closelog import logs_close
from pyforward.obs.logfmt import logfmt
from pyforward.obs.reasons import CloseReason
from pyforward.relay.dial import ResolvedTarget

if TYPE_CHECKING:
    from pyforward.datagram.listener import DatagramListener

log = logging.getLogger("pyforward.datagram")

_ids = itertools.count(1)  # flow ids for the close lines, unique within the process
_BATCH = 64  # datagrams read per wakeup before other flows get a turn
# A target that answers one datagram at a time (DNS) leaves one in the socket per wakeup:
# reading on until EAGAIN would cost a system call (and an exception) per answer for
# nothing. A flow whose last batch held one datagram reads one per wakeup (the loop calls
# again at once if more are waiting: readiness is level-triggered), and every
# _PROBE_EVERY-th wakeup a whole batch, to notice when its target starts to send more.
_PROBE_EVERY = 16
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}

ClientAddress = tuple[object, ...]


def reason_of(exc: OSError) -> CloseReason:
    """What an error of a flow's socket means, as a close reason."""
    if isinstance(exc, ConnectionRefusedError):
        return CloseReason.REFUSED  # an ICMP port unreachable came back
    if exc.errno in _UNREACHABLE:
        return CloseReason.UNREACHABLE
    return CloseReason.ERROR


class Flow:
    """A client address's datagrams to one target and the target's back to it."""

    __slots__ = (
        "_buffer",
        "_client",
        "_counts",
        "_loop",
        "_recent",
        "_recv_into",
        "_sendto",
        "_singles",
        "_view",
        "closed",
        "error",
        "id",
        "listener",
        "sock",
        "started",
        "state",
        "target",
    )

    def __init__(
        self, listener: DatagramListener, state: FlowState[ClientAddress], target: ResolvedTarget
    ) -> None:
        self.id = next(_ids)
        self.listener = listener
        self.state = state
        self.target = target
        self.started = time.monotonic()
        self.closed = False
        self.error: str | None = None
        self._singles = 0  # wakeups read one datagram at a time since the last whole batch
        self.sock = socket.socket(target.family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect(target.sockaddr)  # UDP: sets the peer, sends nothing
        except BaseException:
            self.sock.close()
            raise
        # What the per-datagram path uses, looked up once: a datagram costs its two system
        # calls and a few counter updates, not a walk through listener and owner.
        owner = listener.owner
        self._loop = owner.loop
        self._buffer, self._view = owner.buffer, owner.view
        self._recv_into = self.sock.recv_into
        self._sendto = listener.sock.sendto
        self._recent = listener.table.recent
        self._client = state.key
        self._counts = state.counts
        self._loop.add_reader(self.sock.fileno(), self._from_target)

    @property
    def listen_label(self) -> str:
        return self.listener.label

    @property
    def connect_seconds(self) -> None:
        return None  # no handshake: UDP has nothing to time

    def byte_counts(self) -> tuple[int, int]:
        counts = self.state.counts
        return counts.bytes_up, counts.bytes_down

    def _from_target(self) -> None:
        singles = self._singles
        if 0 < singles < _PROBE_EVERY:
            # One datagram, no loop: the common case of a target answering one at a time.
            self._singles = singles + 1
            try:
                size = self._recv_into(self._buffer)
            except BlockingIOError:
                return
            except OSError as exc:
                self.failed(exc)
                return
            counts = self._counts
            try:
                self._sendto(self._view[:size], self._client)
            except OSError:
                counts.dropped_down += 1  # full (EAGAIN) or the client unreachable
                return
            counts.datagrams_down += 1
            counts.bytes_down += size
            self.state.last = self._loop.time()
            self._recent(self._client)
            return
        moved = self._batch()
        self._singles = 1 if moved == 1 else 0  # one datagram in a whole batch: read singly
        if moved and not self.closed:
            self.state.last = self._loop.time()
            self._recent(self._client)

    def _batch(self) -> int:
        """Read and send on up to _BATCH datagrams: how many went to the client."""
        recv_into, sendto = self._recv_into, self._sendto
        buffer, view = self._buffer, self._view
        counts = self._counts
        client = self._client
        moved = 0
        for _ in range(_BATCH):
            try:
                size = recv_into(buffer)
            except BlockingIOError:
                break
            except OSError as exc:
                self.failed(exc)
                break
            try:
                sendto(view[:size], client)
            except OSError:
                counts.dropped_down += 1  # full (EAGAIN) or the client unreachable
                continue
            counts.datagrams_down += 1
            counts.bytes_down += size
            moved += 1
        return moved

    def failed(self, exc: OSError) -> None:
        """An error of the flow's socket: close it with the reason the error gives."""
        reason = reason_of(exc)
        if reason is CloseReason.ERROR:
            self.error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        else:
            self.listener.owner.target_failed(self.target, reason)
        self.close(reason)

    def close(self, reason: CloseReason) -> None:
        """Close the target socket once, log the flow's line, and give its slot back."""
        if self.closed:
            return
        self.closed = True
        try:
            self.listener.owner.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self._log_close(reason)
        finally:
            self.listener.flow_closed(self, reason)

    def _log_close(self, reason: CloseReason) -> None:
        owner = self.listener.owner
        # A flow has no end but silence: idle-timeout is its clean close, as eof is TCP's.
        as_tcp = CloseReason.EOF if reason is CloseReason.IDLE_TIMEOUT else reason
        if not logs_close(self.listener.route.policy.log_connections, as_tcp):
            owner.close_summary.count(self.listen_label, reason)
            return
        if not log.isEnabledFor(logging.INFO):
            return
        counts = self.state.counts
        fields: dict[str, object] = {
            "event": "close",
            "id": self.id,
            "client": format_peer(self.state.key),
            "listen": self.listen_label,
            "target": self.target.label,
            "up": counts.bytes_up,
            "down": counts.bytes_down,
            "dur": round(time.monotonic() - self.started, 6),
            "relay": "udp",
            "reason": reason,
            "datagrams_up": counts.datagrams_up,
            "datagrams_down": counts.datagrams_down,
        }
        dropped = counts.dropped_up + counts.dropped_down
        if dropped:
            fields["dropped"] = dropped
        if self.error:
            fields["error"] = self.error
        log.info(logfmt(fields))
