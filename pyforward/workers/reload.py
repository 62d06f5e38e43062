"""Reload with workers: everything that can fail happens in the main process first (the
file, the target source's fill, every target name, the new ports); only a configuration
that passed is sent to the workers, each of which applies it as one process does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from pyforward.config.model import Settings
from pyforward.engine.route_listeners import resolve_target
from pyforward.engine.targets import RouteId, TargetSource, route_ids
from pyforward.workers import messages as m
from pyforward.workers.listeners import Listeners, bind_added, sockets_for, udp_workers
from pyforward.workers.plan import worker_settings
from pyforward.workers.process import WorkerProcess

REPLY_TIMEOUT = 30.0  # seconds a worker gets to apply a reload


async def checked(
    loaded: Settings, source: TargetSource, listeners: Listeners, count: int
) -> tuple[Settings, Listeners]:
    """`loaded` with the source's targets, and the sockets of its new routes; the
    PyforwardError of whatever fails (nothing is left open then)."""
    settings = source.fill(loaded)
    loop = asyncio.get_running_loop()
    for route in settings.routes:
        for target in route.targets:
            await resolve_target(loop, target)  # a name that does not resolve fails here
    added = {rid for rid in route_ids(settings.routes) if rid not in listeners}
    return settings, bind_added(settings, added, count)


async def send(
    workers: Iterable[WorkerProcess],
    settings: Settings,
    count: int,
    listeners: Listeners,
    opened: set[RouteId],
) -> list[str]:
    """Send `settings` (and the new routes' sockets) to every worker; the errors they
    answer. A worker that dies meanwhile is skipped: its restart starts with `settings`."""
    loop = asyncio.get_running_loop()
    waits = []
    for worker in workers:
        counts, socks = sockets_for(listeners, settings, worker.index, opened)
        share = worker_settings(settings, count, worker.index, udp_workers(listeners))
        worker.reloaded = loop.create_future()
        worker.channel.send(m.Reload(share, counts), socks)
        waits.append(worker.reloaded)
    errors = []
    for wait in waits:
        try:
            error = await asyncio.wait_for(wait, REPLY_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            continue
        if error is not None:
            errors.append(error)
    return errors
