"""Runs every scenario against every subject, alternating subjects round by round."""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.model import Figure, Metric, Plan
from bench.scenarios import Scenario
from bench.scenarios.connrate import ConnectionRate
from bench.scenarios.https import HttpsConnectionRate
from bench.scenarios.latency import Latency
from bench.scenarios.memory import IdleMemory, StreamingMemory
from bench.scenarios.startup import Startup
from bench.scenarios.throughput import Throughput
from bench.scenarios.udp import UdpQueries, UdpThroughput
from bench.scenarios.unix_target import UnixTarget
from bench.subjects import Environment, Subject, UdpTraffic, running


def all_scenarios(plan: Plan) -> list[Scenario]:
    """Every scenario, in the order they run."""
    return [
        Throughput(),
        ConnectionRate(),
        HttpsConnectionRate(),
        Latency(),
        IdleMemory(plan),
        StreamingMemory(plan),
        Startup(),
        UdpQueries(),
        UdpThroughput(),
        UnixTarget(plan),
    ]


def all_metrics(scenarios: list[Scenario]) -> list[Metric]:
    return [metric for scenario in scenarios for metric in scenario.metrics]


def run_suite(
    plan: Plan,
    scenarios: list[Scenario],
    subjects: list[Subject],
    env: Environment,
    progress: Callable[[str], None],
) -> list[Figure]:
    """Every figure of every round. Each scenario keeps one backend for all its rounds;
    each subject is started fresh for each round and stopped after it."""
    figures: list[Figure] = []
    began = time.monotonic()
    for scenario in scenarios:
        units = {metric.key: metric.unit for metric in scenario.metrics}
        with scenario.backend(env.workdir) as backend_port:
            udp: UdpTraffic | None = getattr(scenario, "udp", None)
            for round_index in range(1, plan.rounds + 1):
                for subject in subjects:
                    if udp is not None and not subject.forwards_udp:
                        continue
                    with running(subject, backend_port, env, udp) as started:
                        values = scenario.measure(started, plan)
                    unknown = set(values) - set(units)
                    if unknown:
                        raise AssertionError(f"{scenario.name} yielded unknown {unknown}")
                    figures.extend(
                        Figure(scenario.name, key, units[key], subject.key, round_index, value)
                        for key, value in values.items()
                    )
                    progress(
                        f"[{time.monotonic() - began:5.1f}s] {scenario.name} "
                        f"round {round_index}/{plan.rounds}: {subject.label}"
                    )
    return figures
