"""Routes chosen by TLS server name in the engine: discovered routes following their Service's
ports, and reloads that add and remove names on an address that stays open."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyforward.config.settings import build_settings
from pyforward.discovery.runtime import Discovery
from pyforward.discovery.watcher import WatchTiming
from pyforward.engine.runtime import serve
from pyforward.engine.server import Forwarder
from pyforward.protocols.proxy import build_v2
from tests.harness import TIMEOUT, Backend, fields, forwarder
from tests.hellos import real_hello
from tests.kubeapi import KubeApi, node, service
from tests.peers_edge import HOST, free_port


def tagged(tag: bytes) -> Callable[[socket.socket], None]:
    """A backend that answers its tag once the client's first bytes arrive."""

    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(tag)

    return handle


def ask(port: int, name: str) -> bytes:
    """Send a ClientHello naming `name`; what comes back before the close."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(real_hello(name))
        reply = b""
        try:
            while chunk := sock.recv(64):
                reply += chunk
        except ConnectionResetError:
            pass
    return reply


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {TIMEOUT} s")


@pytest.mark.asyncio
async def test_discovered_routes_by_name_follow_their_service_ports(tmp_path: Path) -> None:
    port = free_port()
    with (
        Backend(tagged(b"A")) as a,
        Backend(tagged(b"B")) as b,
        Backend(tagged(b"C")) as c,
    ):
        kube = KubeApi(tmp_path)
        kube.start()
        try:
            kube.put_service(service(ports=(("https", 443, a.port), ("http2", 80, b.port))))
            kube.put_node(node("here", HOST))
            listen = f"{HOST}:{port}"
            file_data: dict[str, Any] = {
                "discover": True,
                "kubeconfig": str(kube.kubeconfig),
                "state_dir": str(tmp_path / "state"),
                "discover_timeout": 10,
                "route": [
                    {"listen": listen, "sni": ["a.example"], "service_port": "https"},
                    {"listen": listen, "sni": ["*.b.example"], "service_port": "http2"},
                ],
            }
            settings = build_settings({}, {}, file_data)
            stop = asyncio.Event()
            ready: asyncio.Future[Forwarder] = asyncio.get_running_loop().create_future()
            timing = WatchTiming(watch_timeout=30, backoff_initial=0.05, backoff_max=0.3)
            task = asyncio.create_task(
                serve(
                    settings,
                    targets=Discovery(settings, timing=timing),
                    shutdown_trigger=stop.wait,
                    on_ready=ready.set_result,
                )
            )
            try:
                forwarder = await asyncio.wait_for(ready, 15)
                assert len(forwarder.listeners) == 1  # one socket for both routes
                assert await asyncio.to_thread(ask, port, "a.example") == b"A"
                assert await asyncio.to_thread(ask, port, "x.b.example") == b"B"
                assert await asyncio.to_thread(ask, port, "c.example") == b""  # no-route
                # The second route's NodePort changes: its name follows, the other stays.
                kube.put_service(service(ports=(("https", 443, a.port), ("http2", 80, c.port))))
                await until(lambda: ask(port, "x.b.example") == b"C", "following the NodePort")
                assert await asyncio.to_thread(ask, port, "a.example") == b"A"
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
        finally:
            kube.stop()


def routes_on(port: int, names: dict[str, int], default: int | None) -> dict[str, Any]:
    listen = f"{HOST}:{port}"
    tables: list[dict[str, Any]] = [
        {"listen": listen, "sni": [name], "target": f"{HOST}:{target}"}
        for name, target in names.items()
    ]
    if default is not None:
        tables.append({"listen": listen, "target": f"{HOST}:{default}"})
    return {"route": tables}


@pytest.mark.asyncio
async def test_a_reload_changes_the_names_of_an_address_that_stays_open() -> None:
    port = free_port()
    with Backend(tagged(b"A")) as a, Backend(tagged(b"B")) as b, Backend(tagged(b"D")) as d:
        settings = build_settings({}, {}, routes_on(port, {"a.example": a.port}, None))
        stop = asyncio.Event()
        ready: asyncio.Future[Forwarder] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve(settings, shutdown_trigger=stop.wait, on_ready=ready.set_result)
        )
        try:
            forwarder = await asyncio.wait_for(ready, 15)
            sock = forwarder.listeners[0].sock
            assert await asyncio.to_thread(ask, port, "a.example") == b"A"
            assert await asyncio.to_thread(ask, port, "b.example") == b""
            # A name and a default join the address: the same socket takes them.
            names = {"a.example": a.port, "b.example": b.port}
            await forwarder.reload(build_settings({}, {}, routes_on(port, names, d.port)))
            assert [listener.sock for listener in forwarder.listeners] == [sock]
            assert await asyncio.to_thread(ask, port, "b.example") == b"B"
            assert await asyncio.to_thread(ask, port, "z.example") == b"D"
            # Back to one plain route: no names read at all.
            await forwarder.reload(build_settings({}, {}, routes_on(port, {}, d.port)))
            assert [listener.sock for listener in forwarder.listeners] == [sock]
            assert forwarder.listeners[0].names is None
            assert await asyncio.to_thread(ask, port, "a.example") == b"D"
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


def test_behind_a_load_balancer_the_hello_follows_the_proxy_header(tmp_path: Path) -> None:
    port = free_port()
    with Backend(tagged(b"A")) as a, Backend(tagged(b"D")) as d:
        config = tmp_path / "lb.toml"
        config.write_text(
            'accept_proxy_protocol = true\nproxy_protocol_from = ["127.0.0.1"]\n'
            f'[[route]]\nlisten = "{HOST}:{port}"\nsni = "a.example"\ntarget = "{HOST}:{a.port}"\n'
            f'[[route]]\nlisten = "{HOST}:{port}"\ntarget = "{HOST}:{d.port}"\n'
        )
        header = build_v2(("203.0.113.7", 40000), ("192.0.2.1", 443))
        with forwarder("--config", str(config)) as fwd:
            for first in (header + real_hello("a.example"), header):
                with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
                    # The header and the hello in one segment, or the hello after it.
                    sock.sendall(first)
                    if first == header:
                        sock.sendall(real_hello("a.example"))
                    assert sock.recv(64) == b"A"
            closes = fwd.closes(2)
    assert [c["client"] for c in closes] == ["203.0.113.7:40000"] * 2
    assert [c["target"] for c in closes] == [f"{HOST}:{a.port}"] * 2


def test_sigusr1_counts_each_route_of_a_shared_address() -> None:
    port = free_port()
    with (
        Backend(tagged(b"jenkins")) as jenkins,
        Backend(tagged(b"apps")) as apps,
        Backend(tagged(b"default")) as default,
        forwarder(
            "--route", f"jenkins.test@{HOST}:{port}={jenkins.address}",
            "--route", f"*.apps.test@{HOST}:{port}={apps.address}",
            "--route", f"{HOST}:{port}={default.address}",
        ) as fwd,
    ):  # fmt: skip
        assert ask(port, "jenkins.test") == b"jenkins"
        assert ask(port, "jenkins.test") == b"jenkins"
        assert ask(port, "unknown.test") == b"default"
        fwd.closes(3)
        fwd.proc.send_signal(signal.SIGUSR1)
        lines = [fwd.wait_line("event=counts", start=0)]
        for _ in range(2):
            lines.append(fwd.wait_line("event=counts", start=fwd.lines.index(lines[-1]) + 1))
        counts = {fields(line)["target"]: fields(line) for line in lines}
        assert {target: row["served"] for target, row in counts.items()} == {
            jenkins.address: "2",
            apps.address: "0",
            default.address: "1",
        }
        assert {row["listen"] for row in counts.values()} == {f"{HOST}:{port}"}
        assert all(row["active"] == "0" for row in counts.values())
