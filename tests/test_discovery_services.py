"""Discovered routes following different Services of one cluster: routes sharing one
address by TLS server name reach each its own Service's NodePort, a change of one Service
moves only its routes, the state file keeps each route's Service, `discover` and `check`
name it, and a reload that changes it is refused. The real kubernetes client against the
test API server over HTTPS; every node address is loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from pyforward.cli import service as service_cli
from pyforward.config.model import Settings
from pyforward.config.settings import build_settings, parse_config_text
from pyforward.discovery import state
from pyforward.discovery.errors import DiscoveryError
from pyforward.discovery.options import ServiceRef
from pyforward.discovery.runtime import Discovery
from pyforward.errors import ConfigError
from pyforward.systemd import install
from pyforward.systemd import procnet as ports
from pyforward.systemd.status import StatusReport, check_route
from tests.backends import Starter
from tests.hellos import real_hello
from tests.kubeapi import KubeApi, node, service
from tests.peers_edge import free_port
from tests.test_discovery_cli import Pyforward, pyforward  # noqa: F401  (fixture)
from tests.test_discovery_forwarding import FAST, HERE, Running, serving
from tests.test_service import IN_OPT, run_cli

ISTIO = ServiceRef("istio-system", "istio-ingressgateway")
TRAEFIK = ServiceRef("kube-system", "traefik")
ISTIO_SERVICES = "/api/v1/namespaces/istio-system/services"
TRAEFIK_SERVICES = "/api/v1/namespaces/kube-system/services"
DEV = "app.dev.local.me"  # matches the istio route's *.dev.local.me
OTHER = "other.example"  # no route names it: the address's default, Traefik


def istio(https: int) -> dict[str, Any]:
    return service(ports=(("http2", 80, None), ("https", 443, https)))


def traefik(websecure: int) -> dict[str, Any]:
    return service(
        "traefik", "kube-system", ports=(("web", 80, None), ("websecure", 443, websecure))
    )


def config(kube: KubeApi, tmp_path: Path, port: int, *, extra: str = "", top: str = "") -> str:
    """Two discovered routes on 127.0.0.1:`port`: *.dev.local.me to Istio, the rest (the
    default) to Traefik; `top`: top-level lines, `extra`: lines of the Traefik route."""
    return (
        f'discover = true\nkubeconfig = "{kube.kubeconfig}"\n'
        f'state_dir = "{tmp_path / "state"}"\ndiscover_timeout = 10\nconnect_timeout = 2\n{top}'
        f'[[route]]\nlisten = "127.0.0.1:{port}"\nsni = ["*.dev.local.me"]\n'
        f'service = "istio-system/istio-ingressgateway"\nservice_port = "https"\n'
        f'[[route]]\nlisten = "127.0.0.1:{port}"\nservice = "kube-system/traefik"\n'
        f'service_port = "websecure"\n{extra}'
    )


def settings_of(text: str) -> Settings:
    return build_settings({}, {}, parse_config_text(text, "test.toml"), "test.toml")


@asynccontextmanager
async def forwarding(text: str) -> AsyncIterator[tuple[Running, Discovery]]:
    settings = settings_of(text)
    source = Discovery(settings, host=HERE, timing=FAST)
    async with serving(settings, source) as running:
        yield running, source


async def answer(port: int, server_name: str | None) -> str:
    """Send a real ClientHello for `server_name`: the name of the backend that answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(real_hello(server_name))
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    except ConnectionError:
        return ""
    finally:
        writer.close()


