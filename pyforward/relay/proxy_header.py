"""The PROXY protocol at both ends of a connection: read from a trusted load balancer in
front, and sent to the target behind.

`SendProxyHeader`, a target-side stage: once the target accepted, it builds the header (v1 or
v2, with the pure builders of `protocols/proxy.py`) from the client's address and port and
the address the client connected to, and writes it whole before the pump or the client's
early bytes (`SendToTarget`), so on either relay path it is the first thing the target reads.
The addresses are the accepted socket's own (`getpeername`, `getsockname`) unless a header
read from the client replaced them: on a dual-stack listener an IPv4 client is
`::ffff:a.b.c.d` there, and the builders send it as IPv4.

`ReadProxyHeader`, a client-side stage, runs only for a peer the route trusts
(`proxy_protocol_from`): it reads the header with the pure reader, within a bound on its size
(the reader's) and on its time (`HEADER_TIMEOUT`), and makes its source the client
everywhere after it: the close line, allow/deny and per-source limits (admission, which the
engine deferred for this connection), and the header sent onward. The bytes read past the
header are handed on as the client's (`consumed`). A missing, malformed, oversized or late
header resets the connection with `reason=bad-proxy-header`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pyforward.config.policy import ProxyProtocol
from pyforward.obs.ratelimit import Every
from pyforward.obs.reasons import CloseReason, Side
from pyforward.protocols.proxy import (
    V2_FIXED_LENGTH,
    V2_MAX_LENGTH,
    ProxyHeaderError,
    ProxyHeaderReader,
    build_v1,
    build_v2,
)
from pyforward.relay.stages import SendToTarget, Stage, StageHost, contained

log = logging.getLogger("pyforward.relay.connection")

Builder = Callable[[tuple[str, int] | None, tuple[str, int] | None], bytes]

BUILDERS: dict[ProxyProtocol, Builder] = {
    ProxyProtocol.V1: build_v1,
    ProxyProtocol.V2: build_v2,
}

# A load balancer writes its header with the connection's first bytes; 5 s is far more than
# any needs, and short enough that a peer that connects and stalls frees its slot soon.
HEADER_TIMEOUT = 5.0
_READ_SIZE = V2_FIXED_LENGTH + V2_MAX_LENGTH  # the largest header the reader accepts
# A bad header is the peer's fault and can come in floods: one warning per interval, process-wide.
_BAD_HEADER_LOG_INTERVAL = 5.0
_bad_header_log = Every(_BAD_HEADER_LOG_INTERVAL)


def _ip_pair(sockaddr: object) -> tuple[str, int] | None:
    """An IP socket address's host and port; None for a UNIX one (the header says UNKNOWN
    in v1, LOCAL in v2, as HAProxy sends for a client without an IP address)."""
    if isinstance(sockaddr, tuple):
        return str(sockaddr[0]), int(sockaddr[1])
    return None


class SendProxyHeader(SendToTarget):
    """Write the PROXY header of the client's connection to the target."""

    __slots__ = ("build",)

    def __init__(self, version: ProxyProtocol) -> None:
        super().__init__(b"")
        self.build = BUILDERS[version]

    def start(self, host: StageHost) -> None:
        self.host = host
        try:
            # The peer as accept gave it, without asking the kernel again.
            peer = host.peer
            client = host.client_address or _ip_pair(
                peer if peer is not None else host.client.getpeername()
            )
            local = host.local
            destination = host.destination_address or _ip_pair(
                local if local is not None else host.client.getsockname()
            )
        except OSError:
            # The client is gone already (reset before its connection got this far).
            host.close(CloseReason.RESET, reset=True, reset_by=Side.CLIENT)
            return
        # The client's first bytes, when a stage before the dial read them (a ClientHello),
        # go in the same write as the header: one send, one segment.
        self.data = memoryview(self.build(client, destination) + host.take_early())
        super().start(host)


class ReadProxyHeader(Stage):
    """Read the PROXY header a trusted peer starts with; its source becomes the client."""

    __slots__ = ("_timer", "reader", "timeout")

    side = "client"

    def __init__(self, timeout: float = HEADER_TIMEOUT) -> None:
        self.timeout = timeout
        self.reader = ProxyHeaderReader()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, host: StageHost) -> None:
        self.host = host
        host.poller.add_reader(host.client.fileno(), self._on_readable)
        self._timer = host.loop.call_later(self.timeout, self._on_timeout)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self) -> None:
        self.host.poller.remove_reader(self.host.client.fileno())
        self.stop()

    @contained
    def _on_readable(self) -> None:
        host = self.host
        try:
            data = host.client.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._finish()
            host.close(CloseReason.RESET, reset=True, reset_by=Side.CLIENT)
            return
        if not data:
            self._finish()
            self._bad("the peer closed before a complete PROXY header")
            return
        try:
            header = self.reader.feed(data)
        except ProxyHeaderError as exc:
            self._finish()
            self._bad(str(exc))
            return
        if header is None:
            return
        self._finish()
        if header.source is not None and header.destination is not None:
            source, destination = header.source, header.destination
            host.client_address = (str(source.address), source.port)
            host.destination_address = (str(destination.address), destination.port)
            host.client_label = str(source)
            host.source = str(source.address)
        # LOCAL or UNKNOWN: the connection is the peer's own, as the specification says.
        if self.reader.excess:
            host.consumed(self.reader.excess)
        if host.admit():
            host.advance()

    @contained
    def _on_timeout(self) -> None:
        self._timer = None
        self._finish()
        self._bad(f"no complete PROXY header in {self.timeout:g} s")

    def _bad(self, why: str) -> None:
        host = self.host
        if _bad_header_log.due(host.loop.time()):
            _bad_header_log.warn(
                log, {"event": "bad-proxy-header", "client": host.client_label, "msg": why}
            )
        host.close(CloseReason.BAD_PROXY_HEADER, reset=True)
