"""Discovery's metrics, scraped from `run --discover --metrics` in process against the test
Kubernetes API server: degraded while the API is gone, the change time when a NodePort moves."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import pytest

from tests.backends import Backend, reached
from tests.kubeapi import KubeApi, node
from tests.test_discovery_forwarding import eventually, forwarding, gateway
from tests.test_metrics import samples, scrape

DEGRADED = 'pyforward_discovery_degraded{cluster="default"}'  # one cluster: the top-level
CHANGED = "pyforward_discovery_last_change_timestamp_seconds"


@pytest.mark.asyncio
async def test_degraded_follows_the_api_and_the_change_time_follows_the_node_port(
    kube: KubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = Backend("old"), Backend("new")
    await old.start()
    await new.start()
    kube.put_service(gateway(old.port))
    kube.put_node(node("here", "127.0.0.1"))
    caplog.set_level(logging.INFO, "pyforward")
    started = time.time()
    async with forwarding(kube, tmp_path, metrics="127.0.0.1:0") as running:
        found = re.search(r"event=metrics address=127\.0\.0\.1:(\d+)", caplog.text)
        assert found is not None
        port = int(found.group(1))

        async def read() -> dict[str, float]:
            # In a thread: the endpoint answers from this test's own event loop.
            return samples(await asyncio.to_thread(scrape, port))

        first = await read()
        assert first[DEGRADED] == 0
        assert started <= first[CHANGED] <= time.time()
        assert await reached(running.port) == "old"

        changed_at = time.time()
        kube.put_service(gateway(new.port))

        async def moved() -> bool:
            return await reached(running.port) == "new"

        await eventually(moved)
        after_change = await read()
        assert changed_at <= after_change[CHANGED] <= time.time()

        kube.stop()

        async def degraded() -> bool:
            return (await read())[DEGRADED] == 1

        await eventually(degraded)
        assert await reached(running.port) == "new"  # still forwarding meanwhile

        kube.start()

        async def recovered() -> bool:
            return (await read())[DEGRADED] == 0

        await eventually(recovered)
        # The API coming back changed no target: the change time stays where it was.
        assert (await read())[CHANGED] == after_change[CHANGED]
    await old.close()
    await new.close()
