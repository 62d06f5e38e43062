"""The values passed between the runner, the scenarios and the report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One figure a scenario yields for each subject in each round."""

    key: str  # "throughput.up"
    title: str  # what the table prints
    unit: str
    better: str  # "higher", "lower" or "" (shown for context, not a race)
    forwarder_only: bool = False  # no value for the no-forwarder subject


@dataclass(frozen=True)
class Figure:
    """One measured value: a metric, for a subject, in a round."""

    scenario: str
    metric: str
    unit: str
    subject: str
    round: int
    value: float


@dataclass(frozen=True)
class Plan:
    """How long and how hard each scenario runs."""

    name: str  # full, quick, smoke
    rounds: int
    iperf_seconds: int  # iperf3 -t; 0 means use iperf_bytes
    iperf_bytes: str  # iperf3 -n, for runs too short to time
    wrk_seconds: int
    wrk_connections: int
    rtt_messages: int
    rtt_size: int
    idle_counts: tuple[int, int]
    streams: int
    stream_seconds: float


PLANS = {
    "full": Plan("full", 3, 3, "", 4, 16, 20000, 64, (100, 1000), 100, 1.5),
    "quick": Plan("quick", 1, 1, "", 1, 16, 4000, 64, (100, 1000), 100, 0.5),
    "smoke": Plan("smoke", 1, 0, "64M", 1, 4, 200, 64, (10, 40), 10, 0.2),
}
