"""Discovered routes in several clusters: one `Discovery` (API client, watches, stores,
state file) per cluster (`followed.Cluster`: a route's kubeconfig and node_ip), grouped
into one target source.

Each cluster's routes are resolved from that cluster only. The group is degraded while any
cluster is, and its status text names each cluster (its kubeconfig path), the degraded
ones first: a cluster whose API goes away degrades its own routes, which keep their last
targets, and no other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from pyforward.config.model import Settings
from pyforward.discovery.followed import Cluster, by_cluster, naming_cluster
from pyforward.discovery.model import HostIdentity
from pyforward.discovery.runtime import Discovery, DiscoveryStatus
from pyforward.discovery.watcher import WatchTiming
from pyforward.engine.targets import RouteId, TargetSink, TargetSource
from pyforward.errors import PyforwardError
from pyforward.relay.connection import ResolvedTarget


def clusters_of(settings: Settings) -> list[Cluster]:
    """The clusters the discovered routes follow, in route order."""
    return list(by_cluster(settings.routes))


def discovery_source(
    settings: Settings,
    *,
    host: HostIdentity | None = None,
    timing: WatchTiming | None = None,
    env: dict[str, str] | None = None,
) -> TargetSource:
    """The target source of `run --discover`: one `Discovery`, or a group of one per
    cluster when the routes follow several."""
    if len(clusters_of(settings)) <= 1:
        return Discovery(settings, host=host, timing=timing, env=env)
    return Clusters(settings, host=host, timing=timing, env=env)


class _MemberSink:
    """What one cluster's Discovery tells: targets straight through, status to the group."""

    def __init__(self, group: Clusters, sink: TargetSink) -> None:
        self._group = group
        self._sink = sink

    def set_targets(self, route: RouteId, targets: Sequence[ResolvedTarget]) -> None:
        self._sink.set_targets(route, targets)

    def source_status(self, note: str | None) -> None:
        self._sink.source_status(self._group.note())


class Clusters:
    """One `Discovery` per cluster the routes follow, as one target source."""

    name = "discovery"  # its note's key in the status line, as a single Discovery's

    def __init__(
        self,
        settings: Settings,
        *,
        host: HostIdentity | None = None,
        timing: WatchTiming | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.members = [
            Discovery(settings, host=host, timing=timing, env=env, cluster=c, label=c.label)
            for c in clusters_of(settings)
        ]
        self.status = DiscoveryStatus(True, "starting")
        self.status_listeners: list[Callable[[DiscoveryStatus], None]] = []
        for member in self.members:
            member.status_listeners.append(self._member_changed)

    @property
    def degraded(self) -> bool:
        """True while any cluster is degraded."""
        return any(member.degraded for member in self.members)

    @property
    def degraded_by_cluster(self) -> dict[str, bool]:
        """Each cluster's `degraded`, by its name (what the metrics show), in route order."""
        return {member.cluster_name: member.degraded for member in self.members}

    def _member_changed(self, _status: DiscoveryStatus) -> None:
        ordered = sorted(self.members, key=lambda member: not member.degraded)
        text = "; ".join(f"{member.label}: {member.status.message}" for member in ordered)
        status = DiscoveryStatus(self.degraded, text)
        if status == self.status:
            return
        self.status = status
        for listener in self.status_listeners:
            listener(status)

    def note(self) -> str | None:
        """What the service's status line says: only that (and where) it is degraded."""
        return f"degraded: {self.status.message}" if self.status.degraded else None

    async def start(self, settings: Settings) -> Settings:
        """Every cluster connects and finds its first targets at once; the first that
        fails ends the start, naming its cluster. A kubeconfig that cannot be found is
        refused first, before any cluster is asked."""
        for member in self.members:
            member.locate()
        tasks = [asyncio.ensure_future(member.begin()) for member in self.members]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for member, task in zip(self.members, tasks, strict=True):
            problem = None if task.cancelled() else task.exception()
            if isinstance(problem, PyforwardError):
                raise naming_cluster(problem, member.cluster) from None
            if problem is not None:
                raise problem
        for member in self.members:
            settings = member.filled(settings)
        return settings

    def attach(self, sink: TargetSink) -> None:
        for member in self.members:
            member.attach(_MemberSink(self, sink))

    def fill(self, settings: Settings) -> Settings:
        """A reloaded configuration with every cluster's current targets; a change of
        what is discovered (of any cluster's routes) is refused."""
        self.members[0].check_reload(settings)  # every member would say the same
        for member in self.members:
            settings = member.fill_targets(settings)
        return settings

    async def stop(self) -> None:
        await asyncio.gather(*(member.stop() for member in self.members))
