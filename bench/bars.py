"""The figures pyforward is meant to reach, as ratios to socat and HAProxy in one run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.stats import Summary


@dataclass(frozen=True)
class Bar:
    text: str
    metric: str
    against: str | None  # subject whose median is the reference; None: absolute value
    limit: float
    at_least: bool  # True: the figure must be >= limit; False: <= limit


BARS = (
    Bar("throughput up >= 2.2x socat", "throughput.up", "socat", 2.2, True),
    Bar("throughput down >= 2.2x socat", "throughput.down", "socat", 2.2, True),
    Bar("throughput up >= 1.2x HAProxy", "throughput.up", "haproxy", 1.2, True),
    Bar("throughput down >= 1.2x HAProxy", "throughput.down", "haproxy", 1.2, True),
    Bar("CPU per GB up <= 0.5x socat", "cpu_per_gb.up", "socat", 0.5, False),
    Bar("CPU per GB down <= 0.5x socat", "cpu_per_gb.down", "socat", 0.5, False),
    Bar("new connections/s >= 3x socat", "connrate.rate", "socat", 3.0, True),
    Bar("first byte p99 <= 0.5x socat", "connrate.ttfb_p99", "socat", 0.5, False),
    Bar("round trip p50 <= 1x socat", "latency.p50", "socat", 1.0, False),
    Bar("round trip p99 <= 1x socat", "latency.p99", "socat", 1.0, False),
    Bar("PSS per idle conn <= 0.05x socat", "memory.pss_per_idle", "socat", 0.05, False),
    Bar("PSS, many idle <= 0.4x socat", "memory.pss_idle_large", "socat", 0.4, False),
    Bar("start-up <= 300 ms", "startup.accepting", None, 300.0, False),
)


@dataclass(frozen=True)
class Verdict:
    bar: Bar
    subject: str
    measured: float | None  # the ratio, or the value for an absolute bar
    met: bool | None  # None: not measured in this run


def judge(summaries: Sequence[Summary], subject: str) -> list[Verdict]:
    """How `subject` stands against every bar, from the medians of one run."""
    medians = {(s.metric, s.subject): s.median for s in summaries}
    verdicts = []
    for bar in BARS:
        value = medians.get((bar.metric, subject))
        measured: float | None = None
        if value is not None:
            if bar.against is None:
                measured = value
            else:
                reference = medians.get((bar.metric, bar.against))
                if reference:
                    measured = value / reference
        met = None
        if measured is not None:
            met = measured >= bar.limit if bar.at_least else measured <= bar.limit
        verdicts.append(Verdict(bar, subject, measured, met))
    return verdicts
