"""Wires the metrics endpoint to a runtime: its forwarder, and discovery's state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyforward.config.addresses import Address
from pyforward.obs.exporter import MetricsServer
from pyforward.obs.metrics import DiscoveryState, discovery_state, make_registry

if TYPE_CHECKING:
    from pyforward.engine.runtime import Runtime


async def start_metrics(address: Address, runtime: Runtime) -> MetricsServer:
    """Serve `runtime`'s metrics on `address`; its StartupError is a listen error like any."""

    def discovery() -> DiscoveryState | None:
        return discovery_state(runtime.source, runtime.targets_changed_at)

    server = MetricsServer(
        address, make_registry(lambda: runtime.forwarder, discovery, lambda: runtime.datagram)
    )
    await server.start()
    return server
