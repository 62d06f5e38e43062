"""Routing by TLS server name: the routes of one shared listen address, and the client-side
stage that reads the ClientHello and picks one of them.

Only a listener whose routes have `sni` runs `RouteByName`; every other connection never
meets this module. The stage reads what the client sends first, bounded in bytes by the pure
reader (`protocols/tls.py`, `MAX_WIRE_BYTES`) and in time by `sni_timeout`, keeps every byte
(`consumed`: the target receives them first, unchanged; TLS is never terminated), and
hands the connection the chosen route's policy, targets and stages (`reroute`), so from the
dial on the connection is that route's as if its own listener had accepted it; allow/deny
and the per-source limit are that route's too (admission waits for the choice).

What each first flight gets:

| the client sends | with a default route | without one |
|---|---|---|
| a hello naming a route's name | that route | that route |
| a hello naming another, or no name | the default | reset, `no-route` |
| something else than TLS | the default | reset, `not-tls` |
| a malformed hello, or EOF in the middle | reset, `bad-tls-hello` | the same |
| nothing within `sni_timeout` | the default (its server may speak first) | `sni-timeout` |
| part of a hello, then nothing | reset, `sni-timeout` | the same |
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from pyforward.config.access import AccessList
from pyforward.config.policy import Policy
from pyforward.obs.ratelimit import Every
from pyforward.obs.reasons import CloseReason, Side
from pyforward.protocols.hostnames import HostRouter
from pyforward.protocols.tls import MAX_WIRE_BYTES, ClientHello, ClientHelloError, ClientHelloReader
from pyforward.relay.stages import Stage, StageHost, contained

if TYPE_CHECKING:
    from pyforward.relay.dial import ResolvedTarget

log = logging.getLogger("pyforward.relay.connection")

_READ_SIZE = 4096
# Bad hellos are the client's fault and can come in floods: one warning per interval.
_BAD_HELLO_LOG_INTERVAL = 5.0
_bad_hello_log = Every(_BAD_HELLO_LOG_INTERVAL)


@dataclass
class NamedRoute:
    """One route of a shared address, as its connections need it once chosen. `targets`
    is replaced (never changed in place) when the route's target source says so."""

    route_id: str
    names: tuple[str, ...]  # () for the address's default
    policy: Policy
    access: AccessList
    targets: list[ResolvedTarget]
    failover_log: Every


# How the server takes a chosen route: admission then waits on that route's allow/deny, and
# the answer is the targets in the order to try them (passive health).
Chosen = Callable[[object, NamedRoute], Sequence["ResolvedTarget"]]


class NameRoutes:
    """The routes of one listen address, by the server names they claim."""

    def __init__(self, routes: Sequence[NamedRoute], chosen: Chosen) -> None:
        self.routes = list(routes)
        default = next((route for route in routes if not route.names), None)
        self.router: HostRouter[NamedRoute] = HostRouter(
            ((route.names, route) for route in routes if route.names), default
        )
        self.default = default
        self.chosen = chosen
        # No route's clients get less time than it asks for.
        self.timeout = max(route.policy.sni_timeout for route in routes)

    def set_targets(self, route_id: str, targets: Sequence[ResolvedTarget]) -> None:
        for route in self.routes:
            if route.route_id == route_id:
                route.targets = list(targets)

    def every_target(self) -> list[ResolvedTarget]:
        return [target for route in self.routes for target in route.targets]


class ReroutableHost(StageHost, Protocol):
    def early_bytes(self) -> bytes:
        """What client-side stages took from the client so far (for the target first)."""

    def reroute(self, route: NamedRoute) -> None:
        """Go on as a connection of `route`: its policy, targets, admission and stages."""


class RouteByName(Stage):
    """Read the ClientHello's server name and hand the connection to the route it names."""

    __slots__ = ("_decided", "_timer", "_watching", "read", "reader", "routes")

    side = "client"

    def __init__(self, routes: NameRoutes) -> None:
        self.routes = routes
        self.reader = ClientHelloReader()
        self.read = 0
        self._timer: asyncio.TimerHandle | None = None
        self._watching = False
        self._decided = False  # no more reading: routed, or closed

    def start(self, host: StageHost) -> None:
        self.host = host
        # What a stage before this one read (the bytes after a PROXY header) starts the hello.
        early = cast(ReroutableHost, host).early_bytes() if host.has_consumed() else b""
        if early:
            self._judge(early)
        else:
            # A busy server often accepts after the hello has arrived: read it at once, and
            # wait (a watch and a timer) only when it is not all there.
            self._read()
        if not self._decided:
            # One-shot: once the hello is read, the socket needs no call to be left alone
            # while the dial runs, and the pump re-arms the same registration.
            self._watching = True
            host.poller.read_once(host.client.fileno(), self._on_readable)
            self._timer = host.loop.call_later(self.routes.timeout, self._on_timeout)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self) -> None:
        self._decided = True
        if self._watching:
            self._watching = False
            self.host.poller.remove_reader(self.host.client.fileno())
        self.stop()

    @contained
    def _on_readable(self) -> None:
        self._watching = False  # a one-shot watch: gone as it is called
        self._read()
        if not self._decided:
            self._watching = True
            self.host.poller.read_once(self.host.client.fileno(), self._on_readable)

    def _read(self) -> None:
        host = self.host
        room = MAX_WIRE_BYTES - self.read  # never read more than the reader's bound
        if room <= 0:
            self._finish()
            self._bad(f"no complete ClientHello in the first {MAX_WIRE_BYTES} bytes")
            return
        try:
            data = host.client.recv(min(_READ_SIZE, room))
        except BlockingIOError:
            return
        except OSError:
            self._finish()
            host.close(CloseReason.RESET, reset=True, reset_by=Side.CLIENT)
            return
        if not data:
            self._finish()
            if self.read:
                self._bad("the client closed before its ClientHello was complete")
            else:
                host.close(CloseReason.EOF)  # gone without a word
            return
        host.consumed(data)
        self._judge(data)

    def _judge(self, data: bytes) -> None:
        """Feed the client's next bytes to the reader; route once it has its answer."""
        self.read += len(data)
        try:
            answer = self.reader.feed(data)
        except ClientHelloError as exc:
            self._finish()
            self._bad(str(exc))
            return
        if answer is None:
            return
        self._finish()
        if isinstance(answer, ClientHello):
            route = self.routes.router.lookup(answer.server_name)
            missing = CloseReason.NO_ROUTE
        else:
            route, missing = self.routes.default, CloseReason.NOT_TLS
        self._go(route, missing)

    @contained
    def _on_timeout(self) -> None:
        self._timer = None
        self._finish()
        # Nothing said at all may be a protocol whose server speaks first: the default's.
        self._go(self.routes.default if not self.read else None, CloseReason.SNI_TIMEOUT)

    def _go(self, route: NamedRoute | None, missing: CloseReason) -> None:
        host = self.host
        if route is None:
            host.close(missing, reset=True)
            return
        cast(ReroutableHost, host).reroute(route)
        if host.admit():
            host.advance()

    def _bad(self, why: str) -> None:
        host = self.host
        if _bad_hello_log.due(host.loop.time()):
            _bad_hello_log.warn(
                log, {"event": "bad-tls-hello", "client": host.client_label, "msg": why}
            )
        host.close(CloseReason.BAD_TLS_HELLO, reset=True)
