"""Medians, spreads and ratios: pure functions over the figures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.model import Figure, Metric


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, interpolating between neighbours."""
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """A metric for one subject over every round."""

    metric: str
    subject: str
    median: float
    low: float
    high: float
    rounds: int
    ratio: float | None  # median / the baseline's median; None without a baseline


def summarize(
    figures: Sequence[Figure], metrics: Sequence[Metric], subjects: Sequence[str], baseline: str
) -> list[Summary]:
    """One Summary per metric and subject that has figures, in the order given."""
    values: dict[tuple[str, str], list[float]] = {}
    for figure in figures:
        values.setdefault((figure.metric, figure.subject), []).append(figure.value)
    summaries = []
    for metric in metrics:
        base_values = values.get((metric.key, baseline))
        base = statistics.median(base_values) if base_values else None
        for subject in subjects:
            found = values.get((metric.key, subject))
            if not found:
                continue
            median = statistics.median(found)
            ratio = median / base if base else None
            summaries.append(
                Summary(metric.key, subject, median, min(found), max(found), len(found), ratio)
            )
    return summaries
