"""What each listener's finished connections add up to, kept by the forwarder. Pure.

The forwarder adds a connection here when it closes (`ListenerTraffic.closed`) and a
refused client when it is turned away. Connections still open are not in it: whoever
reads these (the metrics, at scrape time) adds their live counts, so a total is exact at
every moment and a connection is counted once, in one place or the other.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from pyforward.obs.reasons import CloseReason

# Upper bounds, in seconds, of the time-for-the-target-to-accept histogram: a target on the
# same host accepts in well under a millisecond, one across a network in a few, and the
# default connect_timeout is 10.
CONNECT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass
class ConnectTimes:
    """A histogram of connect times: a count per bucket of CONNECT_BUCKETS (not
    cumulative; the last one is above every bound), and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(CONNECT_BUCKETS) + 1))
    total: float = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(CONNECT_BUCKETS, seconds)] += 1
        self.total += seconds

    def copy(self) -> ConnectTimes:
        return ConnectTimes(list(self.counts), self.total)


@dataclass
class ListenerTraffic:
    """One listener's finished connections and refused clients, since start."""

    closed: Counter[CloseReason] = field(default_factory=Counter)  # by close reason
    refused: Counter[CloseReason] = field(default_factory=Counter)  # denied, source-limit
    up: int = 0  # bytes from clients to targets
    down: int = 0  # bytes from targets to clients
    connect: ConnectTimes = field(default_factory=ConnectTimes)

    def closed_one(
        self, reason: CloseReason, up: int, down: int, connect_seconds: float | None
    ) -> None:
        self.closed[reason] += 1
        self.up += up
        self.down += down
        if connect_seconds is not None:
            self.connect.add(connect_seconds)
