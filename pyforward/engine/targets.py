"""Where each route forwards now: a target source, and the identity of a route.

A route's targets come from a `TargetSource`. The configuration's own targets are the
`StaticTargets`; Kubernetes discovery (`pyforward.discovery.runtime.Discovery`, or one per
cluster grouped by `pyforward.discovery.clusters.Clusters`) is the other source, loaded only
when configured. The runtime starts the source before the listeners
open, attaches it to a `TargetSink` once they accept, asks it to fill in a reloaded
configuration, and stops it last. The engine knows no more of discovery than this.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NewType, Protocol

from pyforward.config.model import Route, Settings
from pyforward.relay.connection import ResolvedTarget

RouteId = NewType("RouteId", str)
"""What names a route while the forwarder runs, across reloads: its listen address, the one
thing a reload never changes about a route (another listen address is another route). Routes
that share one (port 0, asking the kernel for any port) are told apart by their order:
`127.0.0.1:0`, then `127.0.0.1:0#2`."""


def route_ids(routes: Sequence[Route]) -> list[RouteId]:
    """The identity of each of `routes`, in their order (see `RouteId`)."""
    seen: Counter[str] = Counter()
    ids = []
    for route in routes:
        listen = str(route.listen)
        seen[listen] += 1
        ids.append(RouteId(listen if seen[listen] == 1 else f"{listen}#{seen[listen]}"))
    return ids


class TargetSink(Protocol):
    """What a source tells while the forwarder runs."""

    def set_targets(self, route: RouteId, targets: Sequence[ResolvedTarget]) -> None:
        """New connections of `route` go to `targets` from now on."""

    def source_status(self, note: str | None) -> None:
        """What the status line says about the source (e.g. `degraded: ...`); None: nothing,
        all is well."""


class TargetSource(Protocol):
    """Says where each route forwards, at start, on reload, and whenever it changes."""

    name: str  # the key of its note in the status line, e.g. "discovery"

    async def start(self, settings: Settings) -> Settings:
        """`settings` with every route's targets filled in; before anything listens."""
        ...

    def attach(self, sink: TargetSink) -> None:
        """Hand changes to `sink` from now on, starting with the current state."""

    def fill(self, settings: Settings) -> Settings:
        """A reloaded configuration with this source's current targets filled in; its
        PyforwardError refuses the reload."""
        ...

    async def stop(self) -> None:
        """Stop following; after the forwarder has stopped."""


class StaticTargets:
    """The configuration's own targets: each route forwards where its settings say."""

    name = "targets"

    async def start(self, settings: Settings) -> Settings:
        return settings

    def attach(self, sink: TargetSink) -> None:
        pass  # nothing ever changes but by reload

    def fill(self, settings: Settings) -> Settings:
        return settings

    async def stop(self) -> None:
        pass
