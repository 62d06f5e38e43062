"""`pyforward top`'s view: two scrapes of a forwarder and the time between them, in, a rich
table out. No I/O: `cli/top.py` scrapes, times and draws.

Rates are differences between the two scrapes over the interval: connections per second
are the connections that opened in it (ended + open now, before and after), bytes per
second the growth of each direction's counter. A counter that went down (the forwarder
restarted between the scrapes: its start time changed) gives no rate rather than a wrong one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from pyforward.obs.live import ListenerState, LiveState, duration

COLUMNS = (
    "listen",
    "active",
    "conn/s",
    "up/s",
    "down/s",
    "ended",
    "errors",
    "refused",
    "targets",
)


@dataclass(frozen=True)
class Frame:
    """What one refresh shows: the latest scrape, the one before (None for the first), the
    seconds between them, and, while the forwarder does not answer, why."""

    address: str
    current: LiveState
    previous: LiveState | None = None
    interval: float = 0.0
    now: float = 0.0  # Unix time of the latest scrape, for the uptime
    problem: str | None = None  # the latest scrape failed: the rest is the last good one
    interactive: bool = False  # keys are read: say which one quits


def render(frame: Frame) -> RenderableType:
    """The header line, one row per listener, then a line per target marked down."""
    # One space between columns: a route's row fits 80 columns.
    table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    for column in COLUMNS:
        if column in ("listen", "targets"):
            table.add_column(column, justify="left", no_wrap=True)
        else:
            table.add_column(column, justify="right", no_wrap=True)
    previous = frame.previous
    if previous is not None and previous.started != frame.current.started:
        previous = None  # another process since: its counters started again
    for listen, counts in sorted(frame.current.listeners.items()):
        if not counts.targets:
            continue  # a listener a reload removed: it no longer listens
        before = previous.listeners.get(listen) if previous is not None else None
        table.add_row(
            listen,
            str(counts.active),
            _rate(_opened(before), counts.ended + counts.active, frame.interval, _count_rate),
            _rate(None if before is None else before.up, counts.up, frame.interval, _byte_rate),
            _rate(None if before is None else before.down, counts.down, frame.interval, _byte_rate),
            str(counts.ended),
            str(counts.ended_badly),
            str(counts.refused),
            _targets(counts),
        )
    down = [
        Text(f"down: {target} (listen {listen})", style="red")
        for listen, counts in sorted(frame.current.listeners.items())
        for target, up in counts.targets.items()
        if not up
    ]
    if frame.problem is not None:
        down.insert(0, Text(f"NOT ANSWERING: {frame.problem} (the figures are the last ones)"))
    return Group(_header(frame), table, *down)


def _header(frame: Frame) -> Text:
    parts = [f"pyforward at {frame.address}"]
    started = frame.current.started
    if started is not None and frame.now:
        parts.append(f"up {duration(frame.now - started)}")
    if frame.current.discovery_degraded:
        parts.append("discovery DEGRADED")
    elif frame.current.discovery_degraded is False:
        parts.append("discovery ok")
    header = Text("  ".join(parts))
    if frame.interactive:
        header.append("  (q quits)", style="dim")
    return header


def _opened(counts: ListenerState | None) -> int | None:
    return None if counts is None else counts.ended + counts.active


def _rate(before: int | None, after: int, interval: float, show: Callable[[float], str]) -> str:
    if before is None or interval <= 0 or after < before:
        return "-"
    return show((after - before) / interval)


def _count_rate(per_second: float) -> str:
    return f"{per_second:.1f}" if per_second < 100 else f"{per_second:.0f}"


def _byte_rate(per_second: float) -> str:
    size = per_second
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _targets(counts: ListenerState) -> str:
    return f"{sum(counts.targets.values())}/{len(counts.targets)} up"
