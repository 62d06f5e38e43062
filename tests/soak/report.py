"""What one scenario run found, and the table the suite prints."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

MIB = 1 << 20


@dataclass(frozen=True)
class Outcome:
    """The figures and verdict of one scenario under one loop and relay."""

    scenario: str
    loop: str
    relay: str
    connections: int  # connections the forwarder accepted (its `event=stopped` count)
    verified: int  # bytes received by a peer and found exactly as sent
    errors: Mapping[str, int]  # what the peers saw go wrong, by kind, expected or not
    closes: Mapping[str, int]  # the forwarder's close reasons, by count
    fds: tuple[int, int, int]  # baseline, peak, final descriptor count
    pooled_pipe_fds: int  # of the final count: pipe ends kept in the splice pool
    rss: tuple[int, int, int]  # baseline, peak (VmHWM), final resident bytes
    cpu: float  # forwarder CPU seconds (user + system) from baseline to the end
    seconds: float  # wall time of the scenario
    failures: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.failures


def size(count: int) -> str:
    """Bytes in the largest binary unit that keeps a number >= 1."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Latency:
    """How long connections took, start to close: the median, the 99th percentile, the
    slowest (seconds)."""

    median: float
    p99: float
    slowest: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        if not seconds:
            return cls(0.0, 0.0, 0.0)
        ordered = sorted(seconds)

        def rank(q: float) -> float:
            # Nearest rank: the smallest value with at least q of all at or below it.
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

        return cls(rank(0.5), rank(0.99), ordered[-1])

    def __str__(self) -> str:
        return (
            f"median {self.median * 1000:.1f} ms, p99 {self.p99 * 1000:.1f} ms, "
            f"slowest {self.slowest * 1000:.1f} ms"
        )


def counts(by_kind: Mapping[str, int]) -> str:
    """`kind=n` pairs, largest first; `-` when there are none."""
    items = sorted(((k, n) for k, n in by_kind.items() if n), key=lambda kv: (-kv[1], kv[0]))
    return " ".join(f"{kind}={n:,}" for kind, n in items) or "-"


HEADERS = (
    "scenario",
    "loop",
    "relay",
    "connections",
    "bytes verified",
    "errors by kind (peers)",
    "closes by reason (pyforward)",
    "fds base/peak/final",
    "RSS MiB base/peak/final",
    "CPU s",
    "result",
)


def row(outcome: Outcome) -> tuple[str, ...]:
    base, peak, final = outcome.fds
    pooled = f"+{outcome.pooled_pipe_fds}p" if outcome.pooled_pipe_fds else ""
    rss = "/".join(f"{value / MIB:.1f}" for value in outcome.rss)
    return (
        outcome.scenario,
        outcome.loop,
        outcome.relay,
        f"{outcome.connections:,}",
        size(outcome.verified),
        counts(outcome.errors),
        counts(outcome.closes),
        f"{base}/{peak:,}/{final - outcome.pooled_pipe_fds}{pooled}",
        rss,
        f"{outcome.cpu:.1f}",
        "pass" if outcome.passed else "FAIL",
    )


def table(outcomes: Iterable[Outcome]) -> str:
    """A Markdown table, one row per run."""
    rows: Sequence[tuple[str, ...]] = [HEADERS, *(row(outcome) for outcome in outcomes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def details(outcomes: Iterable[Outcome]) -> str:
    """Per-run notes and every failed criterion, below the table."""
    out = []
    for outcome in outcomes:
        label = f"{outcome.scenario} {outcome.loop} {outcome.relay}"
        out += [f"- {label}: {note}" for note in outcome.notes]
        out += [f"- {label}: FAILED: {failure}" for failure in outcome.failures]
    return "\n".join(out)
