"""How many workers, and what each one's share of the forwarder is. Pure."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

from pyforward.config.model import Settings, Transport
from pyforward.engine.targets import RouteId, route_ids


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


def flow_share(max_flows: int, workers: int, index: int) -> int:
    """Worker `index`'s part of a UDP route's `udp_max_flows`: divided as `max_connections`
    is, but at least one flow each. Unlike a TCP connection, a client's flow cannot go to
    another worker when its own is full (the kernel's hash of its address chose the worker),
    so at its share a worker evicts or refuses as the whole route does at the cap in one
    process; with a cap below the worker count, the route may hold one flow per worker."""
    share = connection_share(max_flows, workers, index)
    return max(share or 0, 1)


def worker_settings(
    settings: Settings,
    workers: int,
    index: int,
    udp_workers: Mapping[RouteId, int] | None = None,
) -> Settings:
    """What worker `index` runs: its connection share, and of each UDP route served by
    `udp_workers[route]` workers (default: all) its flow share; no metrics endpoint (the
    main process serves the forwarder's); one process (it is a worker)."""
    share = connection_share(settings.max_connections, workers, index)
    served = udp_workers or {}
    routes = tuple(
        replace(
            route,
            udp_max_flows=flow_share(
                route.udp_max_flows, served.get(rid, workers) or workers, index
            ),
        )
        if route.protocol is Transport.UDP
        else route
        for rid, route in zip(route_ids(settings.routes), settings.routes, strict=True)
    )
    return replace(settings, max_connections=share, metrics=None, workers=1, routes=routes)
