"""One forwarded connection: its stages, the pump, and one close with a reason.

Raw non-blocking sockets that no transport owns (so `add_reader`/`add_writer` are safe
under uvloop), driven by callbacks:

    admission (engine) -> client-side stages -> dial -> target-side stages -> pump -> close

`stages_for` is the one place that says which stages a route's connections run; the
stages themselves, and how their bytes stay ahead of the pump's, are in `stages.py`.

- Nothing is read from the client until the target has accepted (unless a client-side
  stage must read to decide): unsent bytes wait in the kernel, never in a buffer of ours.
- The close is one call whatever ended the connection: it stops the stage running or the
  pump, resets both sockets when the stream was cut short, logs one line, and gives the
  slot back.
"""

from __future__ import annotations

import _socket
import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Sequence
from typing import Protocol

from pyforward.config.addresses import format_peer
from pyforward.config.policy import Policy, ProxyProtocol
from pyforward.obs.closelog import CloseSummary, close_line, logs_close
from pyforward.obs.logfmt import logfmt
from pyforward.obs.logsetup import direct_handler
from pyforward.obs.ratelimit import Every
from pyforward.obs.reasons import CloseReason, Side
from pyforward.obs.stats import Stats
from pyforward.relay.dial import Dial, ResolvedTarget
from pyforward.relay.pipes import PipePool
from pyforward.relay.poller import Poller
from pyforward.relay.proxy_header import ReadProxyHeader, SendProxyHeader
from pyforward.relay.pump import Pump
from pyforward.relay.sni import NamedRoute, NameRoutes, RouteByName
from pyforward.relay.sockets import prepare, reset_on_close, set_keepalive
from pyforward.relay.stages import FirstByteGate, SendToTarget, Stage

__all__ = ["Connection", "Owner", "Policy", "ResolvedTarget", "stages_for"]

log = logging.getLogger("pyforward.relay.connection")

# Connection ids for the log lines: a counter, unique within the process.
_ids = itertools.count(1)
# `socket.socket.close` without its bookkeeping for `makefile` (which the relay never
# calls): the descriptor's close, straight from the socket's C type.
_close = _socket.socket.close


class Owner(Protocol):
    """What a connection needs from the server that made it."""

    loop: asyncio.AbstractEventLoop
    poller: Poller
    stats: Stats
    pipes: PipePool | None  # None: copy only
    close_summary: CloseSummary  # closes whose line the route's log_connections leaves out

    def connection_closed(self, connection: Connection) -> None: ...

    # Admission deferred to a client-side stage (the client named by a PROXY header):
    # allow/deny and the per-source limit for `connection.source`; None: admitted.
    def admit(self, connection: Connection) -> CloseReason | None: ...

    # An error no part of the connection expected (a bug): it must cost this connection
    # alone, never the server, the connection's slot or its descriptors.
    def connection_crashed(self, connection: Connection, exc: Exception) -> None: ...

    # Passive health: a target that refused or timed out, and one that accepted.
    def target_failed(self, target: ResolvedTarget, reason: CloseReason) -> None: ...

    def target_connected(self, target: ResolvedTarget) -> None: ...


def stages_for(
    policy: Policy,
    failover_log: Every,
    *,
    proxied: bool = False,
    names: NameRoutes | None = None,
) -> list[Stage]:
    """The stages a connection runs before the pump, in order: client-side ones, the dial,
    target-side ones. A new stage is a class in `stages.py` (or a module of its own) and
    one line here. `proxied`: the peer is a load balancer the route trusts, which starts
    with a PROXY header. `names`: the routes of a shared address; the one the TLS server
    name picks brings the rest of the stages (`Connection.reroute`)."""
    client_side: list[Stage] = []
    if proxied:
        client_side.append(ReadProxyHeader())
    if names is not None:
        return [*client_side, RouteByName(names)]
    if policy.first_byte_timeout:
        client_side.append(FirstByteGate(policy.first_byte_timeout))
    dial = Dial(
        policy.connect_timeout,
        keepalive=policy.keepalive,
        failover_log=failover_log,
        retries=policy.connect_retries,
        retry_interval=policy.connect_retry_interval,
        source_port=policy.source_port,
    )
    target_side: list[Stage] = []
    if policy.proxy_protocol is not ProxyProtocol.OFF:
        target_side.append(SendProxyHeader(policy.proxy_protocol))
    return [*client_side, dial, *target_side]


