"""One PNG with the headline figures side by side, for people who would rather look."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.stats import Summary
from bench.subjects import Subject


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    series: tuple[tuple[str, str], ...]  # (metric key, legend label)
    log: bool = False


PANELS = (
    Panel(
        "Throughput (higher is better)",
        "Gbit/s",
        (("throughput.up", "up"), ("throughput.down", "down"), ("throughput.both", "both")),
    ),
    Panel(
        "Forwarder CPU per GB moved (lower is better)",
        "CPU s/GB",
        (("cpu_per_gb.up", "up"), ("cpu_per_gb.down", "down"), ("cpu_per_gb.both", "both")),
    ),
    Panel("New connections per second (higher is better)", "conn/s", (("connrate.rate", ""),)),
    Panel(
        "Time to first byte, new connection (lower is better)",
        "ms",
        (("connrate.ttfb_p50", "p50"), ("connrate.ttfb_p99", "p99")),
    ),
    Panel(
        "Small-message round trip (lower is better)",
        "us",
        (("latency.p50", "p50"), ("latency.p99", "p99"), ("latency.p999", "p99.9")),
        log=True,  # a stray p99.9 would otherwise flatten the p50 bars
    ),
    Panel(
        "Memory, PSS summed over processes (lower is better)",
        "MiB",
        (
            ("memory.pss_idle_small", "idle, fewer"),
            ("memory.pss_idle_large", "idle, more"),
            ("memory.pss_stream", "streaming"),
        ),
        log=True,
    ),
    Panel(
        "PSS per extra idle connection (lower is better)",
        "KiB",
        (("memory.pss_per_idle", ""),),
        log=True,
    ),
    Panel("Start-up, exec to accepting (lower is better)", "ms", (("startup.accepting", ""),)),
)


def draw(path: Path, subjects: Sequence[Subject], summaries: Sequence[Summary], note: str) -> None:
    """Bars of the medians, whiskers from min to max, one panel per question."""
    import matplotlib  # noqa: PLC0415  (heavy: loaded only when a chart is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: PLC0415

    found = {(s.metric, s.subject): s for s in summaries}
    figure, axes = plt.subplots(4, 2, figsize=(14, 17), layout="constrained")
    for panel, ax in zip(PANELS, axes.flat, strict=True):
        shown = [s for s in subjects if any((m, s.key) in found for m, _ in panel.series)]
        width = 0.8 / len(panel.series)
        for index, (metric, legend) in enumerate(panel.series):
            xs, heights, below, above = [], [], [], []
            for position, subject in enumerate(shown):
                summary = found.get((metric, subject.key))
                if summary is None:
                    continue
                xs.append(position + (index - (len(panel.series) - 1) / 2) * width)
                heights.append(summary.median)
                below.append(summary.median - summary.low)
                above.append(summary.high - summary.median)
            ax.bar(xs, heights, width, yerr=[below, above], capsize=2, label=legend or None)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.unit)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([s.label for s in shown], rotation=30, ha="right", fontsize=8)
        if panel.log:
            ax.set_yscale("log")
            # Ticks at 1, 2, 5 x 10^n, written as plain numbers (50, not 5x10^1).
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        if len(panel.series) > 1:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"pyforward benchmark: {note}", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    figure.savefig(partial, dpi=80, format="png")
    plt.close(figure)
    os.replace(partial, path)
