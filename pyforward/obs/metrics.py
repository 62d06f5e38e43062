"""The forwarder's state as Prometheus metric families, read at scrape time.

Nothing here runs on the relay's path: the forwarder keeps plain counters (its `Stats`, its
`traffic` per listener, each open connection's byte counts), and `ForwarderCollector`
turns them into families when Prometheus asks. A total is what finished connections added
up to plus what the open ones have moved so far, so a download of hours shows as it goes,
and a connection is counted once, open or closed (the scrape runs on the event loop, so it
never sees one half-way from one to the other).

Label values are listeners and targets, never client addresses: their number is bounded
by the configuration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from pyforward.datagram.flows import FlowCounts
from pyforward.engine.server import Forwarder
from pyforward.obs.reasons import CloseReason
from pyforward.obs.traffic import CONNECT_BUCKETS, ConnectTimes, ListenerTraffic
from pyforward.relay.connection import Connection

if TYPE_CHECKING:  # the UDP side is loaded only with a UDP route (engine/runtime.py)
    from pyforward.datagram.flow import Flow
    from pyforward.datagram.server import DatagramForwarder

# Refused at accept, never a connection: counted by pyforward_refused_total alone.
REFUSAL_REASONS = (CloseReason.DENIED, CloseReason.SOURCE_LIMIT, CloseReason.FLOW_LIMIT)
CONNECTION_REASONS = tuple(reason for reason in CloseReason if reason not in REFUSAL_REASONS)


@dataclass(frozen=True)
class DiscoveryState:
    # By cluster: `default` for the top-level one, else a route's kubeconfig (docs/operating.md).
    degraded: Mapping[str, bool]
    last_change: float  # Unix time the targets last changed (or were first known)


def discovery_state(source: object, last_change: float) -> DiscoveryState | None:
    """What the metrics show of a target source: None unless it is discovery (a
    `Discovery`, or a `Clusters` of several)."""
    if getattr(source, "name", None) != "discovery":
        return None
    degraded: Mapping[str, bool] = getattr(source, "degraded_by_cluster", {})
    return DiscoveryState(dict(degraded), last_change)


class ForwarderCollector(Collector):
    """Collects the families of docs/operating.md's "Watching it" from a running forwarder."""

    def __init__(
        self,
        forwarder: Callable[[], Forwarder | None],
        discovery: Callable[[], DiscoveryState | None] = lambda: None,
        datagram: Callable[[], DatagramForwarder | None] = lambda: None,
    ) -> None:
        self._forwarder = forwarder
        self._discovery = discovery
        self._datagram = datagram

    def collect(self) -> Iterable[Metric]:
        forwarder = self._forwarder()
        if forwarder is not None:
            yield from _forwarder_families(forwarder, self._datagram())
        state = self._discovery()
        if state is not None:
            degraded = GaugeMetricFamily(
                "pyforward_discovery_degraded",
                "1 while forwarding to targets the cluster has not confirmed, else 0.",
                labels=["cluster"],
            )
            for cluster, is_degraded in state.degraded.items():
                degraded.add_metric([cluster], int(is_degraded))
            yield degraded
            yield GaugeMetricFamily(
                "pyforward_discovery_last_change_timestamp_seconds",
                "When the discovered targets last changed, in Unix time.",
                value=state.last_change,
            )


