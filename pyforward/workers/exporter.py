"""The metrics endpoint of a forwarder with workers: their families added up (`metrics.py`),
this process's own, and discovery's state, refreshed from every worker at each scrape."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from pyforward.config.addresses import Address
from pyforward.obs.exporter import MetricsServer
from pyforward.obs.metrics import DiscoveryState, ForwarderCollector, discovery_state
from pyforward.workers.messages import SnapshotAsk
from pyforward.workers.metrics import merge

if TYPE_CHECKING:
    from pyforward.workers.supervisor import Supervisor

SNAPSHOT_TIMEOUT = 2.0  # seconds a scrape waits for a worker's counts


class _WorkersCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.own = ProcessCollector(registry=None)

    def collect(self) -> Iterable[Metric]:
        supervisor = self.supervisor
        snapshots = [worker.snapshot for worker in supervisor.workers.values()]
        snapshots += supervisor.retired
        snapshots.append(list(self.own.collect()))
        yield from merge(snapshots)


async def start_worker_metrics(address: Address, supervisor: Supervisor) -> MetricsServer:
    """Serve the whole forwarder's metrics on `address`."""

    def discovery() -> DiscoveryState | None:
        # Discovery runs in this process alone: its families are this process's, not a
        # sum of the workers' (who serve none).
        return discovery_state(supervisor.source, supervisor.targets_changed_at)

    serials = itertools.count(1)

    async def refresh() -> None:
        """Ask every worker for its counts now; a worker slower than SNAPSHOT_TIMEOUT is
        shown with its last ones."""
        loop = asyncio.get_running_loop()
        serial = next(serials)
        waits = []
        for worker in supervisor.workers.values():
            future: asyncio.Future[None] = loop.create_future()
            worker.replies[serial] = future
            if worker.channel.send(SnapshotAsk(serial)):
                waits.append(future)
        if waits:
            await asyncio.wait(waits, timeout=SNAPSHOT_TIMEOUT)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkersCollector(supervisor))
    registry.register(ForwarderCollector(lambda: None, discovery))
    server = MetricsServer(address, registry, refresh=refresh)
    await server.start()
    return server
