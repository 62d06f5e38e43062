"""The forwarder: the accept loop (its gate in `gate.py`), a new configuration applied, ordered
shutdown; each route's listeners are `route_listeners.py`'s.

Signals, reload and systemd are the runtime's (`runtime.py`); where each route forwards is
its target source's (`targets.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyforward.config.access import AccessList
from pyforward.config.addresses import client_host
from pyforward.config.model import RelayMode, Route, Settings, Transport
from pyforward.engine.by_name import build_names, followers, name_groups
from pyforward.engine.gate import AcceptGate
from pyforward.engine.health import TargetHealth
from pyforward.engine.listeners import (
    close_all,
    system_backlog,
)
from pyforward.engine.route_listeners import (
    Listener,
    close_listeners,
    literal_target,
    open_route,
    resolve_target,
)
from pyforward.engine.sources import LocalSourceCounts, SourceCounts
from pyforward.engine.targets import RouteId, route_ids
from pyforward.engine.unix_listener import peer_source
from pyforward.errors import StartupError
from pyforward.obs.closelog import SUMMARY_INTERVAL, CloseSummary
from pyforward.obs.logfmt import logfmt
from pyforward.obs.ratelimit import Every
from pyforward.obs.reasons import CloseReason
from pyforward.obs.stats import Stats, reason_counts
from pyforward.obs.traffic import ListenerTraffic
from pyforward.relay.connection import Connection, ResolvedTarget
from pyforward.relay.pipes import PipePool, splice_available
from pyforward.relay.poller import make_poller
from pyforward.relay.sni import NamedRoute
from pyforward.relay.sockets import inherits_nodelay, reset_on_close

log = logging.getLogger("pyforward")

_ACCEPT_BATCH = 64  # connections accepted per wakeup before other work gets a turn
_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_FD_BACKOFF = 0.25  # seconds without accepting after running out of descriptors
_REFUSAL_LOG_INTERVAL = 5.0  # seconds between log lines about refused clients
_FAILOVER_LOG_INTERVAL = 5.0  # seconds between failover lines of one route
_ANYONE = AccessList()  # no allow/deny: one for every connection admitted late


class Forwarder:
    """Accepts on every listener and hands each connection to a `Connection`."""

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        *,
        max_accepts: int | None = None,
        passed_sockets: Mapping[int, list[socket.socket]] | None = None,
        source_counts: SourceCounts | None = None,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.poller = make_poller(loop)
        # After this many connections the listeners close for good, and `finished` is
        # set once the last connection ends (socat without `fork` serves one).
        self.max_accepts = max_accepts
        self.finished = asyncio.Event()
        self._accepts_done = False
        self._served = 0  # connections handed to a Connection (refused ones are not)
        self._served_by_route: Counter[RouteId] = Counter()
        self.stats = Stats()
        # Finished connections and refused clients, by listener label (obs/traffic.py).
        self.traffic: dict[str, ListenerTraffic] = {}
        self.pipes: PipePool | None = None
        self.relay = "copy"
        self.listeners: list[Listener] = []
        self.connections: set[Connection] = set()
        self.health = TargetHealth()
        self.gate = AcceptGate(settings.max_connections)
        self._accepting = False  # whether the listeners are registered with the loop
        self._drained: asyncio.Event | None = None
        self._closed = False
        # Open connections per client address (shared by worker processes, when given).
        self.source_counts: SourceCounts = source_counts or LocalSourceCounts()
        # Connections of trusted load balancers, until their PROXY header names the client:
        # the access list of the route that accepted each.
        self._awaiting_admission: dict[Connection, AccessList] = {}
        self._refusals: Counter[str] = Counter()  # since the last refusal log line
        self._refusal_log = Every(_REFUSAL_LOG_INTERVAL)
        self._fd_log = Every(5.0)
        # One failover line per route and interval: a client facing 100 dead targets
        # would otherwise log 99 (each target going down is logged once, as target-down).
        self._failover_logs: dict[RouteId, Every] = {}
        self.close_summary = CloseSummary()
        self._summary_timer: asyncio.TimerHandle | None = None
        # Listening sockets handed over by systemd, by route index (socket activation).
        self.passed_sockets = dict(passed_sockets or {})

    async def start(self) -> None:
        """Resolve every target and bind every listener; accept only once all are ready."""
        settings = self.settings
        if settings.relay is not RelayMode.COPY:
            if splice_available():
                self.pipes = PipePool()
                self.relay = "splice"
            elif settings.relay is RelayMode.SPLICE:
                raise StartupError("--relay splice: splice(2) is not available on this system")
        try:
            ids = route_ids(settings.routes)
            groups = name_groups(settings.routes, ids)
            sharing = followers(groups)
            resolved: dict[RouteId, list[ResolvedTarget]] = {}
            for index, route in enumerate(settings.routes):
                if route.protocol is not Transport.TCP:
                    continue  # UDP routes are the datagram forwarder's (datagram/server.py)
                targets = resolved[ids[index]] = await self._resolve(route)
                if index in sharing:
                    continue  # served by the listener of its address's first route
                self.listeners += open_route(
                    ids[index], route, targets, self._take_passed(index), self._backlog()
                )
        except BaseException:
            close_listeners(self.listeners)
            close_all([sock for socks in self.passed_sockets.values() for sock in socks])
            raise
        for listener in self.listeners:
            listener.failover_log = self._failover_log(listener.route_id)
        self._attach_names(settings.routes, ids, resolved)
        self._summary_timer = self.loop.call_later(SUMMARY_INTERVAL, self._log_close_summary)
        self._follow_gate()

    async def _resolve(self, route: Route) -> list[ResolvedTarget]:
        return [await resolve_target(self.loop, target) for target in route.targets]

    def _take_passed(self, index: int) -> list[socket.socket] | None:
        """The sockets passed for route `index` (systemd's, or a worker's from the main
        process), taken once: a reload binds a route that comes back."""
        return self.passed_sockets.pop(index, None)

    def _backlog(self) -> int:
        return self.settings.backlog or system_backlog()

    async def reload(
        self, settings: Settings, fill: Callable[[Settings], Settings] | None = None
    ) -> None:
        """Apply a new configuration without dropping a connection.

        New listeners open, removed ones stop accepting (their connections finish on their
        own), and changed targets and per-route settings apply to new connections. Everything
        that can fail (name lookups, binding) happens before anything changes, so on an
        error the old configuration stays in force whole. `fill` puts in the targets a
        source other than the configuration gives (see `TargetSource.fill`).
        """
        ids = route_ids(settings.routes)
        resolved = {
            rid: await self._resolve(route) for rid, route in zip(ids, settings.routes, strict=True)
        }
        if fill is not None:
            # After the last await: the targets filled in are the current ones.
            settings = fill(settings)
            for rid, route in zip(ids, settings.routes, strict=True):
                if route.targets and not resolved[rid]:
                    # Filled-in targets are IP literals: resolved without a lookup.
                    literals = (literal_target(address) for address in route.targets)
                    resolved[rid] = [t for t in literals if t is not None]
        new_routes = dict(zip(ids, settings.routes, strict=True))
        current = {listener.route_id for listener in self.listeners}
        sharing = {ids[index] for index in followers(name_groups(settings.routes, ids))}
        opened: list[Listener] = []
        try:
            for index, (rid, route) in enumerate(new_routes.items()):
                if rid not in current and rid not in sharing and route.protocol is Transport.TCP:
                    opened += open_route(
                        rid, route, resolved[rid], self._take_passed(index), self._backlog()
                    )
        except BaseException:
            close_listeners(opened)
            raise
        kept: list[Listener] = []
        for listener in self.listeners:
            new_route = new_routes.get(listener.route_id)
            if new_route is None:
                if self._accepting:
                    self.loop.remove_reader(listener.sock.fileno())
                close_listeners([listener])
                continue
            listener.apply(new_route, resolved[listener.route_id])
            kept.append(listener)
        for name in ("relay", "loop", "backlog", "metrics"):
            if getattr(settings, name) != getattr(self.settings, name):
                log.warning(logfmt({"event": "reload", "msg": f"changing {name} needs a restart"}))
        for listener in opened:
            listener.failover_log = self._failover_log(listener.route_id)
        self.listeners = kept + opened
        self._attach_names(settings.routes, ids, resolved)
        self.settings = settings
        self.gate.cap = settings.max_connections
        for rid in self._failover_logs.keys() - new_routes.keys():
            del self._failover_logs[rid]
        if self._accepting:
            for listener in opened:
                self.loop.add_reader(listener.sock.fileno(), self._accept, listener)
        self._follow_gate()

    def _attach_names(
        self,
        routes: Sequence[Route],
        ids: Sequence[RouteId],
        resolved: Mapping[RouteId, list[ResolvedTarget]],
    ) -> None:
        """Give each listener of an address routed by name its routes (None to the rest)."""
        groups = name_groups(routes, ids)
        for listener in self.listeners:
            indices = groups.get(listener.route_id)
            listener.names = (
                None
                if indices is None
                else build_names(
                    indices,
                    routes,
                    ids,
                    targets=resolved.__getitem__,
                    failover_log=self._failover_log,
                    chosen=self._chosen,
                )
            )

    def _chosen(self, connection: object, route: NamedRoute) -> Sequence[ResolvedTarget]:
        """A connection of a shared address took `route`: admission by its allow/deny
        (`admit`, next), and its targets in the order to try them."""
        assert isinstance(connection, Connection)
        self._awaiting_admission[connection] = route.access
        connection.route_id = route.route_id
        self._served_by_route[RouteId(route.route_id)] += 1
        targets: Sequence[ResolvedTarget] = route.targets
        if len(targets) > 1:
            targets = self.health.order(targets, self.loop.time())
        return targets

    # --- accepting

    def _follow_gate(self) -> None:
        """Register the listeners with the loop, or take them off, as the gate says."""
        if self.gate.admits(self.stats.active):
            if not self._accepting:
                self._accepting = True
                for listener in self.listeners:
                    self.loop.add_reader(listener.sock.fileno(), self._accept, listener)
        elif self._accepting:
            self._accepting = False
            for listener in self.listeners:
                self.loop.remove_reader(listener.sock.fileno())

    def _accept(self, listener: Listener) -> None:
        gate, stats = self.gate, self.stats
        # `socket.accept` is this, plus a lookup of the listener's family and type enums.
        accept: Callable[[], tuple[int, tuple[Any, ...]]] = listener.sock._accept  # type: ignore[attr-defined]
        family = listener.family
        counts_sources = self._counts_sources
        for index in range(_ACCEPT_BATCH):
            if not gate.admits(stats.active):
                # At the cap, connections wait in the kernel's backlog (as with socat's
                # max-children) until a slot frees.
                self._follow_gate()
                return
            if index == 1 and not listener.waiting(0):
                # Woken for one client, most often. Asking whether another waits is a poll
                # that returns nothing; an accept that finds none raises BlockingIOError,
                # which costs user space five times as much (the error and its message).
                return
            try:
                fd, peer = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _FD_EXHAUSTED:
                    self._out_of_descriptors(exc)
                    return
                continue  # ECONNABORTED and kin: that client is gone, the next may not be
            client = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            stats.accepted += 1
            client_label: str | None = None  # formatted from `peer` when first needed
            if family == socket.AF_INET:
                source = peer[0]  # only an IPv6 socket's clients can be IPv4-mapped
            elif family == socket.AF_UNIX:
                source, client_label = peer_source(client)
            else:
                source = client_host(peer[0])
            # A trusted load balancer's connection is admitted once its PROXY header
            # names the client (`admit`); every other one here, by its own address.
            policy = listener.policy
            proxied = policy.accept_proxy_protocol and policy.reads_proxy_header(source)
            names = listener.names  # admitted once the server name chose the route
            counted = False
            if not proxied and names is None and (listener.screened or counts_sources):
                refused = self._admission(listener.access, source)
                if refused is not None:
                    self._refuse(client, refused, source, listener.label)
                    continue
                counted = counts_sources
            stats.active += 1
            # A shared address's targets are those of the route its server name picks.
            targets: Sequence[ResolvedTarget] = listener.targets if names is None else ()
            if len(targets) > 1:
                targets = self.health.order(targets, self.loop.time())
            self._served += 1
            if names is None:  # a shared address's connection counts once its route is chosen
                self._served_by_route[listener.route_id] += 1
            last = self.max_accepts is not None and self._served >= self.max_accepts
            if last:
                # Before the connection starts, which may end it at once.
                self._close_listeners_for_good(listener.label)
            nodelay = listener.client_nodelay
            if nodelay is None:
                nodelay = listener.client_nodelay = inherits_nodelay(client)
            connection = Connection(
                self,
                client,
                peer=peer,
                local=listener.local,
                route_id="" if names is not None else listener.route_id,
                client_label=client_label,
                listen_label=listener.label,
                targets=targets,
                policy=policy,
                failover_log=listener.failover_log,
                source=source,
                proxied=proxied,
                names=names,
                client_nodelay=nodelay,
            )
            connection.source_counted = counted
            if proxied:
                self._awaiting_admission[connection] = listener.access
            self.connections.add(connection)
            try:
                connection.start()
            except Exception as exc:  # a bug: it must cost this connection, not the server
                self.connection_crashed(connection, exc)
            if last:
                return

    @property
    def _counts_sources(self) -> bool:
        return self.settings.max_connections_per_source is not None

    def _admission(self, access: AccessList, source: str) -> CloseReason | None:
        """Allow/deny, then the per-source limit, for a client at `source`; None: admitted
        (and counted against its source, when there is a limit)."""
        if access and not access.permits(source):
            return CloseReason.DENIED
        cap = self.settings.max_connections_per_source
        if cap is not None and not self.source_counts.take(source, cap):
            return CloseReason.SOURCE_LIMIT
        return None

    def admit(self, connection: Connection) -> CloseReason | None:
        """Admission of a connection whose client a PROXY header named: as at accept, for
        that client, with a refusal counted and logged as at accept."""
        access = self._awaiting_admission.pop(connection, _ANYONE)
        refused = self._admission(access, connection.source)
        if refused is None:
            connection.source_counted = self._counts_sources
            return None
        self._note_refusal(refused, connection.source)
        return refused

    def _failover_log(self, route: RouteId) -> Every:
        limiter = self._failover_logs.get(route)
        if limiter is None:
            limiter = self._failover_logs[route] = Every(_FAILOVER_LOG_INTERVAL)
        return limiter

    def connection_crashed(self, connection: Connection, exc: Exception) -> None:
        """Contain an error no part of the connection expected: log it with its traceback,
        reset the client, give back its slot and its descriptors."""
        log.error(
            logfmt(
                {
                    "event": "connection-error",
                    "client": connection.client_label,
                    "error": type(exc).__name__,
                    "msg": str(exc),
                }
            ),
            exc_info=exc,
        )
        connection.fail(exc)

    def _log_close_summary(self, *, again: bool = True) -> None:
        for fields in self.close_summary.take():
            log.info(logfmt(fields))
        if again:
            self._summary_timer = self.loop.call_later(SUMMARY_INTERVAL, self._log_close_summary)

    def _close_listeners_for_good(self, label: str) -> None:
        self.gate.close()
        self._follow_gate()
        self._accepts_done = True
        close_listeners(self.listeners)
        log.info(logfmt({"event": "listen-closed", "address": label, "served": self._served}))

    def _refuse(self, client: socket.socket, reason: CloseReason, source: str, listen: str) -> None:
        """Close a refused client at once, with a reset; log at most one line per interval,
        so a flood cannot fill the disk."""
        reset_on_close(client)
        client.close()
        self.stats.closed[reason] += 1
        self._traffic(listen).refused[reason] += 1
        self._note_refusal(reason, source)

    def _note_refusal(self, reason: CloseReason, source: str) -> None:
        self._refusals[reason] += 1
        if self._refusal_log.due(self.loop.time()):
            counts = dict(self._refusals)
            self._refusals.clear()
            log.warning(logfmt({"event": "refused", "reason": reason, "client": source, **counts}))

    def _traffic(self, listen: str) -> ListenerTraffic:
        traffic = self.traffic.get(listen)
        if traffic is None:
            traffic = self.traffic[listen] = ListenerTraffic()
        return traffic

    def _out_of_descriptors(self, exc: OSError) -> None:
        self.stats.accept_paused += 1
        if self._fd_log.due(self.loop.time()):
            log.warning(
                logfmt(
                    {
                        "event": "accept-paused",
                        "error": errno.errorcode.get(exc.errno or 0, "?"),
                        "active": self.stats.active,
                        "msg": "out of file descriptors; accepting again shortly",
                    }
                )
            )
        self.gate.out_of_descriptors()
        self._follow_gate()
        self.loop.call_later(_FD_BACKOFF, self._fd_backoff_over)

    def _fd_backoff_over(self) -> None:
        self.gate.descriptors_back()
        self._follow_gate()

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self._awaiting_admission.pop(connection, None)
        self.stats.active -= 1
        up, down = connection.byte_counts()
        self._traffic(connection.listen_label).closed_one(
            connection.reason or CloseReason.ERROR, up, down, connection.connect_seconds
        )
        if connection.source_counted:
            self.source_counts.give_back(connection.source)
        if self._drained is not None:
            if not self.connections:
                self._drained.set()
        elif self._accepts_done:
            if not self.connections:
                self.finished.set()
        elif not self._accepting:
            self._follow_gate()  # a slot is free: accept again, if the gate says so

    def route_counts(self) -> list[dict[str, object]]:
        """Each route's live counts: its listen addresses, the connections open now and
        served since start (reloads included), and where new ones go."""
        routes: dict[RouteId, list[Listener]] = {}
        for listener in self.listeners:
            routes.setdefault(listener.route_id, []).append(listener)
        # A shared address's connection counts for its route once the server name chose it.
        active = Counter(c.route_id for c in self.connections)
        rows: list[dict[str, object]] = []
        for rid, listeners in routes.items():
            listen = ",".join(listener.label for listener in listeners)
            names = listeners[0].names
            served = (
                [(rid, listeners[0].targets)]
                if names is None
                else [(RouteId(named.route_id), named.targets) for named in names.routes]
            )
            rows += [
                {
                    "route": route,
                    "listen": listen,
                    "active": active[route],
                    "served": self._served_by_route[route],
                    "target": ",".join(target.label for target in targets),
                }
                for route, targets in served
            ]
        return rows

    # --- targets and their health

    def set_targets(self, route: RouteId, targets: Sequence[ResolvedTarget]) -> None:
        """Send the route's new connections to `targets` from now on; connections already
        made, or still connecting, keep the targets they started with."""
        for listener in self.listeners:
            if listener.route_id == route:
                # A new list, never an in-place change: connections hold the old one.
                listener.targets = list(targets)
            if listener.names is not None:
                listener.names.set_targets(route, targets)
        self.health.retain(t for listener in self.listeners for t in listener.every_target())

    def target_failed(self, target: ResolvedTarget, reason: CloseReason) -> None:
        if self.health.failed(target, self.loop.time()):
            log.warning(
                logfmt(
                    {
                        "event": "target-down",
                        "target": target.label,
                        "reason": reason,
                        "for": self.health.down_for,
                        "msg": "tried last until then",
                    }
                )
            )

    def target_connected(self, target: ResolvedTarget) -> None:
        if self.health.succeeded(target):
            log.info(logfmt({"event": "target-up", "target": target.label}))

    # --- stopping

    def stop_accepting(self) -> None:
        """Close the listeners, so new clients are refused at once."""
        if self._drained is None:
            self._drained = asyncio.Event()
        self.gate.close()
        self._follow_gate()
        close_listeners(self.listeners)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let connections finish for up to `timeout`, then close them."""
        # 1. Stop accepting.
        self.stop_accepting()
        assert self._drained is not None
        # 2. Let connections in flight finish on their own.
        if self.connections:
            log.info(
                logfmt({"event": "draining", "active": len(self.connections), "timeout": timeout})
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        # 3. Past the deadline, close what remains.
        self.close()

    def close(self) -> None:
        """Close everything now; a reset tells each remaining peer it was cut short."""
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close(CloseReason.SHUTDOWN, reset=True)
        if self._summary_timer is not None:
            self._summary_timer.cancel()
            self._summary_timer = None
            self._log_close_summary(again=False)  # the counts since the last line
        if self.pipes is not None:
            self.pipes.close()
        if not self._closed:
            self._closed = True
            self.poller.close()


def log_listeners(forwarder: Forwarder) -> None:
    """One `event=listen` line per listener, with the targets it forwards to."""
    for listener in forwarder.listeners:
        targets = ",".join(target.label for target in listener.every_target())
        log.info(logfmt({"event": "listen", "address": listener.label, "target": targets}))


def closed_counts(stats: Stats) -> dict[str, int]:
    """`closed_REASON: count` for every reason connections closed with, in REASONS order."""
    return reason_counts(stats.closed)
