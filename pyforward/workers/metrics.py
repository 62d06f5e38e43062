"""The forwarder's metrics with workers: each worker's families, added up. Pure.

The main process asks every worker for its families at each scrape (over the control
channel, see `supervisor.py`) and serves their sum; a family's samples with the same name
and labels add up, so every counter of the forwarder is exactly the sum of its workers'.
A worker that died leaves its last counters behind (they were served; a total never goes
down), not its gauges. The exceptions, where adding up would say something false, are in
`_LEAST`: a target is up only while every worker takes it to be, the forwarder started
when its first process did, and its descriptor limit is any one process's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.core import Metric

_LEAST = frozenset({"pyforward_target_up", "process_start_time_seconds", "process_max_fds"})
_KEPT_TYPES = frozenset({"counter", "histogram"})

LabelKey = tuple[str, tuple[tuple[str, str], ...]]


def merge(snapshots: Iterable[Sequence[Metric]]) -> list[Metric]:
    """One list of families: the samples of all `snapshots` combined (see the module)."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[LabelKey, float]] = {}
    for snapshot in snapshots:
        for family in snapshot:
            if family.name not in merged:
                merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            samples = values[family.name]
            least = family.name in _LEAST
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif least:
                    samples[key] = min(samples[key], sample.value)
                else:
                    samples[key] += sample.value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


def counters_of(snapshot: Sequence[Metric]) -> list[Metric]:
    """What a dead worker's last snapshot leaves in the totals: its counters and histograms."""
    return [family for family in snapshot if family.type in _KEPT_TYPES]
