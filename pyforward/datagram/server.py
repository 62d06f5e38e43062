"""The UDP side of a forwarder: a listener per UDP route address, its flows, their expiry.

A sibling of engine/server.py's TCP `Forwarder`, started beside it by the runtime. Raw
non-blocking sockets with `loop.add_reader` (no asyncio transport: a transport would queue
what a full socket cannot take, without bound); flow rules in `flows.py`, one flow's I/O in
`flow.py`. Admission follows TCP's: allow/deny, then the per-source limit, then the cap.

In a worker (`bind` False) every socket comes from the main process, which binds one per
worker and address of each UDP route (workers/listeners.py); a route it sends none for is
not served in this worker. The per-source limit is then counted in the table the workers
share (`source_counts`), so it holds for the forwarder as a whole.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping, Sequence

from pyforward.config.addresses import Address
from pyforward.config.model import Route, Settings, Transport
from pyforward.datagram.flow import Flow
from pyforward.datagram.flows import RECEIVE_BUFFER, FlowCounts
from pyforward.datagram.listener import DatagramListener, open_datagram_socket
from pyforward.engine.health import TargetHealth
from pyforward.engine.listeners import bind_addresses, close_all
from pyforward.engine.route_listeners import resolve_target
from pyforward.engine.sources import SourceCounts
from pyforward.engine.targets import RouteId, route_ids
from pyforward.obs.closelog import SUMMARY_INTERVAL, CloseSummary
from pyforward.obs.logfmt import logfmt
from pyforward.obs.ratelimit import Every
from pyforward.obs.reasons import CloseReason
from pyforward.obs.traffic import ListenerTraffic
from pyforward.relay.dial import ResolvedTarget

log = logging.getLogger("pyforward")

_REFUSAL_LOG_INTERVAL = 5.0


class DatagramForwarder:
    """Every UDP route of the settings: listeners, flows, counts for the metrics."""

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        *,
        max_flows_total: int | None = None,
        passed_sockets: Mapping[int, list[socket.socket]] | None = None,
        bind: bool = True,
        source_counts: SourceCounts | None = None,
    ) -> None:
        self.settings = settings
        self.bind = bind
        self.source_counts = source_counts  # None: each listener counts its own sources
        self.served: set[RouteId] = set()  # the routes opened, sockets here or not
        # UDP sockets handed over by systemd (ListenDatagram=), by route index.
        self.passed_sockets = dict(passed_sockets or {})
        self.loop = loop
        # socat without fork: after this many flows no new ones, and `finished` once the
        # last has ended.
        self.max_flows_total = max_flows_total
        self.finished = asyncio.Event()
        self.started_flows = 0
        self.listeners: list[DatagramListener] = []
        self.health = TargetHealth()
        self.buffer = bytearray(RECEIVE_BUFFER)  # shared: every callback runs to its end
        self.view = memoryview(self.buffer)
        self.traffic: dict[str, ListenerTraffic] = {}  # closed flows and refusals
        self.datagrams: dict[str, FlowCounts] = {}  # closed flows' datagram counts
        self.refused: dict[CloseReason, int] = {}
        self.close_summary = CloseSummary()
        self._refusal_log = Every(_REFUSAL_LOG_INTERVAL)
        self._expiry: asyncio.TimerHandle | None = None
        self._summary: asyncio.TimerHandle | None = None

    @staticmethod
    def routes_of(settings: Settings) -> list[tuple[RouteId, Route]]:
        ids = route_ids(settings.routes)
        return [(rid, r) for rid, r in zip(ids, settings.routes, strict=True) if _is_udp(r)]

    def _passed(self, rid: RouteId) -> list[socket.socket]:
        ids = route_ids(self.settings.routes)
        return self.passed_sockets.pop(ids.index(rid), []) if rid in ids else []

    @property
    def flows(self) -> list[Flow]:
        return [flow for listener in self.listeners for flow in listener.flows.values()]

    async def start(self) -> None:
        """Resolve every UDP route's targets and bind its sockets, then read."""
        try:
            for rid, route in self.routes_of(self.settings):
                targets = [await resolve_target(self.loop, t) for t in route.targets]
                for listener in self._open(rid, route):
                    listener.targets = targets
        except BaseException:
            close_all([listener.sock for listener in self.listeners])
            raise
        for listener in self.listeners:
            self.loop.add_reader(listener.sock.fileno(), listener.readable)
        if self.listeners:
            self._summary = self.loop.call_later(SUMMARY_INTERVAL, self._log_summary)

    def _open(self, rid: RouteId, route: Route) -> list[DatagramListener]:
        opened = [DatagramListener(self, sock, rid, route) for sock in self._passed(rid)]
        self.served.add(rid)
        if not opened and self.bind:
            listen = route.listen
            assert isinstance(listen, Address), "a UDP route listens on an IP address"
            for family, sockaddr in bind_addresses(listen):
                sock = open_datagram_socket(listen, family, sockaddr)
                opened.append(DatagramListener(self, sock, rid, route))
        self.listeners += opened
        return opened

    def route_counts(self) -> list[dict[str, object]]:
        """Each UDP route's live counts, as `Forwarder.route_counts` gives TCP's: flows open
        now and flows started since start."""
        routes: dict[RouteId, list[DatagramListener]] = {}
        for listener in self.listeners:
            routes.setdefault(listener.route_id, []).append(listener)
        return [
            {
                "route": rid,
                "listen": ",".join(listener.label for listener in listeners),
                "active": sum(len(listener.flows) for listener in listeners),
                "served": sum(listener.started for listener in listeners),
                "target": ",".join(target.label for target in listeners[0].targets),
            }
            for rid, listeners in routes.items()
        ]

    def set_targets(self, route: RouteId, targets: Sequence[ResolvedTarget]) -> None:
        """New flows of `route` go to `targets`; flows open keep theirs."""
        for listener in self.listeners:
            if listener.route_id == route:
                listener.targets = list(targets)
        self.health.retain(t for listener in self.listeners for t in listener.targets)

    async def reload(
        self, settings: Settings, passed: Mapping[int, list[socket.socket]] | None = None
    ) -> None:
        """Apply a new configuration's UDP routes: new ones open (on the sockets `passed`
        by route index, in a worker), removed ones close (their flows with them), kept ones
        take the new targets and limits for new flows."""
        new = dict(self.routes_of(settings))
        resolved = {
            rid: [await resolve_target(self.loop, t) for t in route.targets]
            for rid, route in new.items()
        }
        if passed is not None:
            self.passed_sockets = dict(passed)
        current = set(self.served)
        self.served &= set(new)
        kept = [listener for listener in self.listeners if listener.route_id in new]
        for listener in self.listeners:
            if listener.route_id not in new:
                listener.close(CloseReason.SHUTDOWN)
        self.listeners = kept
        self.settings = settings  # before opening: `_passed` finds a route by its new index
        for rid, route in new.items():
            if rid not in current:
                for listener in self._open(rid, route):
                    self.loop.add_reader(listener.sock.fileno(), listener.readable)
        for listener in self.listeners:
            route = new[listener.route_id]
            listener.route, listener.targets = route, resolved[listener.route_id]
            listener.table.max_flows = route.udp_max_flows
            listener.table.idle_timeout = route.udp_idle_timeout
            listener.table.per_source = settings.max_connections_per_source

    # --- admission and accounting

    def refusal(self, listener: DatagramListener, source: str) -> CloseReason | None:
        """Allow/deny and the total cap (socat without fork) for a new client."""
        if listener.access and not listener.access.permits(source):
            return CloseReason.DENIED
        if self.max_flows_total is not None and self.started_flows >= self.max_flows_total:
            return CloseReason.FLOW_LIMIT
        return None

    def refuse(self, label: str, reason: CloseReason, source: str) -> None:
        """A new client's datagram dropped: counted, and one log line per interval."""
        self._traffic(label).refused[reason] += 1
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._refusal_log.due(self.loop.time()):
            log.warning(
                logfmt(
                    {
                        "event": "refused",
                        "reason": reason,
                        "client": source,
                        "listen": label,
                        **{str(r): n for r, n in self.refused.items()},
                    }
                )
            )
            self.refused.clear()

    def flow_started(self) -> None:
        self.started_flows += 1
        if self._expiry is None:
            self._schedule_expiry()

    def flow_closed(self, listener: DatagramListener, flow: Flow, reason: CloseReason) -> None:
        counts = flow.state.counts
        self._traffic(listener.label).closed_one(reason, counts.bytes_up, counts.bytes_down, None)
        total = self.datagrams.setdefault(listener.label, FlowCounts())
        total.datagrams_up += counts.datagrams_up
        total.datagrams_down += counts.datagrams_down
        total.dropped_up += counts.dropped_up
        total.dropped_down += counts.dropped_down
        total_reached = (
            self.max_flows_total is not None and self.started_flows >= self.max_flows_total
        )
        if total_reached and not any(listener.flows for listener in self.listeners):
            self.finished.set()

    def target_failed(self, target: ResolvedTarget, reason: CloseReason) -> None:
        if self.health.failed(target, self.loop.time()):
            log.warning(logfmt({"event": "target-down", "target": target.label, "reason": reason}))

    def _traffic(self, label: str) -> ListenerTraffic:
        return self.traffic.setdefault(label, ListenerTraffic())

    # --- timers

    def _schedule_expiry(self) -> None:
        deadlines = [d for li in self.listeners if (d := li.table.next_expiry()) is not None]
        if not deadlines:
            self._expiry = None
            return
        delay = max(0.0, min(deadlines) - self.loop.time())
        self._expiry = self.loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        now = self.loop.time()
        for listener in self.listeners:
            listener.expire(now)
        self._schedule_expiry()

    def _log_summary(self, *, again: bool = True) -> None:
        for fields in self.close_summary.take():
            log.info(logfmt(fields))
        if again:
            self._summary = self.loop.call_later(SUMMARY_INTERVAL, self._log_summary)

    def close(self) -> None:
        """Stop: close every flow (`shutdown`) and every listener. UDP has nothing in flight
        to wait for: a datagram is sent whole or not at all."""
        for listener in self.listeners:
            listener.close(CloseReason.SHUTDOWN)
        self.listeners = []
        for timer in (self._expiry, self._summary):
            if timer is not None:
                timer.cancel()
        if self._summary is not None:
            self._summary = None
            self._log_summary(again=False)
        self._expiry = None


def _is_udp(route: Route) -> bool:
    return route.protocol is Transport.UDP
