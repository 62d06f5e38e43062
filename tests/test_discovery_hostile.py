"""Discovery against an API server that answers too much, too fast or too slowly:
thousands of nodes and a flood of their events while clients connect, a watch that
never ends a line, a list trickled one byte a second. Every address is in 127.0.0.0/8."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from pyforward.discovery.api import LIST_PAGE
from pyforward.discovery.model import MAX_TARGETS
from pyforward.discovery.watcher import WatchTiming
from tests.backends import Backend, reached
from tests.kubeapi import KubeApi, node, service
from tests.test_discovery_forwarding import FAST, eventually, forwarding, gateway

NODES = 5000
FLOOD_ROUNDS = 40  # each round changes 500 nodes at once: 20,000 events in all
CLIENT_WAIT_LIMIT = 2.0  # seconds a client may take through the listener during the flood


def other_nodes(count: int, *, ready: bool = True) -> list[dict[str, object]]:
    # 127.1.0.0/16: loopback, so nothing outside this host is ever addressed.
    return [
        node(f"node-{i:05d}", f"127.1.{(i + 1) >> 8 & 255}.{(i + 1) & 255}", ready=ready)
        for i in range(count)
    ]


@pytest.mark.asyncio
async def test_a_flood_of_node_events_neither_holds_up_clients_nor_lingers(
    kube: KubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = Backend("first"), Backend("second")
    await first.start()
    await second.start()
    kube.put_service(gateway(first.port))
    kube.put_nodes([node("here", "127.0.0.1"), *other_nodes(NODES)])
    caplog.set_level(logging.INFO, "pyforward")
    async with forwarding(kube, tmp_path) as running:
        targets = [t.label for t in running.forwarder.listeners[0].targets]
        assert len(targets) == MAX_TARGETS
        assert targets[0] == f"127.0.0.1:{first.port}"

        def flood() -> None:
            for round_ in range(FLOOD_ROUNDS):
                batch = other_nodes(NODES, ready=round_ % 2 == 1)
                start = (round_ * 500) % NODES
                kube.put_nodes(batch[start : start + 500])

        flooder = threading.Thread(target=flood)
        flooder.start()
        waits: list[float] = []
        while flooder.is_alive() or len(waits) < 20:
            started = time.monotonic()
            assert await reached(running.port) == "first"
            waits.append(time.monotonic() - started)
        flooder.join()
        assert max(waits) < CLIENT_WAIT_LIMIT, f"slowest client {max(waits):.2f} s"

        # Behind the flood, nothing queues up: a NodePort change still shows at once.
        kube.put_service(gateway(second.port))

        async def second_reached() -> bool:
            return await reached(running.port) == "second"

        await eventually(second_reached, timeout=10)

    # Counts, not node lists: the lines and the state file stay small.
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("pyforward")]
    assert max(len(line) for line in lines) < 2000
    change = next(line for line in lines if "event=target-change" in line)
    assert f"nodes={NODES + 1}" in change
    (saved,) = (tmp_path / "state").iterdir()
    assert saved.stat().st_size < 4096
    await first.close()
    await second.close()


@pytest.mark.asyncio
async def test_a_watch_that_never_ends_a_line_is_cut_and_reported(
    kube: KubeApi, tmp_path: Path
) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    kube.put_node(node("here", "127.0.0.1"))
    async with forwarding(kube, tmp_path) as running:
        kube.no_newline = True
        kube.cut_connections()

        async def reported() -> bool:
            return running.degraded and "without a newline" in running.statuses[-1].message

        # (The cut itself may be reported first.)
        await eventually(reported, timeout=20)
        assert "an event of more than 16 MiB without a newline" in running.statuses[-1].message
        assert await reached(running.port) == "gateway"  # the last targets stay in use

        kube.no_newline = False
        kube.cut_connections()

        async def recovered() -> bool:
            return not running.degraded

        await eventually(recovered, timeout=10)
    await backend.close()


@pytest.mark.asyncio
async def test_a_list_answered_one_byte_a_second_times_out(kube: KubeApi, tmp_path: Path) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    kube.put_node(node("here", "127.0.0.1"))
    timing = WatchTiming(
        watch_timeout=FAST.watch_timeout,
        backoff_initial=FAST.backoff_initial,
        backoff_max=FAST.backoff_max,
        list_deadline=1.5,
    )
    async with forwarding(kube, tmp_path, timing=timing) as running:
        # The watch's version is compacted away: the next step is a list, answered slowly.
        kube.list_byte_delay = 1.0
        kube.put_service(service("other", "default"))
        kube.compact()
        kube.cut_connections()

        async def reported() -> bool:
            return running.degraded and "too slow to list" in running.statuses[-1].message

        # (The cut itself may be reported first.)
        await eventually(reported, timeout=20)
        message = running.statuses[-1].message
        assert "no whole answer within 1.5 s" in message, message
        assert await reached(running.port) == "gateway"

        kube.list_byte_delay = 0.0

        async def recovered() -> bool:
            return not running.degraded

        await eventually(recovered, timeout=10)
    await backend.close()


@pytest.mark.asyncio
async def test_a_huge_node_list_is_read_a_page_at_a_time(kube: KubeApi, tmp_path: Path) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    kube.put_nodes([node("here", "127.0.0.1"), *other_nodes(2 * NODES)])
    async with forwarding(kube, tmp_path) as running:
        targets = [t.label for t in running.forwarder.listeners[0].targets]
        assert targets[0] == f"127.0.0.1:{backend.port}"
        assert len(targets) == MAX_TARGETS
        assert await reached(running.port) == "gateway"
    # Each answer is decoded at once, holding the event loop meanwhile: pages keep it short.
    pages = kube.lists("/api/v1/nodes")
    assert len(pages) == -(-(2 * NODES + 1) // LIST_PAGE)
    assert {page.query.get("limit") for page in pages} == {str(LIST_PAGE)}
    await backend.close()
