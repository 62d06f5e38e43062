"""`run --discover` in process: the real kubernetes client against the test API server,
real sockets on loopback, targets followed through watch streams."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyforward.config.model import Settings
from pyforward.config.settings import build_settings
from pyforward.discovery.clusters import Clusters
from pyforward.discovery.hostinfo import is_local_address
from pyforward.discovery.model import HostIdentity
from pyforward.discovery.runtime import Discovery, DiscoveryStatus
from pyforward.discovery.watcher import WatchTiming
from pyforward.engine.runtime import serve
from pyforward.engine.server import Forwarder
from pyforward.systemd.status_text import format_status, parse_status
from tests.backends import Backend, Client, reached
from tests.kubeapi import KubeApi, node, service

SERVICES = "/api/v1/namespaces/istio-system/services"
NODES = "/api/v1/nodes"
FAST = WatchTiming(watch_timeout=30, backoff_initial=0.05, backoff_max=0.3)
# This host, for node preference: named like node "here", no local addresses.
HERE = HostIdentity(frozenset({"here"}), lambda address: False)


def gateway(https_node_port: int) -> dict[str, Any]:
    return service(ports=(("http2", 80, None), ("https", 443, https_node_port)))


@dataclass
class Running:
    forwarder: Forwarder
    statuses: list[DiscoveryStatus] = field(default_factory=list)
    status_changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        port: int = self.forwarder.listeners[0].sock.getsockname()[1]
        return port

    @property
    def degraded(self) -> bool:
        return bool(self.statuses) and self.statuses[-1].degraded

    @property
    def labels(self) -> list[str]:
        """The first route's targets, in the order they are tried."""
        return [target.label for target in self.forwarder.listeners[0].targets]

    async def status_where(
        self, check: Callable[[DiscoveryStatus], bool], timeout: float = 10.0
    ) -> DiscoveryStatus:
        """Wait for a status report that passes `check`, and return it."""
        async with asyncio.timeout(timeout):
            while not (self.statuses and check(self.statuses[-1])):
                self.status_changed.clear()
                await self.status_changed.wait()
        return self.statuses[-1]


DiscoverySource = Discovery | Clusters


@asynccontextmanager
async def forwarding(
    kube: KubeApi,
    tmp_path: Path,
    host: HostIdentity = HERE,
    *,
    timing: WatchTiming = FAST,
    **flags: Any,
) -> AsyncIterator[Running]:
    settings = build_settings(
        {
            "discover": True,
            "listen": "127.0.0.1:0",
            "kubeconfig": str(kube.kubeconfig),
            "state_dir": str(tmp_path / "state"),
            "discover_timeout": 10,
            "connect_timeout": 2,
        }
        | flags,
        {},
    )
    async with serving(settings, Discovery(settings, host=host, timing=timing)) as running:
        yield running