def _forwarder_families(
    forwarder: Forwarder, datagram: DatagramForwarder | None = None
) -> Iterator[Metric]:
    listens = [listener.label for listener in forwarder.listeners]
    listens += [label for label in forwarder.traffic if label not in listens]
    # Finished connections, then the open ones' live counts on top.
    totals = {label: _copy(forwarder.traffic.get(label)) for label in listens}
    # UDP flows count as connections of their listener (`udp:HOST:PORT`).
    flows = datagram.flows if datagram is not None else []
    if datagram is not None:
        udp_labels = [listener.label for listener in datagram.listeners]
        udp_labels += [label for label in datagram.traffic if label not in udp_labels]
        totals.update({label: _copy(datagram.traffic.get(label)) for label in udp_labels})
    active: Counter[str] = Counter()
    open_ones: list[Connection | Flow] = [*forwarder.connections, *flows]
    for connection in open_ones:
        traffic = totals.get(connection.listen_label)
        if traffic is None:
            traffic = totals[connection.listen_label] = ListenerTraffic()
        active[connection.listen_label] += 1
        up, down = connection.byte_counts()
        traffic.up += up
        traffic.down += down
        if connection.connect_seconds is not None:
            traffic.connect.add(connection.connect_seconds)

    connections = CounterMetricFamily(
        "pyforward_connections",
        "Connections that ended, by listener and close reason.",
        labels=["listen", "reason"],
    )
    open_now = GaugeMetricFamily(
        "pyforward_active_connections", "Connections open now.", labels=["listen"]
    )
    moved = CounterMetricFamily(
        "pyforward_bytes",
        "Bytes relayed: up is client to target, down is target to client.",
        labels=["listen", "direction"],
    )
    refused = CounterMetricFamily(
        "pyforward_refused",
        "Clients refused at accept, before any target was contacted.",
        labels=["listen", "reason"],
    )
    connect = HistogramMetricFamily(
        "pyforward_connect_seconds",
        "Time for a target to accept a connection.",
        labels=["listen"],
    )
    for label, traffic in totals.items():
        for reason in CONNECTION_REASONS:
            connections.add_metric([label, reason], traffic.closed[reason])
        for reason in REFUSAL_REASONS:
            refused.add_metric([label, reason], traffic.refused[reason])
        open_now.add_metric([label], active[label])
        moved.add_metric([label, "up"], traffic.up)
        moved.add_metric([label, "down"], traffic.down)
        connect.add_metric([label], _buckets(traffic.connect), traffic.connect.total)
    yield from (connections, open_now, moved, refused, connect)
    yield from _datagram_families(datagram)

    target_up = GaugeMetricFamily(
        "pyforward_target_up",
        "1 while a target is taken to accept, 0 while passive health has it down.",
        labels=["listen", "target"],
    )
    now = forwarder.loop.time()
    for listener in forwarder.listeners:
        for target in listener.every_target():
            up = not forwarder.health.is_down(target, now)
            target_up.add_metric([listener.label, target.label], int(up))
    for udp in datagram.listeners if datagram is not None else []:
        for target in udp.targets:
            up = not datagram.health.is_down(target, now) if datagram is not None else True
            target_up.add_metric([udp.label, target.label], int(up))
    yield target_up

    stats = forwarder.stats
    yield CounterMetricFamily(
        "pyforward_accept_paused",
        "Times accepting paused because file descriptors ran out.",
        value=stats.accept_paused,
    )
    relay = CounterMetricFamily(
        "pyforward_relay_bytes", "Bytes relayed, by the path they took.", labels=["path"]
    )
    relay.add_metric(["splice"], stats.spliced_bytes)
    relay.add_metric(["copy"], stats.copied_bytes)
    yield relay


def _datagram_families(datagram: DatagramForwarder | None) -> Iterator[Metric]:
    """Datagrams relayed and dropped (a full socket buffer), per UDP listener; without a
    UDP route, the families with no sample."""
    totals: dict[str, FlowCounts] = {}
    if datagram is not None:
        totals = {label: _copy_counts(counts) for label, counts in datagram.datagrams.items()}
        for listener in datagram.listeners:
            totals.setdefault(listener.label, FlowCounts())
        for flow in datagram.flows:
            total, live = totals.setdefault(flow.listen_label, FlowCounts()), flow.state.counts
            total.datagrams_up += live.datagrams_up
            total.datagrams_down += live.datagrams_down
            total.dropped_up += live.dropped_up
            total.dropped_down += live.dropped_down
    relayed = CounterMetricFamily(
        "pyforward_datagrams",
        "UDP datagrams relayed: up is client to target, down is target to client.",
        labels=["listen", "direction"],
    )
    dropped = CounterMetricFamily(
        "pyforward_datagrams_dropped",
        "UDP datagrams dropped because a socket's send buffer was full.",
        labels=["listen", "direction"],
    )
    for label, counts in totals.items():
        relayed.add_metric([label, "up"], counts.datagrams_up)
        relayed.add_metric([label, "down"], counts.datagrams_down)
        dropped.add_metric([label, "up"], counts.dropped_up)
        dropped.add_metric([label, "down"], counts.dropped_down)
    yield from (relayed, dropped)


def _copy_counts(counts: FlowCounts) -> FlowCounts:
    return FlowCounts(
        counts.datagrams_up,
        counts.datagrams_down,
        counts.bytes_up,
        counts.bytes_down,
        counts.dropped_up,
        counts.dropped_down,
    )


def _copy(traffic: ListenerTraffic | None) -> ListenerTraffic:
    if traffic is None:
        return ListenerTraffic()
    return ListenerTraffic(
        Counter(traffic.closed),
        Counter(traffic.refused),
        traffic.up,
        traffic.down,
        traffic.connect.copy(),
    )


def _buckets(times: ConnectTimes) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, +Inf last, as Prometheus histograms have them."""
    buckets = []
    running = 0
    for bound, count in zip(CONNECT_BUCKETS, times.counts, strict=False):
        running += count
        buckets.append((repr(bound), float(running)))
    buckets.append(("+Inf", float(running + times.counts[-1])))
    return buckets


def make_registry(
    forwarder: Callable[[], Forwarder | None],
    discovery: Callable[[], DiscoveryState | None] = lambda: None,
    datagram: Callable[[], DatagramForwarder | None] = lambda: None,
) -> CollectorRegistry:
    """A registry of its own (never the library's global one): the forwarder's families and
    the standard process collector (descriptors, memory, CPU time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ForwarderCollector(forwarder, discovery, datagram))
    ProcessCollector(registry=registry)
    return registry
