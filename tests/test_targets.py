"""Target sources: the static one, and route identities that survive a reload."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pyforward.config.model import Settings
from pyforward.config.settings import build_settings
from pyforward.engine.runtime import serve
from pyforward.engine.server import Forwarder
from pyforward.engine.targets import RouteId, StaticTargets, TargetSink, TargetSource, route_ids
from pyforward.relay.connection import ResolvedTarget


def test_a_route_is_named_by_its_listen_address() -> None:
    one = build_settings({"route": ["127.0.0.1:8443=10.0.0.5:1"]}, {}).routes[0]
    other = build_settings(
        {"route": ["127.0.0.1:8443=10.0.0.6:2"], "connect_timeout": 3}, {}
    ).routes[0]
    assert one != other  # new targets and settings, as after a reload
    assert route_ids([one]) == route_ids([other]) == [RouteId("127.0.0.1:8443")]


def test_routes_on_the_same_address_are_told_apart_by_their_order() -> None:
    routes = build_settings(
        {"route": ["127.0.0.1:0=10.0.0.5:1", "127.0.0.1:0=10.0.0.6:1", "127.0.0.1:9=10.0.0.7:1"]},
        {},
    ).routes
    assert route_ids(routes) == ["127.0.0.1:0", "127.0.0.1:0#2", "127.0.0.1:9"]


@pytest.mark.asyncio
async def test_static_targets_are_the_configurations_own() -> None:
    settings = build_settings({"listen": "127.0.0.1:0", "target": ["10.0.0.5:1"]}, {})
    source = StaticTargets()
    assert await source.start(settings) is settings
    assert source.fill(settings) is settings
    await source.stop()


class Moving:
    """A target source that moves its route to another target once attached."""

    name = "moving"

    def __init__(self, target: ResolvedTarget) -> None:
        self.target = target
        self.sink: TargetSink | None = None

    async def start(self, settings: Settings) -> Settings:
        return settings

    def attach(self, sink: TargetSink) -> None:
        self.sink = sink
        sink.source_status("degraded: testing")

    def fill(self, settings: Settings) -> Settings:
        return settings

    async def stop(self) -> None:
        pass

    def move(self, route: RouteId) -> None:
        assert self.sink is not None
        targets: Sequence[ResolvedTarget] = [self.target]
        self.sink.set_targets(route, targets)


@pytest.mark.asyncio
async def test_a_source_moves_a_route_by_its_identity() -> None:
    settings = build_settings({"route": ["127.0.0.1:0=127.0.0.1:9"]}, {})
    moved = ResolvedTarget(2, ("127.0.0.1", 10), "127.0.0.1:10")
    source = Moving(moved)
    check: TargetSource = source  # it is one, as mypy sees
    assert check is source
    stop = asyncio.Event()
    ready: asyncio.Future[Forwarder] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(settings, targets=source, shutdown_trigger=stop.wait, on_ready=ready.set_result)
    )
    forwarder = await asyncio.wait_for(ready, 10)
    listener = forwarder.listeners[0]
    assert [t.label for t in listener.targets] == ["127.0.0.1:9"]
    source.move(listener.route_id)
    assert [t.label for t in listener.targets] == ["127.0.0.1:10"]
    source.move(RouteId("127.0.0.1:1"))  # no such route: nothing changes
    assert [t.label for t in listener.targets] == ["127.0.0.1:10"]
    stop.set()
    await asyncio.wait_for(task, 10)