class Connection:
    __slots__ = (
        "__weakref__",  # for whoever must know when a connection is freed
        "_client_label",
        "_client_nodelay",
        "_consumed",
        "_early",
        "_final_counts",
        "_local",
        "_next_stage",
        "_peer",
        "_pump",
        "_stage",
        "_stage_began",
        "_stages",
        "client",
        "client_address",
        "closed",
        "connect_seconds",
        "destination_address",
        "error",
        "error_detail",
        "id",
        "listen_label",
        "loop",
        "names",
        "owner",
        "policy",
        "poller",
        "reason",
        "route_id",
        "source",
        "source_counted",
        "started",
        "target",
        "target_label",
        "targets",
    )

    def __init__(
        self,
        owner: Owner,
        client: socket.socket,
        *,
        peer: tuple[object, ...] | None = None,
        local: tuple[object, ...] | None = None,
        route_id: str = "",
        client_label: str | None = None,
        listen_label: str,
        targets: Sequence[ResolvedTarget],
        policy: Policy,
        failover_log: Every,
        source: str = "",
        stages: Sequence[Stage] | None = None,
        proxied: bool = False,
        names: NameRoutes | None = None,
        client_nodelay: bool = False,
    ) -> None:
        self.owner = owner
        self.loop = owner.loop
        self.poller = owner.poller
        self.id = next(_ids)
        self.client = client
        # The close line's `client=`: formatted from the peer's address when first asked
        # for (a connection that closes unlogged never formats it).
        self._peer = peer
        self._local = local
        # The route it belongs to, for the per-route counts ("": a shared address's, until
        # the server name chooses; set by the server then).
        self.route_id = route_id
        self._client_label = client_label
        self._client_nodelay = client_nodelay  # no Nagle delay already (its listener's)
        self.source = source  # the client's address, for per-source limits
        self.client_address: tuple[str, int] | None = None  # from a PROXY header
        self.destination_address: tuple[str, int] | None = None
        # Whether the owner counts this connection against `source` (its per-source limit).
        self.source_counted = False
        self.listen_label = listen_label
        self.targets = targets
        self.policy = policy
        self.target: socket.socket | None = None
        self.target_label = targets[0].label if targets else "-"
        self.error = ""  # errno name of the failure, for the close line
        self.error_detail = ""  # what went wrong, when the failure is not an errno
        self.closed = False
        self.started = time.monotonic()  # for the close line's dur= and SIGUSR1's age=
        # The routes of a shared address, until the server name picked one (admission waits).
        self.names = names
        if stages is None:
            stages = stages_for(policy, failover_log, proxied=proxied, names=names)
        self._stages = stages
        self._next_stage = 0
        self._stage: Stage | None = None  # the one running, until the pump starts
        self._early = b""  # consumed from the client by its stages, for the target first
        self._consumed = 0  # bytes the stages took from the client: part of `up`
        self._pump: Pump | None = None
        self._final_counts: tuple[int, int] | None = None  # byte_counts(), once closed
        # Read by the metrics at scrape time and at close (obs/metrics.py).
        self.reason: CloseReason | None = None  # why it closed, once it has
        self.connect_seconds: float | None = None  # time for the target to accept
        self._stage_began = 0.0

    @property
    def client_label(self) -> str:
        label = self._client_label
        if label is None:
            label = self._client_label = format_peer(self._peer) if self._peer else "-"
        return label

    @client_label.setter
    def client_label(self, label: str) -> None:
        self._client_label = label

    def start(self) -> None:
        prepare(self.client, keepalive=self.policy.keepalive, nodelay=self._client_nodelay)
        if log.isEnabledFor(logging.DEBUG):
            fields = {"event": "open", "id": self.id, "client": self.client_label}
            log.debug(logfmt({**fields, "listen": self.listen_label}))
        self.advance()

    # --- the stages (what they see of the connection: stages.StageHost)

    def advance(self) -> None:
        """Start the next stage; once none is left, send the client's early bytes, then
        start the pump. Each stage calls this when it has finished."""
        if self.closed:
            return
        index = self._next_stage
        if index < len(self._stages):
            self._next_stage = index + 1
            stage = self._stage = self._stages[index]
            self._stage_began = time.monotonic()
            stage.start(self)
        elif self._early:
            stage = self._stage = SendToTarget(self._early)
            self._early = b""
            stage.start(self)
        else:
            self._stage = None
            target = self.target
            assert target is not None, "the stages ended without a target"
            pump = self._pump = Pump(self, target)
            pump.start()

    def consumed(self, data: bytes) -> None:
        assert self.target is None, "only a client-side stage reads from the client"
        self._early += data
        self._consumed += len(data)
        self.owner.stats.copied_bytes += len(data)  # through user space, as copying does

    def has_consumed(self) -> bool:
        return self._consumed > 0

    def early_bytes(self) -> bytes:
        return self._early

    @property
    def peer(self) -> tuple[object, ...] | str | None:
        return self._peer

    @property
    def local(self) -> tuple[object, ...] | None:
        return self._local

    def take_early(self) -> bytes:
        if self._next_stage < len(self._stages):
            return b""  # a stage after the one asking may write to the target first
        early, self._early = self._early, b""
        return early

    def reroute(self, route: NamedRoute) -> None:
        """A client-side stage chose `route` of a shared address: from the dial on, the
        connection is that route's (its policy, targets, stages, and allow/deny next)."""
        names, self.names = self.names, None
        assert names is not None, "rerouted twice"
        self.targets = names.chosen(self, route)
        self.target_label = self.targets[0].label if self.targets else "-"
        if route.policy.keepalive and not self.policy.keepalive:
            set_keepalive(self.client)
        self.policy = route.policy
        self._stages = [
            *self._stages[: self._next_stage],
            *stages_for(route.policy, route.failover_log),
        ]

    def admit(self) -> bool:
        if self.names is not None:
            return True  # the route is not chosen yet: admitted by its allow/deny, after
        refused = self.owner.admit(self)
        if refused is None:
            return True
        self.close(refused, reset=True)
        return False

    def crashed(self, exc: Exception) -> None:
        self.owner.connection_crashed(self, exc)

    def target_failed(self, target: ResolvedTarget, reason: CloseReason) -> None:
        self.owner.target_failed(target, reason)

    def target_connected(self, target: ResolvedTarget) -> None:
        # The stage running is the dial: its time, failover included, is the connect time.
        self.connect_seconds = time.monotonic() - self._stage_began
        self.owner.target_connected(target)

    # --- closing

    def fail(self, exc: Exception) -> None:
        """Close after an error nothing else caught, naming it in the close line."""
        self.error, self.error_detail = type(exc).__name__, str(exc)
        self.close(CloseReason.ERROR, reset=True)

    def close(
        self, reason: CloseReason, *, reset: bool = False, reset_by: Side | None = None
    ) -> None:
        """Close both sides once, log the outcome, and tell the owner."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        try:
            self._release(reset=reset)
            self._log_close(reason, reset_by)
        finally:
            self._final_counts = self.byte_counts()
            # Whatever failed above, the slot is given back.
            self.owner.connection_closed(self)
            # The stages and the pump point back at this connection: drop them, so that a
            # closed connection is freed at once by its reference count, not left to the
            # cyclic garbage collector (whose passes, with thousands of connections a
            # second to sweep, showed as tens of milliseconds of latency at p99).
            self._stages = ()
            self._stage = None
            self._pump = None

    def byte_counts(self) -> tuple[int, int]:
        """Bytes relayed so far: client to target (up), target to client (down)."""
        if self._final_counts is not None:
            return self._final_counts
        directions = self._pump.directions if self._pump is not None else []
        up = self._consumed + (directions[0].total if directions else 0)
        return up, directions[1].total if directions else 0

    def _release(self, *, reset: bool) -> None:
        if self._stage is not None:
            self._stage.stop()
            self._stage = None
        pump = self._pump
        if pump is not None:
            if pump.in_flight:
                reset = True
            pump.release()
        poller = self.poller
        for sock in (self.client, self.target):
            if sock is None or sock.fileno() < 0:
                continue
            try:
                poller.forget(sock.fileno())
                if reset:
                    reset_on_close(sock)
            finally:
                _close(sock)

    def _log_close(self, reason: CloseReason, reset_by: Side | None) -> None:
        self.owner.stats.closed[reason] += 1
        if not logs_close(self.policy.log_connections, reason):
            self.owner.close_summary.count(self.listen_label, reason)
            return
        if log.isEnabledFor(logging.INFO):
            directions = self._pump.directions if self._pump is not None else None
            if directions is None:
                up, down, relay = self._consumed, 0, "-"
            else:
                first, second = directions
                up, down = self._consumed + first.total, second.total
                relay = "copy" if "copy" in (first.kind, second.kind) else "splice"
            line = close_line(
                connection_id=self.id,
                client=self.client_label,
                listen=self.listen_label,
                target=self.target_label,
                up=up,
                down=down,
                seconds=time.monotonic() - self.started,
                relay=relay,
                reason=reason,
                reset_by=reset_by,
                error=self.error,
                msg=self.error_detail,
            )
            # Straight to the handler `setup_logging` made, when it is the only one: the
            # `LogRecord` that `logging` builds for a line cost more than the line itself.
            handler = direct_handler(log)
            if handler is None:
                log.info(line)
            else:
                handler.write_line(logging.INFO, line)