@asynccontextmanager
async def serving(settings: Settings, source: DiscoverySource) -> AsyncIterator[Running]:
    """`serve(settings)` with `source` as its targets, until the block ends; the Running
    collects the source's status reports."""
    stop = asyncio.Event()
    ready: asyncio.Future[Forwarder] = asyncio.get_running_loop().create_future()
    statuses: list[DiscoveryStatus] = []
    status_changed = asyncio.Event()

    def on_status(status: DiscoveryStatus) -> None:
        statuses.append(status)
        status_changed.set()

    source.status_listeners.append(on_status)
    task = asyncio.create_task(
        serve(settings, targets=source, shutdown_trigger=stop.wait, on_ready=ready.set_result)
    )
    done, _ = await asyncio.wait([ready, task], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    assert ready in done, "forwarder did not start"
    try:
        yield Running(ready.result(), statuses, status_changed)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def eventually(check: Any, timeout: float = 5.0) -> float:
    """Re-run the async `check` until it is true; return the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.asyncio
async def test_nodeport_change_moves_new_connections_only(kube: KubeApi, tmp_path: Path) -> None:
    old, new = Backend("old"), Backend("new")
    await old.start()
    await new.start()
    kube.put_service(gateway(old.port))
    kube.put_node(node("here", "127.0.0.1"))
    async with forwarding(kube, tmp_path) as running:
        before = await Client.connect(running.port)
        assert before.greeting == "old"

        changed_at = time.monotonic()
        kube.put_service(gateway(new.port))

        async def new_reached() -> bool:
            return await reached(running.port) == "new"

        await eventually(new_reached)
        assert time.monotonic() - changed_at < 1.0
        for _ in range(5):
            assert await reached(running.port) == "new"
        # The connection made before the change still talks to the old backend.
        assert await before.ask("still there?") == "old:still there?"
        await before.close()
    # One list per collection; the change came through a watch from a resourceVersion.
    assert len(kube.lists(SERVICES)) == 1
    assert len(kube.lists(NODES)) == 1
    watches = kube.watches(SERVICES)
    assert watches and all(w.query.get("resourceVersion") for w in watches)
    assert all(w.query.get("timeoutSeconds") for w in watches)
    await old.close()
    await new.close()


@pytest.mark.asyncio
async def test_api_gone_keeps_forwarding_and_recovers(
    kube: KubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = Backend("first"), Backend("second")
    await first.start()
    await second.start()
    kube.put_service(gateway(first.port))
    kube.put_node(node("here", "127.0.0.1"))
    caplog.set_level(logging.INFO, "pyforward")
    async with forwarding(kube, tmp_path) as running:
        assert await reached(running.port) == "first"
        kube.stop()

        async def is_degraded() -> bool:
            return running.degraded

        await eventually(is_degraded)
        assert "discovery-degraded" in caplog.text
        for _ in range(3):
            assert await reached(running.port) == "first"

        kube.start()  # same port, same store: the watch resumes from its resourceVersion

        async def recovered() -> bool:
            return not running.degraded

        await eventually(recovered)
        kube.put_service(gateway(second.port))

        async def second_reached() -> bool:
            return await reached(running.port) == "second"

        await eventually(second_reached)
        assert "discovery-ok" in caplog.text
    assert len(kube.lists(SERVICES)) == 1, "a reconnect resumes the watch, it does not list"
    await first.close()
    await second.close()


@pytest.mark.asyncio
async def test_gone_watch_relists(kube: KubeApi, tmp_path: Path) -> None:
    first, second = Backend("first"), Backend("second")
    await first.start()
    await second.start()
    kube.put_service(gateway(first.port))
    kube.put_node(node("here", "127.0.0.1"))
    async with forwarding(kube, tmp_path) as running:
        assert await reached(running.port) == "first"
        # History moves on and is compacted: the service watch's version is now too old.
        kube.put_service(service("other", "default"))
        kube.compact()
        kube.cut_connections()
        kube.wait_for(lambda: len(kube.lists(SERVICES)) == 2)
        kube.put_service(gateway(second.port))

        async def second_reached() -> bool:
            return await reached(running.port) == "second"

        await eventually(second_reached)
        assert not running.degraded
    await first.close()
    await second.close()


@pytest.mark.asyncio
async def test_preferred_node_refusing_fails_over(
    kube: KubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Backend("gateway", "127.0.0.1")
    await backend.start()
    kube.put_service(gateway(backend.port))
    # "here" is this host, so preferred; nothing listens on 127.0.0.2 at that port.
    kube.put_node(node("here", "127.0.0.2"))
    kube.put_node(node("other", "127.0.0.1"))
    caplog.set_level(logging.INFO, "pyforward")
    async with forwarding(kube, tmp_path) as running:
        targets = [t.label for t in running.forwarder.listeners[0].targets]
        assert targets == [f"127.0.0.2:{backend.port}", f"127.0.0.1:{backend.port}"]
        for _ in range(3):
            assert await reached(running.port) == "gateway"
    assert "event=failover" in caplog.text
    assert f"event=target-down target=127.0.0.2:{backend.port} reason=refused" in caplog.text
    # Marked down once: later connections went straight to the other node.
    assert caplog.text.count("event=failover") == 1
    await backend.close()


@pytest.mark.asyncio
async def test_two_static_targets_first_refusing(caplog: pytest.LogCaptureFixture) -> None:
    backend = Backend("static")
    await backend.start()
    settings = build_settings(
        {
            "listen": "127.0.0.1:0",
            "target": [f"127.0.0.2:{backend.port}", f"127.0.0.1:{backend.port}"],
            "connect_timeout": 2,
        },
        {},
    )
    caplog.set_level(logging.INFO, "pyforward")
    stop = asyncio.Event()
    ready: asyncio.Future[Forwarder] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(settings, shutdown_trigger=stop.wait, on_ready=ready.set_result)
    )
    forwarder = await asyncio.wait_for(ready, 10)
    port = forwarder.listeners[0].sock.getsockname()[1]
    for _ in range(3):
        assert await reached(port) == "static"
    stop.set()
    await task
    assert "event=failover" in caplog.text
    assert f"event=target-down target=127.0.0.2:{backend.port} reason=refused" in caplog.text
    assert caplog.text.count("event=failover") == 1
    await backend.close()


@pytest.mark.asyncio
async def test_state_file_serves_at_once_while_api_is_down(kube: KubeApi, tmp_path: Path) -> None:
    backend = Backend("saved")
    await backend.start()
    moved = Backend("moved")
    await moved.start()
    kube.put_service(gateway(backend.port))
    kube.put_node(node("here", "127.0.0.1"))
    # A first run discovers the target and saves it.
    async with forwarding(kube, tmp_path, listen="127.0.0.1:0") as running:
        assert await reached(running.port) == "saved"
    saved = list((tmp_path / "state").glob("discovery-*.json"))
    assert [p.name for p in saved] == ["discovery-istio-system-istio-ingressgateway.json"]

    # The API is down at the next start: the saved target is served at once, degraded.
    kube.stop()
    started = time.monotonic()
    async with forwarding(kube, tmp_path) as running:
        assert time.monotonic() - started < 5
        assert running.degraded
        assert "saved" in running.statuses[-1].message
        assert await reached(running.port) == "saved"
        # The API comes back with a changed Service: it is picked up.
        kube.put_service(gateway(moved.port))
        kube.start()

        async def moved_reached() -> bool:
            return await reached(running.port) == "moved"

        await eventually(moved_reached)
        assert not running.degraded
    await backend.close()
    await moved.close()


@pytest.mark.asyncio
async def test_node_leaving_and_joining_changes_the_targets(
    kube: KubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    kube.put_node(node("here", "127.0.0.2"))
    kube.put_node(node("other", "127.0.0.1"))
    caplog.set_level(logging.INFO, "pyforward")
    async with forwarding(kube, tmp_path) as running:
        listener = running.forwarder.listeners[0]

        def labels() -> list[str]:
            return [t.label for t in listener.targets]

        assert labels() == [f"127.0.0.2:{backend.port}", f"127.0.0.1:{backend.port}"]
        kube.put_node(node("here", "127.0.0.2", ready=False))

        async def only_other() -> bool:
            return labels() == [f"127.0.0.1:{backend.port}"]

        await eventually(only_other)
        assert "event=target-change" in caplog.text
        assert await reached(running.port) == "gateway"
        assert "event=failover" not in caplog.text, "the NotReady node is not tried"
        kube.put_node(node("here", "127.0.0.2"))

        async def both_again() -> bool:
            return labels() == [f"127.0.0.2:{backend.port}", f"127.0.0.1:{backend.port}"]

        await eventually(both_again)
    await backend.close()


# --- hostile answers from the cluster, hostile state files

STATE_FILE = "state/discovery-istio-system-istio-ingressgateway.json"


@pytest.mark.asyncio
async def test_a_node_address_that_is_not_an_ip_is_left_out_reported_and_never_saved(
    kube: KubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    kube.put_node(node("here", "127.0.0.1"))
    kube.put_node(node("evil", "evil.invalid"))
    caplog.set_level(logging.INFO, "pyforward")
    async with forwarding(kube, tmp_path) as running:
        assert running.labels == [f"127.0.0.1:{backend.port}"]
        assert await reached(running.port) == "gateway"
        status = await running.status_where(lambda status: "evil" in status.message)
        assert status.degraded
        assert status.message.startswith(
            'left out: node evil: InternalIP "evil.invalid" is not an IP address; following '
        )
        # What `pyforward status` reads back from the service's status line names the node.
        note = {"discovery": f"degraded: {status.message}"}
        shown = parse_status(format_status([("*:443", running.labels)], 0, note))
        assert shown is not None and "evil.invalid" in shown.notes["discovery"]
    assert "event=discovery-degraded" in caplog.text
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved["routes"][0]["targets"] == [f"127.0.0.1:{backend.port}"]
    await backend.close()


@pytest.mark.asyncio
async def test_a_route_left_with_no_usable_node_is_degraded_and_keeps_its_targets(
    kube: KubeApi, tmp_path: Path
) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    kube.put_node(node("here", "127.0.0.1"))
    async with forwarding(kube, tmp_path) as running:
        await running.status_where(lambda status: not status.degraded)
        kube.put_node(node("here", "evil.invalid"))
        status = await running.status_where(lambda status: status.degraded)
        assert status.message == (
            'no Ready node with an InternalIP: node here: InternalIP "evil.invalid" is not an '
            "IP address; forwarding to the last known targets"
        )
        assert running.labels == [f"127.0.0.1:{backend.port}"]
        assert await reached(running.port) == "gateway"
    await backend.close()


@pytest.mark.asyncio
async def test_an_unspecified_node_address_is_not_this_host_nor_a_target(
    kube: KubeApi, tmp_path: Path
) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    # Both bind on this host; 0.0.0.0 sorts first by name, and is no node's address.
    kube.put_node(node("a-zero", "0.0.0.0"))
    kube.put_node(node("b-here", "127.0.0.1"))
    host = HostIdentity(frozenset({"elsewhere"}), is_local_address)
    async with forwarding(kube, tmp_path, host=host) as running:
        assert running.labels == [f"127.0.0.1:{backend.port}"]
        status = await running.status_where(lambda status: "a-zero" in status.message)
        assert status.degraded
        assert 'InternalIP "0.0.0.0" is the unspecified address' in status.message
    await backend.close()


@pytest.mark.asyncio
async def test_a_node_port_that_is_no_port_is_degraded_not_port_one(
    kube: KubeApi, tmp_path: Path
) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    kube.put_node(node("here", "127.0.0.1"))
    async with forwarding(kube, tmp_path) as running:
        await running.status_where(lambda status: not status.degraded)
        broken = gateway(backend.port)
        broken["spec"]["ports"][1]["nodePort"] = True
        kube.put_service(broken)
        status = await running.status_where(lambda status: status.degraded)
        assert status.message.startswith(
            "Service istio-system/istio-ingressgateway: port https: nodePort is true, "
            "not a port number (an integer 1-65535)"
        )
        assert running.labels == [f"127.0.0.1:{backend.port}"]
        assert await reached(running.port) == "gateway"
    await backend.close()


@pytest.mark.asyncio
async def test_a_node_without_proper_metadata_does_not_stop_the_node_watch(
    kube: KubeApi, tmp_path: Path
) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    kube.put_node(node("here", "127.0.0.1"))
    async with forwarding(kube, tmp_path) as running:
        kube.put_node({"metadata": "not an object", "status": 5}, name="broken")
        status = await running.status_where(lambda status: status.degraded)
        assert status.message.startswith("left out: the API returned a Node without metadata.name;")
        kube.put_node(node("here", "127.0.0.2"))
        await running.status_where(lambda status: "127.0.0.2" in status.message)
        assert running.labels == [f"127.0.0.2:{backend.port}"]
    await backend.close()


def _state(**route: object) -> str:
    data: dict[str, Any] = {
        "version": 1,
        "service": "istio-system/istio-ingressgateway",
        "saved_at": 1700000000.0,
        "routes": [
            {"listen": "127.0.0.1:0", "service_port": "https", "node_port": 31443,
             "targets": ["127.0.0.1:31443"]} | route
        ],
    }  # fmt: skip
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (_state().replace('"routes": [', '"routes": 5, "x": ['), "routes: 5 is not a list"),
        (_state().replace("1700000000.0", "null"), "saved_at: null is not a number"),
        (_state(targets=[5]), "routes[0].target 5 is not text"),
        (_state().replace("31443,", "1e999,"), "routes[0].node_port: Infinity is not an integer"),
        (
            _state(targets=["evil.invalid:31443"]),
            'routes[0].target \\"evil.invalid:31443\\": is not an IP address',
        ),
    ],
)
@pytest.mark.asyncio
async def test_a_malformed_state_file_is_reported_once_and_ignored(
    kube: KubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, error: str
) -> None:
    backend = Backend("gateway")
    await backend.start()
    kube.put_service(gateway(backend.port))
    kube.put_node(node("here", "127.0.0.1"))
    path = tmp_path / STATE_FILE
    path.parent.mkdir()
    path.write_text(text)
    caplog.set_level(logging.INFO, "pyforward")
    async with forwarding(kube, tmp_path) as running:
        assert await reached(running.port) == "gateway"
    lines = [line for line in caplog.text.splitlines() if "event=state-unreadable" in line]
    assert len(lines) == 1, caplog.text
    assert f"file={path}" in lines[0]
    assert error in lines[0]
    # The next save replaced it with what the cluster said.
    saved = json.loads(path.read_text())
    assert saved["routes"][0]["targets"] == [f"127.0.0.1:{backend.port}"]
    await backend.close()
