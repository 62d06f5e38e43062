"""UDP flows: which client datagrams belong together, when a flow ends, how many may live.
Pure: keys, counts and the caller's clock in, decisions out; no sockets.

A flow is one client address (IP and port): its datagrams go to the target through a socket
of its own, so the target's replies come back on that socket and go to that client alone.
Rules, in the order a new client's first datagram meets them:

1. Per source: with `per_source` set, one client IP holds at most that many flows (its
   other ports are refused, `source-limit`), as `max_connections_per_source` does for TCP.
   With workers the count is kept in the table they share (`shared`, under the key
   `scope SOURCE`), so the limit holds for the route's flows in every worker together.
2. The cap: a route holds at most `max_flows`. At the cap, the least recently active flow
   that is not *assured* is evicted to make room (Linux conntrack's early drop): a flow is
   assured once the client sent twice and the target answered, so a QUIC connection
   outlives a flood of one-datagram clients, while DNS lookups (one query, one answer,
   each from a new port) make room for each other. Only when every flow among the
   `EVICTION_SCAN` least recently active is assured is the new client refused
   (`flow-limit`), until one expires.
3. Idle expiry: a flow with no datagram in either direction for `idle_timeout` seconds ends.

The table keeps flows in order of last activity, so expiry and eviction look at the front.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from pyforward.obs.reasons import CloseReason

# How far past the least recently active flow eviction looks for one that is not assured.
EVICTION_SCAN = 64
# The largest UDP payload over IPv4 (65,535 - 20 IP - 8 UDP); a receive buffer of 64 KiB
# holds any datagram whole, IPv6 (65,527) included, so nothing is ever truncated.
MAX_DATAGRAM = 65507
RECEIVE_BUFFER = 65536

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class FlowCounts:
    """What one flow has moved: datagrams and bytes each way, and datagrams dropped
    because a socket's send buffer was full (up: to the target, down: to the client)."""

    datagrams_up: int = 0
    datagrams_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0

    @property
    def assured(self) -> bool:
        """Two-way traffic beyond one exchange: not evicted to make room (see rule 2)."""
        return self.datagrams_up >= 2 and self.datagrams_down >= 1


@dataclass(slots=True)
class FlowState(Generic[K]):
    key: K  # the client's address
    source: str  # the client's IP, as access lists and per-source limits see it
    started: float
    last: float
    counts: FlowCounts = field(default_factory=FlowCounts)
    shared: bool = False  # counted in the shared table (given back when it ends)


class SharedSources(Protocol):
    """Flows per source counted across processes (workers/sourcetable.py)."""

    def take(self, source: str, cap: int) -> bool: ...

    def give_back(self, source: str) -> None: ...

    def count(self, source: str) -> int: ...


@dataclass(frozen=True)
class Admission(Generic[K]):
    """A new client's fate: refused (with the reason), or admitted, perhaps once `evict`
    (a flow the caller must close first, reason `flow-evicted`) is gone."""

    refused: CloseReason | None = None
    evict: FlowState[K] | None = None


class FlowTable(Generic[K]):
    """The flows of one route, least recently active first."""

    def __init__(
        self,
        max_flows: int,
        idle_timeout: float,
        per_source: int | None = None,
        shared: SharedSources | None = None,
        scope: str = "",
    ) -> None:
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.per_source = per_source
        self.shared = shared
        self.scope = scope
        self._flows: OrderedDict[K, FlowState[K]] = OrderedDict()
        self._sources: Counter[str] = Counter()
        # `touch` in two steps for the per-datagram path, which sets `flow.last` itself:
        # recent(flow.key) makes it the most recently active without a call of its own.
        self.recent = self._flows.move_to_end

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[FlowState[K]]:
        return iter(list(self._flows.values()))

    def get(self, key: K) -> FlowState[K] | None:
        return self._flows.get(key)

    def admission(self, source: str) -> Admission[K]:
        """May a new client at `source` start a flow (rules 1 and 2)? Changes nothing."""
        if self.per_source is not None and self._held(source) >= self.per_source:
            return Admission(CloseReason.SOURCE_LIMIT)
        if len(self._flows) < self.max_flows:
            return Admission()
        for flow in itertools.islice(self._flows.values(), EVICTION_SCAN):
            if not flow.counts.assured:
                return Admission(evict=flow)
        return Admission(CloseReason.FLOW_LIMIT)

    def _held(self, source: str) -> int:
        if self.shared is None:
            return self._sources[source]
        return self.shared.count(f"{self.scope} {source}")

    def add(self, key: K, source: str, now: float) -> FlowState[K] | None:
        """Start a flow (after `admission` allowed it, and its eviction is done); None when
        another process took the source's last flow in between (refused: `source-limit`)."""
        assert key not in self._flows and len(self._flows) < self.max_flows
        flow = FlowState(key, source, now, now)
        if self.shared is not None and self.per_source is not None:
            if not self.shared.take(f"{self.scope} {source}", self.per_source):
                return None
            flow.shared = True
        self._flows[key] = flow
        self._sources[source] += 1
        return flow

    def touch(self, flow: FlowState[K], now: float) -> None:
        """A datagram went through `flow`: it is the most recently active now."""
        flow.last = now
        self._flows.move_to_end(flow.key)

    def remove(self, flow: FlowState[K]) -> None:
        if self._flows.pop(flow.key, None) is None:
            return
        if flow.shared and self.shared is not None:
            self.shared.give_back(f"{self.scope} {flow.source}")
        self._sources[flow.source] -= 1
        if not self._sources[flow.source]:
            del self._sources[flow.source]

    def expired(self, now: float) -> list[FlowState[K]]:
        """The flows idle for `idle_timeout` or longer (rule 3), oldest first; not removed."""
        deadline = now - self.idle_timeout
        found = []
        for flow in self._flows.values():
            if flow.last > deadline:
                break  # every later flow was active more recently still
            found.append(flow)
        return found

    def next_expiry(self) -> float | None:
        """When the least recently active flow expires, if nothing passes through it."""
        for flow in self._flows.values():
            return flow.last + self.idle_timeout
        return None