def lines_of(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [line for line in caplog.text.splitlines() if f"event={event} " in line]


@pytest.mark.asyncio
async def test_routes_sharing_an_address_follow_each_its_service(
    kube: KubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture, started: Starter
) -> None:
    gateway, ingress, moved = await started("istio", "traefik", "istio-moved")
    kube.put_node(node("here", "127.0.0.1"))
    kube.put_service(istio(gateway.port))
    kube.put_service(traefik(ingress.port))
    port = free_port()
    caplog.set_level(logging.INFO, "pyforward")
    async with forwarding(config(kube, tmp_path, port)) as (running, _):
        assert await answer(port, DEV) == "istio"
        assert await answer(port, OTHER) == "traefik"
        assert await answer(port, None) == "traefik"
        status = running.statuses[-1]
        assert not status.degraded
        assert status.message == (
            f"following {ISTIO}: 127.0.0.1:{port} (sni *.dev.local.me) -> 127.0.0.1:"
            f"{gateway.port}; {TRAEFIK}: 127.0.0.1:{port} -> 127.0.0.1:{ingress.port}"
        )
        # One list and watch per namespace, the Nodes once.
        for collection in (ISTIO_SERVICES, TRAEFIK_SERVICES, "/api/v1/nodes"):
            assert len(kube.lists(collection)) == 1, collection
            kube.wait_for(lambda c=collection: bool(kube.watches(c)))
        firsts = lines_of(caplog, "target")
        assert len(firsts) == 2
        # One line per Service, in the order its namespace's list came in.
        (of_istio,) = [line for line in firsts if f"service={ISTIO}" in line]
        (of_traefik,) = [line for line in firsts if f"service={TRAEFIK}" in line]
        assert "sni=*.dev.local.me" in of_istio and f"node_port={gateway.port}" in of_istio
        assert "sni=" not in of_traefik and f"node_port={ingress.port}" in of_traefik

        # Istio's NodePort moves: its route follows, Traefik's stays.
        kube.put_service(istio(moved.port))
        await running.status_where(lambda s: f"127.0.0.1:{moved.port}" in s.message)
        assert await answer(port, DEV) == "istio-moved"
        assert await answer(port, OTHER) == "traefik"
        changes = lines_of(caplog, "target-change")
        assert len(changes) == 1, changes
        assert f"service={ISTIO}" in changes[0]
        assert f"was=127.0.0.1:{gateway.port}" in changes[0]

        # Traefik disappears: its route is degraded and keeps its target; Istio's is fine.
        kube.delete_service("kube-system", "traefik")
        degraded = await running.status_where(lambda s: s.degraded)
        assert degraded.message.startswith(f"Service {TRAEFIK} not found")
        assert "forwarding to the last known targets" in degraded.message
        assert await answer(port, OTHER) == "traefik"
        assert await answer(port, DEV) == "istio-moved"
        kube.put_service(traefik(ingress.port))
        await running.status_where(lambda s: not s.degraded)

    # Both routes are saved with their Service, in the file named after the top-level one.
    path = state.state_path(tmp_path / "state", ISTIO)
    saved = state.load(path)
    assert saved is not None and saved.service == ISTIO
    assert {(r.service, r.service_port, r.node_port) for r in saved.routes} == {
        (ISTIO, "https", moved.port),
        (TRAEFIK, "websecure", ingress.port),
    }
    assert json.loads(path.read_text())["version"] == 2
    for backend in (gateway, ingress, moved):
        await backend.close()


@pytest.mark.asyncio
async def test_reload_keeps_targets_and_refuses_a_changed_service(
    kube: KubeApi, tmp_path: Path, started: Starter
) -> None:
    gateway, ingress = await started("istio", "traefik")
    kube.put_node(node("here", "127.0.0.1"))
    kube.put_service(istio(gateway.port))
    kube.put_service(traefik(ingress.port))
    kube.put_service(service("other", "kube-system", ports=(("websecure", 443, 30999),)))
    port = free_port()
    async with forwarding(config(kube, tmp_path, port)) as (_, discovery):
        # A reload of something else: each route keeps its own targets.
        again = discovery.fill(
            settings_of(config(kube, tmp_path, port, extra="idle_timeout = 9\n"))
        )
        assert [str(r.targets[0]) for r in again.routes] == [
            f"127.0.0.1:{gateway.port}",
            f"127.0.0.1:{ingress.port}",
        ]
        assert again.routes[1].idle_timeout == 9
        changed = config(kube, tmp_path, port).replace("kube-system/traefik", "kube-system/other")
        with pytest.raises(ConfigError, match=r"kubeconfig, node_ip\) needs a restart"):
            discovery.fill(settings_of(changed))
        # Naming the top-level Service where a route named it is no change at all.
        same = config(kube, tmp_path, port).replace(
            'service = "istio-system/istio-ingressgateway"\n', ""
        )
        assert discovery.fill(settings_of(same)).routes[0].targets == again.routes[0].targets
    for backend in (gateway, ingress):
        await backend.close()


def _saved(port: int, istio_port: int, traefik_port: int, *, per_route: bool) -> str:
    """A state file as an earlier run wrote it; without `per_route`, version 1's shape."""
    routes: list[dict[str, Any]] = [
        {"listen": f"127.0.0.1:{port}", "service": str(ISTIO), "service_port": "https",
         "node_port": istio_port, "targets": [f"127.0.0.1:{istio_port}"]},
        {"listen": f"127.0.0.1:{port}", "service": str(TRAEFIK), "service_port": "websecure",
         "node_port": traefik_port, "targets": [f"127.0.0.1:{traefik_port}"]},
    ]  # fmt: skip
    if not per_route:
        for route in routes:
            del route["service"]
    data = {"version": 2 if per_route else 1, "service": str(ISTIO), "saved_at": 1700000000.0}
    return json.dumps(data | {"routes": routes})


@pytest.mark.asyncio
async def test_state_file_with_two_services_serves_while_the_api_is_down(
    kube: KubeApi, tmp_path: Path, started: Starter
) -> None:
    gateway, ingress = await started("istio", "traefik")
    port = free_port()
    path = state.state_path(tmp_path / "state", ISTIO)
    path.parent.mkdir()
    path.write_text(_saved(port, gateway.port, ingress.port, per_route=True))
    kube.stop()
    began = time.monotonic()
    async with forwarding(config(kube, tmp_path, port)) as (running, _):
        assert time.monotonic() - began < 5
        assert running.degraded and "saved" in running.statuses[-1].message
        assert await answer(port, DEV) == "istio"
        assert await answer(port, OTHER) == "traefik"
    for backend in (gateway, ingress):
        await backend.close()


@pytest.mark.asyncio
async def test_an_old_state_file_has_the_top_level_service_for_each_route(
    kube: KubeApi, tmp_path: Path, started: Starter
) -> None:
    (gateway,) = await started("istio")
    port = free_port()
    path = state.state_path(tmp_path / "state", ISTIO)
    path.parent.mkdir()
    # Version 1, two routes of the one Service it names: both are served from it.
    old = json.loads(_saved(port, gateway.port, gateway.port, per_route=False))
    old["routes"][1]["service_port"] = "http2"
    path.write_text(json.dumps(old))
    kube.stop()
    text = (
        f'discover = true\nkubeconfig = "{kube.kubeconfig}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[route]]\nlisten = "127.0.0.1:{port}"\nsni = ["*.dev.local.me"]\n'
        f'service_port = "https"\n[[route]]\nlisten = "127.0.0.1:{port}"\nservice_port = "http2"\n'
    )
    async with forwarding(text) as (running, _):
        assert "saved" in running.statuses[-1].message
        assert await answer(port, DEV) == "istio"
        assert await answer(port, OTHER) == "istio"

    # The same file where the config's second route follows Traefik: not used for it, so
    # the start waits for the API (here: gives up, the API is down).
    path.write_text(_saved(port, gateway.port, gateway.port, per_route=False))
    short = config(kube, tmp_path, port).replace("discover_timeout = 10", "discover_timeout = 1")
    with pytest.raises(DiscoveryError, match="still so after 1 s"):
        async with forwarding(short):
            pass
    await gateway.close()


def test_a_bad_route_service_is_one_line_naming_route_and_key(tmp_path: Path) -> None:
    kube = KubeApi(tmp_path)  # not started: the value is refused before anything connects
    bad = config(kube, tmp_path, 8443).replace("kube-system/traefik", "kube-system/Traefik")
    with pytest.raises(ConfigError) as refused:
        settings_of(bad)
    assert str(refused.value) == (
        "test.toml: route 2: service: Service name 'Traefik' in 'kube-system/Traefik' is not a "
        "valid Kubernetes name (lowercase letters, digits and '-', at most 63)"
    )
    with pytest.raises(ConfigError, match=r"^test.toml: route 1: service: expected NAMESPACE/NAME"):
        settings_of(
            config(kube, tmp_path, 8443).replace('"istio-system/istio-ingressgateway"', "7")
        )


def test_routes_without_a_service_follow_the_top_level_one_or_the_flag(tmp_path: Path) -> None:
    kube = KubeApi(tmp_path)
    text = config(kube, tmp_path, 8443, top='service = "kube-system/traefik"\n').replace(
        'service = "istio-system/istio-ingressgateway"\n', ""
    )
    data = parse_config_text(text, "test.toml")
    assert [r.service for r in build_settings({}, {}, data).routes] == [TRAEFIK, TRAEFIK]
    # A flag (or variable) of a per-route key sets every route's, as for service_port.
    flagged = build_settings({"service": "a/b"}, {}, data)
    assert [str(r.service) for r in flagged.routes] == ["a/b", "a/b"]
    # A static route beside them follows no Service.
    static = text + '[[route]]\nlisten = "127.0.0.1:9000"\ntarget = "127.0.0.1:1"\n'
    assert build_settings({}, {}, parse_config_text(static, "t")).routes[2].service is None


def test_discover_and_check_name_each_routes_service(
    kube: KubeApi,
    tmp_path: Path,
    pyforward: Pyforward,  # noqa: F811
) -> None:
    port = free_port()
    with (
        socket.create_server(("127.0.0.1", 0)) as gateway,
        socket.create_server(("127.0.0.1", 0)) as ingress,
    ):
        istio_port, traefik_port = gateway.getsockname()[1], ingress.getsockname()[1]
        kube.put_node(node("node-a", "127.0.0.1"))
        kube.put_service(istio(istio_port))
        kube.put_service(traefik(traefik_port))
        path = tmp_path / "pyforward.toml"
        path.write_text(config(kube, tmp_path, port))
        result = pyforward(["discover", "--config", str(path), "--json"], tmp_path)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert [(r["sni"], r["service"], r["node_port"]) for r in data["routes"]] == [
            (["*.dev.local.me"], str(ISTIO), istio_port),
            ([], str(TRAEFIK), traefik_port),
        ]
        assert sorted(data["services"]) == [str(ISTIO), str(TRAEFIK)]
        assert data["services"][str(TRAEFIK)]["ports"][1]["nodePort"] == traefik_port
        text = pyforward(["discover", "--config", str(path)], tmp_path).stdout
        assert f"Service {ISTIO} (type LoadBalancer)" in text
        assert f"Service {TRAEFIK} (type LoadBalancer)" in text
        assert (
            f"forward: 127.0.0.1:{port} -> 127.0.0.1:{traefik_port} (Service kube-system/traefik "
            f"port websecure (443/TCP), nodePort {traefik_port})"
        ) in text
        assert f"forward: 127.0.0.1:{port} (sni *.dev.local.me) -> 127.0.0.1:{istio_port}" in text
        checked = pyforward(["check", "--config", str(path)], tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        said = checked.stdout + checked.stderr
        assert f"127.0.0.1:{port} -> 127.0.0.1:{traefik_port} ({TRAEFIK})" in said
        assert f"127.0.0.1:{port} (sni *.dev.local.me) -> 127.0.0.1:{istio_port} ({ISTIO})" in said
        # A missing Service is named, and the other still listed.
        kube.delete_service("kube-system", "traefik")
        missing = pyforward(["discover", "--config", str(path)], tmp_path)
        assert missing.returncode != 0
        assert f"Service {TRAEFIK}: not found" in missing.stdout
        assert f"Service {ISTIO} (type LoadBalancer)" in missing.stdout


def test_install_carries_each_routes_service_into_its_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(service_cli, "find_installation", lambda: IN_OPT)
    monkeypatch.setattr(install, "ports_taken", lambda plan: [])
    kube = KubeApi(tmp_path)
    kube.write_kubeconfig(kube.kubeconfig)
    given = tmp_path / "pyforward.toml"
    given.write_text(config(kube, tmp_path, 8443))

    def written(*flags: str) -> dict[str, Any]:
        code, out, err = run_cli(["install", "--dry-run", "--config", str(given), *flags], capsys)
        assert code == 0, err
        data: dict[str, Any] = tomllib.loads(out.split("<==\n", 1)[1].split("\n==> ", 1)[0])
        return data

    data = written()
    assert [(r.get("sni"), r["service"], r["service_port"]) for r in data["route"]] == [
        (["*.dev.local.me"], str(ISTIO), "https"),
        (None, str(TRAEFIK), "websecure"),
    ]
    # --service sets every route's: the file written says so once, at the top.
    data = written("--service", "kube-system/other")
    assert data["service"] == "kube-system/other"
    assert all("service" not in route for route in data["route"])


def test_service_status_names_the_service_of_each_discovered_route(tmp_path: Path) -> None:
    kube = KubeApi(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        listening = ports.listening_sockets()
        held = ports.owners({sock.inode for sock in listening})
        said = []
        for route in settings_of(config(kube, tmp_path, port)).routes:
            report = StatusReport("fwd")
            check_route(report, route, listening, held, {os.getpid()}, probe_through=False)
            said += [c.detail for c in report.checks if c.subject.startswith("targets of")]
    assert said == [
        f"discovered from the cluster (Service {ISTIO})",
        f"discovered from the cluster (Service {TRAEFIK})",
    ]
