"""The pure parts of worker processes: counts, shares, back-off, metrics added up."""

from __future__ import annotations

import os

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pyforward.config.settings import build_settings
from pyforward.engine.sources import LocalSourceCounts
from pyforward.errors import ConfigError
from pyforward.workers import sourcetable
from pyforward.workers.metrics import counters_of, merge
from pyforward.workers.plan import connection_share, worker_count
from pyforward.workers.process import Backoff, worker_environment
from pyforward.workers.sourcetable import SharedSourceCounts

ROUTE = {"listen": "127.0.0.1:8080", "target": ["127.0.0.1:9000"]}


def test_workers_come_from_the_flag_the_environment_or_the_file() -> None:
    assert build_settings(ROUTE, {}).workers == 1
    assert build_settings({**ROUTE, "workers": "3"}, {}).workers == 3
    assert build_settings(ROUTE, {"PYFORWARD_WORKERS": "auto"}).workers is None
    assert build_settings(ROUTE, {}, {"workers": 2}).workers == 2
    with pytest.raises(ConfigError, match="config file: workers"):
        build_settings(ROUTE, {}, {"workers": 0})


def test_auto_is_one_per_usable_cpu_and_never_more_than_the_connection_cap() -> None:
    auto = build_settings(ROUTE, {"PYFORWARD_WORKERS": "auto"})
    assert worker_count(auto) == len(os.sched_getaffinity(0))
    assert worker_count(auto, cpus=8) == 8
    capped = build_settings({**ROUTE, "workers": "4", "max_connections": 3}, {})
    assert worker_count(capped) == 3


@pytest.mark.parametrize(("cap", "workers"), [(10, 3), (2, 2), (7, 4), (1000, 16)])
def test_connection_shares_add_up_to_the_cap(cap: int, workers: int) -> None:
    shares = [connection_share(cap, workers, index) for index in range(workers)]
    assert sum(s for s in shares if s is not None) == cap
    assert max(s for s in shares if s) - min(s for s in shares if s) <= 1
    assert connection_share(None, workers, 0) is None


def test_restarts_back_off_doubling_up_to_a_ceiling() -> None:
    backoff = Backoff(first=0.1, most=10.0)
    delays = [backoff.delay(n) for n in range(1, 10)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays == sorted(delays) and delays[-1] == 10.0


def test_a_worker_gets_none_of_systemds_notify_watchdog_or_activation() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/x",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "1",
        "LISTEN_FDNAMES": "a",
        "PATH": "/usr/bin",
    }
    assert worker_environment(env) == {"PATH": "/usr/bin"}


def _snapshot(eof: float, active: float, up: float) -> list[Metric]:
    closed = CounterMetricFamily("pyforward_connections", "", labels=["listen", "reason"])
    closed.add_metric(["a", "eof"], eof)
    open_now = GaugeMetricFamily("pyforward_active_connections", "", labels=["listen"])
    open_now.add_metric(["a"], active)
    target = GaugeMetricFamily("pyforward_target_up", "", labels=["listen", "target"])
    target.add_metric(["a", "t"], up)
    return [closed, open_now, target]


def test_metrics_add_up_but_a_target_is_up_only_where_every_worker_has_it_up() -> None:
    merged = {f.name: f for f in merge([_snapshot(3, 1, 1), _snapshot(4, 2, 0)])}
    assert [s.value for s in merged["pyforward_connections"].samples] == [7]
    assert [s.value for s in merged["pyforward_active_connections"].samples] == [3]
    assert [s.value for s in merged["pyforward_target_up"].samples] == [0]


def test_a_dead_worker_leaves_its_counters_not_its_gauges() -> None:
    left = counters_of(_snapshot(5, 9, 1))
    assert [f.name for f in left] == ["pyforward_connections"]


def test_the_shared_source_table_counts_for_every_process_that_maps_it() -> None:
    fd = sourcetable.create(sourcetable.table_size(None))
    first, second = SharedSourceCounts(fd), SharedSourceCounts(os.dup(fd))
    try:
        assert first.take("10.0.0.1", 2) and second.take("10.0.0.1", 2)
        assert not first.take("10.0.0.1", 2) and not second.take("10.0.0.1", 2)
        assert second.take("10.0.0.2", 2)  # another address has its own count
        first.give_back("10.0.0.1")
        assert second.count("10.0.0.1") == 1
        assert second.take("10.0.0.1", 2)
    finally:
        first.close()
        second.close()
        os.close(fd)


def test_a_full_probe_chain_reuses_slots_whose_count_fell_to_zero() -> None:
    fd = sourcetable.create(4)  # four slots: every address collides with some other
    table = SharedSourceCounts(fd)
    try:
        sources = [f"10.0.0.{n}" for n in range(4)]
        assert all(table.take(source, 1) for source in sources)
        assert not table.take("10.0.0.9", 1)  # full: refused, never counted elsewhere
        table.give_back(sources[1])
        assert table.take("10.0.0.9", 1)  # the freed slot serves a new address
        assert [table.count(source) for source in sources] == [1, 0, 1, 1]
        assert not table.take(sources[0], 1)
    finally:
        table.close()
        os.close(fd)


def test_one_process_counts_the_same_way() -> None:
    counts = LocalSourceCounts()
    assert counts.take("a", 1) and not counts.take("a", 1)
    counts.give_back("a")
    assert counts.take("a", 1)
