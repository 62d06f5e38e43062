"""How many workers, and what each one's share of the forwarder is. Pure."""

from __future__ import annotations

import os
from dataclasses import replace

from pyforward.config.model import Settings


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as taskset and cgroups set)."""
    return len(os.sched_getaffinity(0))


def worker_count(settings: Settings, cpus: int | None = None) -> int:
    """`workers` resolved: `auto` is one per usable CPU; never more workers than
    `max_connections` allows one connection each."""
    count = settings.workers if settings.workers is not None else (cpus or usable_cpus())
    if settings.max_connections is not None:
        count = min(count, settings.max_connections)
    return max(count, 1)


def connection_share(max_connections: int | None, workers: int, index: int) -> int | None:
    """Worker `index`'s part of `max_connections`: the shares differ by at most one and add
    up to the cap exactly. A worker at its share stops accepting, and since every worker
    accepts from the same listening sockets, the others take the next clients: the
    forwarder as a whole accepts until `max_connections` are open."""
    if max_connections is None:
        return None
    base, extra = divmod(max_connections, workers)
    return base + (1 if index < extra else 0)


def worker_settings(settings: Settings, workers: int, index: int) -> Settings:
    """What worker `index` runs: its connection share; no metrics endpoint (the main
    process serves the forwarder's); one process (it is a worker)."""
    share = connection_share(settings.max_connections, workers, index)
    return replace(settings, max_connections=share, metrics=None, workers=1)
