"""The printed table and the JSON file of every figure."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from bench.bars import judge
from bench.model import Figure, Metric
from bench.scenarios import Scenario
from bench.stats import Summary
from bench.subjects import BASELINE, SECOND_BASELINE, Subject

_BETTER = {"higher": "higher is better", "lower": "lower is better", "": "for context"}


def number(value: float) -> str:
    """A figure with about three significant digits, never in exponent form."""
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(
    scenarios: Sequence[Scenario],
    subjects: Sequence[Subject],
    summaries: Sequence[Summary],
    rounds: int,
    second: Sequence[Summary] = (),
) -> str:
    """Medians with min and max over the rounds, and the ratio to socat as deployed (and,
    with `second`, to HAProxy at its default thread count)."""
    found = {(s.metric, s.subject): s for s in summaries}
    other = {(s.metric, s.subject): s for s in second}
    width = max(len(s.label) for s in subjects) + 2
    lines = []
    header = f"  {'subject':<{width}}{'median':>10}{'min':>10}{'max':>10}{'vs socat':>10}"
    if other:
        header += f"{'vs HAProxy':>12}"
    for scenario in scenarios:
        lines += ["", f"== {scenario.title} ==", header]
        for metric in scenario.metrics:
            rows = [(s, found.get((metric.key, s.key))) for s in subjects]
            if not any(summary for _, summary in rows):
                continue
            lines.append(f"{metric.title} [{metric.unit}, {_BETTER[metric.better]}]")
            for subject, summary in rows:
                if summary is None:
                    continue
                shown = summary.ratio is not None and metric.better
                ratio = f"{summary.ratio:.2f}x" if shown else "-"
                row = (
                    f"  {subject.label:<{width}}{number(summary.median):>10}"
                    f"{number(summary.low):>10}{number(summary.high):>10}{ratio:>10}"
                )
                if other:
                    against = other.get((metric.key, subject.key))
                    known = against is not None and against.ratio is not None and metric.better
                    row += f"{f'{against.ratio:.2f}x' if known and against else '-':>12}"
                lines.append(row)
    note = f"medians of {rounds} rounds" if rounds > 1 else "one round: min = max = median"
    cores = os.cpu_count() or 0
    lines.insert(0, f"{note}; ratios are to socat as deployed ({BASELINE})")
    if other:
        lines.insert(1, f"and to HAProxy at its default thread count ({SECOND_BASELINE})")
    lines.insert(
        len(lines) if not lines else 1 + bool(other),
        f"on {cores} cores the load generator and the backend share the CPUs with the "
        "forwarder: the no-forwarder row is the ceiling",
    )
    return "\n".join(lines)


def bar_table(subjects: Sequence[Subject], summaries: Sequence[Summary]) -> str:
    """pyforward's subjects against the bars it is meant to reach."""
    candidates = [s for s in subjects if s.kind == "pyforward"]
    if not candidates:
        return ""
    width = 34
    column = max(len(s.label) for s in candidates) + 2
    lines = [
        "",
        "== pyforward against its bars ==",
        " " * width + "".join(f"{s.label:>{column}}" for s in candidates),
    ]
    verdicts = [judge(summaries, s.key) for s in candidates]
    for index, bar in enumerate(verdicts[0]):
        cells = []
        for per_subject in verdicts:
            verdict = per_subject[index]
            if verdict.measured is None:
                cells.append("-")
                continue
            shown = (
                f"{number(verdict.measured)}"
                if verdict.bar.against is None
                else f"{verdict.measured:.2f}x"
            )
            cells.append(f"{shown} {'ok' if verdict.met else 'MISSED'}")
        lines.append(f"{bar.bar.text:<{width}}" + "".join(f"{c:>{column}}" for c in cells))
    return "\n".join(lines)


def write_json(
    path: Path,
    *,
    meta: Mapping[str, object],
    metrics: Sequence[Metric],
    subjects: Sequence[Subject],
    figures: Sequence[Figure],
    summaries: Sequence[Summary],
) -> None:
    """Every figure of every round, with what they measure and the tools that ran."""
    document = {
        "meta": dict(meta),
        "subjects": [asdict(s) for s in subjects],
        "metrics": [asdict(m) for m in metrics],
        "figures": [asdict(f) for f in figures],
        "summary": [asdict(s) for s in summaries],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(partial, path)
