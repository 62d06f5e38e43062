"""Discovered routes in two clusters (a per-route `kubeconfig`): routes sharing one address
by TLS server name reach each its own cluster's NodePort, a change in one cluster moves
only its route, one cluster's API going away degrades only its routes (which keep their
last targets), each cluster has its state file, a reload that moves a route to another
cluster is refused, and `discover`/`check` ask every cluster. Two test API servers, the
real kubernetes client over HTTPS; every node address either hands out is loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyforward.cli import service as service_cli
from pyforward.config.settings import build_settings, parse_config_text
from pyforward.discovery import state
from pyforward.discovery.clusters import Clusters, discovery_source
from pyforward.discovery.errors import KubeconfigError
from pyforward.discovery.followed import Cluster, cluster_names
from pyforward.errors import ConfigError
from pyforward.systemd import install
from tests.backends import Starter
from tests.kubeapi import KubeApi, node
from tests.peers_edge import free_port
from tests.test_discovery_cli import (  # noqa: F401  (fixture)
    Pyforward,
    error_line,
    pyforward,
    run_subprocess,
)
from tests.test_discovery_forwarding import FAST, HERE, Running, serving
from tests.test_discovery_services import (
    DEV,
    ISTIO,
    ISTIO_SERVICES,
    OTHER,
    TRAEFIK,
    TRAEFIK_SERVICES,
    answer,
    istio,
    lines_of,
    settings_of,
    traefik,
)
from tests.test_metrics import scrape
from tests.test_service import IN_OPT, run_cli


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[KubeApi]:
    """The dev cluster: its Istio gateway takes *.dev.local.me."""
    api = KubeApi(tmp_path)
    api.kubeconfig = tmp_path / "dev.kubeconfig"
    api.start()
    api.put_node(node("dev-node", "127.0.0.1"))
    yield api
    api.stop()


@pytest.fixture
def prod(tmp_path: Path) -> Iterator[KubeApi]:
    """The top-level cluster: its Traefik is the address's default."""
    api = KubeApi(tmp_path)
    api.kubeconfig = tmp_path / "prod.kubeconfig"
    api.start()
    api.put_node(node("prod-node", "127.0.0.1"))
    yield api
    api.stop()


def config(dev: KubeApi, prod: KubeApi, tmp_path: Path, port: int, *, dev_extra: str = "") -> str:
    """127.0.0.1:`port` shared by two routes: *.dev.local.me to the dev cluster's Istio (its
    own kubeconfig), the rest to the top-level cluster's Traefik."""
    return (
        f'discover = true\nkubeconfig = "{prod.kubeconfig}"\n'
        f'state_dir = "{tmp_path / "state"}"\ndiscover_timeout = 10\nconnect_timeout = 2\n'
        f'[[route]]\nlisten = "127.0.0.1:{port}"\nsni = ["*.dev.local.me"]\n'
        f'service = "{ISTIO}"\nservice_port = "https"\nkubeconfig = "{dev.kubeconfig}"\n'
        f"{dev_extra}"
        f'[[route]]\nlisten = "127.0.0.1:{port}"\nservice = "{TRAEFIK}"\n'
        'service_port = "websecure"\n'
    )


@asynccontextmanager
async def forwarding(text: str) -> AsyncIterator[tuple[Running, Clusters]]:
    settings = settings_of(text)
    source = discovery_source(settings, host=HERE, timing=FAST)
    assert isinstance(source, Clusters)
    async with serving(settings, source) as running:
        yield running, source


def degraded_by_cluster(scraped: str) -> dict[str, float]:
    """pyforward_discovery_degraded of a scrape, by its `cluster` label."""
    return {
        sample.labels["cluster"]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "pyforward_discovery_degraded"
    }


@contextmanager
def ports_held(count: int) -> Iterator[list[int]]:
    """`count` loopback ports held by real listeners (NodePorts that accept)."""
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    try:
        yield [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.asyncio
async def test_two_clusters_behind_one_address(
    dev: KubeApi, prod: KubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture, started: Starter
) -> None:
    gateway, ingress, moved = await started("dev-istio", "prod-traefik", "dev-istio-moved")
    dev.put_service(istio(gateway.port))
    prod.put_service(traefik(ingress.port))
    port = free_port()
    text = config(dev, prod, tmp_path, port)
    caplog.set_level(logging.INFO, "pyforward")
    async with forwarding(f'metrics = "127.0.0.1:0"\n{text}') as (running, source):
        found = re.search(r"event=metrics address=127\.0\.0\.1:(\d+)", caplog.text)
        assert found is not None

        async def degraded_metric() -> dict[str, float]:
            # In a thread: the endpoint answers from this test's own event loop.
            return degraded_by_cluster(await asyncio.to_thread(scrape, int(found.group(1))))

        # A series per cluster: the top-level one is `default`, the other its kubeconfig.
        both_ok = {"default": 0, str(dev.kubeconfig): 0}
        assert await degraded_metric() == both_ok
        assert await answer(port, DEV) == "dev-istio"
        assert await answer(port, OTHER) == "prod-traefik"
        assert await answer(port, None) == "prod-traefik"
        assert not source.degraded
        # Each cluster is asked about its own routes' Services only, and its own Nodes.
        assert len(dev.lists(ISTIO_SERVICES)) == 1 and not dev.lists(TRAEFIK_SERVICES)
        assert len(prod.lists(TRAEFIK_SERVICES)) == 1 and not prod.lists(ISTIO_SERVICES)
        for api in (dev, prod):
            assert len(api.lists("/api/v1/nodes")) == 1
        firsts = lines_of(caplog, "target")
        assert len(firsts) == 2
        dev_line = next(line for line in firsts if f"service={ISTIO}" in line)
        assert f"cluster={dev.kubeconfig}" in dev_line and f"node_port={gateway.port}" in dev_line

        # The dev cluster's NodePort moves: its route follows, the other stays.
        dev.put_service(istio(moved.port))
        await running.status_where(lambda s: f"127.0.0.1:{moved.port}" in s.message)
        assert await answer(port, DEV) == "dev-istio-moved"
        assert await answer(port, OTHER) == "prod-traefik"
        changes = lines_of(caplog, "target-change")
        assert len(changes) == 1, changes
        assert f"cluster={dev.kubeconfig}" in changes[0] and f"service={ISTIO}" in changes[0]

        # A reload that changes something else keeps each cluster's targets; one that moves
        # a route to another cluster needs a restart.
        again = source.fill(settings_of(text.replace("connect_timeout = 2", "connect_timeout = 3")))
        assert [str(r.targets[0]) for r in again.routes] == [
            f"127.0.0.1:{moved.port}",
            f"127.0.0.1:{ingress.port}",
        ]
        with pytest.raises(ConfigError, match=r"kubeconfig, node_ip\) needs a restart"):
            source.fill(settings_of(text.replace(str(dev.kubeconfig), str(tmp_path / "other"))))

        # The dev API goes away: only the dev route is degraded, and it keeps its target.
        dev.stop()
        degraded = await running.status_where(lambda s: s.degraded)
        assert degraded.message.startswith(f"{dev.kubeconfig}: ")
        assert "forwarding to the last known targets" in degraded.message
        assert f"{prod.kubeconfig}: following {TRAEFIK}" in degraded.message
        assert source.degraded
        assert await degraded_metric() == {"default": 0, str(dev.kubeconfig): 1}
        assert [m.degraded for m in source.members] == [True, False]
        assert await answer(port, DEV) == "dev-istio-moved"
        assert await answer(port, OTHER) == "prod-traefik"
        dev.start()  # back on the same port
        await running.status_where(lambda s: not s.degraded)
        assert await degraded_metric() == both_ok

    # One state file per cluster: the top-level one keeps its name; the dev one has a key.
    saved = state.load(state.state_path(tmp_path / "state", ISTIO))
    assert saved is not None
    assert [(r.service, r.node_port) for r in saved.routes] == [(TRAEFIK, ingress.port)]
    dev_file = state.state_path(tmp_path / "state", ISTIO, Cluster(str(dev.kubeconfig), None).key)
    saved_dev = state.load(dev_file)
    assert saved_dev is not None
    assert [(r.service, r.node_port) for r in saved_dev.routes] == [(ISTIO, moved.port)]

    # Both APIs down: each cluster's routes are served from its own file, at once.
    dev.stop()
    prod.stop()
    began = time.monotonic()
    async with forwarding(text) as (running, source):
        assert time.monotonic() - began < 5
        assert source.degraded and all(m.degraded for m in source.members)
        assert await answer(port, DEV) == "dev-istio-moved"
        assert await answer(port, OTHER) == "prod-traefik"
    for backend in (gateway, ingress, moved):
        await backend.close()


@pytest.mark.asyncio
async def test_a_cluster_that_cannot_start_is_named(
    prod: KubeApi, tmp_path: Path, started: Starter
) -> None:
    (ingress,) = await started("prod-traefik")
    prod.put_service(traefik(ingress.port))
    missing = KubeApi(tmp_path)  # never started: its kubeconfig is never written
    missing.kubeconfig = tmp_path / "missing.kubeconfig"
    port = free_port()
    with pytest.raises(KubeconfigError) as refused:
        async with forwarding(config(missing, prod, tmp_path, port)):
            pass
    # Named once, by where it was given: the route's own key, not a flag.
    assert str(refused.value) == (
        f"test.toml: route 1 (listen 127.0.0.1:{port}): kubeconfig {missing.kubeconfig}: "
        "does not exist"
    )
    await ingress.close()


def test_a_missing_route_kubeconfig_is_one_line_naming_the_file_route_and_key(
    prod: KubeApi,
    tmp_path: Path,
    pyforward: Pyforward,  # noqa: F811
) -> None:
    missing = KubeApi(tmp_path)  # never started: its kubeconfig is never written
    missing.kubeconfig = tmp_path / "missing.kubeconfig"
    port = free_port()
    path = tmp_path / "pyforward.toml"
    said = (
        f"{path}: route 1 (listen 127.0.0.1:{port}): kubeconfig {missing.kubeconfig}: "
        "does not exist"
    )
    with ports_held(1) as (traefik_port,):
        prod.put_service(traefik(traefik_port))
        path.write_text(config(missing, prod, tmp_path, port))
        ran = run_subprocess(["run", "--config", str(path)], tmp_path)
        assert ran.returncode == 2
        assert error_line(ran) == f"pyforward: error: {said}"
        # check: the other cluster is asked and answers; one finding says what is wrong.
        checked = pyforward(["check", "--config", str(path)], tmp_path)
        assert checked.returncode == 2, checked
        assert [line for line in checked.stdout.splitlines() if line.startswith("error:")] == [
            f"error: discovery: {said}",
            "error: 1 error(s), 0 warning(s): run would refuse this",
        ]
        assert f"ok: discovery ({prod.kubeconfig}): the API at" in checked.stdout
        discovered = pyforward(["discover", "--config", str(path)], tmp_path)
        assert discovered.returncode == 2
        assert error_line(discovered) == f"pyforward: error: {said}"
    # One cluster only, the route's (no top-level kubeconfig): check and discover look for
    # the route's own kubeconfig, not for one in the default places.
    path.write_text(
        f'discover = true\nstate_dir = "{tmp_path / "state"}"\n[[route]]\n'
        f'listen = "127.0.0.1:{port}"\nservice = "{ISTIO}"\nkubeconfig = "{missing.kubeconfig}"\n'
    )
    checked = pyforward(["check", "--config", str(path)], tmp_path)
    assert checked.returncode == 2
    assert f"error: discovery: {said}\n" in checked.stdout
    discovered = pyforward(["discover", "--config", str(path)], tmp_path)
    assert discovered.returncode == 2
    assert error_line(discovered) == f"pyforward: error: {said}"


def test_per_route_kubeconfig_and_node_ip_are_checked_as_the_top_level_keys(
    tmp_path: Path,
) -> None:
    dev, prod = KubeApi(tmp_path), KubeApi(tmp_path)
    dev.kubeconfig = tmp_path / "dev.kubeconfig"
    text = config(dev, prod, tmp_path, 8443)
    routes = settings_of(text).routes
    assert [r.kubeconfig for r in routes] == [str(dev.kubeconfig), str(prod.kubeconfig)]
    assert [r.node_ip for r in routes] == [None, None]
    with_ip = settings_of(text.replace("sni =", 'node_ip = "127.0.0.1"\nsni ='))
    assert [r.node_ip for r in with_ip.routes] == ["127.0.0.1", None]
    # Where each route's kubeconfig was given: its own key, or the file's top-level one; a
    # flag or variable gives every route's, and is named so.
    assert [r.origin("kubeconfig") for r in routes] == [
        "test.toml: route 1 (listen 127.0.0.1:8443): kubeconfig",
        "test.toml: kubeconfig",
    ]
    data = parse_config_text(text, "test.toml")
    for flags, env, place in (
        ({"kubeconfig": "/k"}, {"PYFORWARD_KUBECONFIG": "/e"}, "--kubeconfig"),
        ({}, {"PYFORWARD_KUBECONFIG": "/e"}, "PYFORWARD_KUBECONFIG"),
    ):
        given = build_settings(flags, env, data, "test.toml").routes
        assert [r.origin("kubeconfig") for r in given] == [place, place]
    # Names in status and metrics: the top-level cluster is `default`, another its kubeconfig
    # as written, with its node_ip when that is the route's own; one cluster: no names.
    assert cluster_names(settings_of(text)) == {0: str(dev.kubeconfig), 1: "default"}
    assert cluster_names(with_ip) == {0: f"{dev.kubeconfig} (node_ip 127.0.0.1)", 1: "default"}
    own_ip = text.replace(f'kubeconfig = "{dev.kubeconfig}"', 'node_ip = "127.0.0.1"')
    assert cluster_names(settings_of(own_ip)) == {0: "default (node_ip 127.0.0.1)", 1: "default"}
    assert cluster_names(settings_of(text.rsplit("[[route]]", 1)[0])) == {}
    for bad, said in (
        ('node_ip = "10.0.0"', "test.toml: route 1: node_ip: expected an IP address, got '10.0.0'"),
        (
            'node_ip = "0.0.0.0"',
            "test.toml: route 1: node_ip: 0.0.0.0 is the unspecified address (it would reach "
            "this host), never a target",
        ),
        ("kubeconfig = 7", "test.toml: route 1: kubeconfig: expected a string"),
    ):
        # In place of the route's own kubeconfig line, which comes after its sni.
        with pytest.raises(ConfigError) as refused:
            settings_of(text.replace(f'kubeconfig = "{dev.kubeconfig}"', bad))
        assert str(refused.value) == said
    # Without discovery the key is refused, as the top-level one is.
    static = '[[route]]\nlisten = "9000"\ntarget = "127.0.0.1:1"\nkubeconfig = "/k"\n'
    with pytest.raises(ConfigError, match=r"route 1: kubeconfig is for Kubernetes discovery"):
        settings_of(static)


def test_discover_and_check_ask_every_cluster(
    dev: KubeApi,
    prod: KubeApi,
    tmp_path: Path,
    pyforward: Pyforward,  # noqa: F811
) -> None:
    port = free_port()
    with ports_held(2) as (istio_port, traefik_port):
        dev.put_service(istio(istio_port))
        prod.put_service(traefik(traefik_port))
        path = tmp_path / "pyforward.toml"
        path.write_text(config(dev, prod, tmp_path, port))
        result = pyforward(["discover", "--config", str(path), "--json"], tmp_path)
        assert result.returncode == 0, result.stderr
        clusters = json.loads(result.stdout)["clusters"]
        # Each kubeconfig with where it was given: the route's own key, the file's.
        assert [c["kubeconfig"] for c in clusters] == [
            f"{dev.kubeconfig} ({path}: route 1 (listen 127.0.0.1:{port}): kubeconfig)",
            f"{prod.kubeconfig} ({path}: kubeconfig)",
        ]
        assert [(c["routes"][0]["service"], c["routes"][0]["node_port"]) for c in clusters] == [
            (str(ISTIO), istio_port),
            (str(TRAEFIK), traefik_port),
        ]
        checked = pyforward(["check", "--config", str(path)], tmp_path)
        said = checked.stdout + checked.stderr
        assert checked.returncode == 0, said
        assert f"discovery ({dev.kubeconfig})" in said
        assert f"(sni *.dev.local.me) -> 127.0.0.1:{istio_port} ({ISTIO})" in said
        assert f"127.0.0.1:{port} -> 127.0.0.1:{traefik_port} ({TRAEFIK})" in said
        # One cluster's API is down: that cluster is named.
        dev.stop()
        down = pyforward(["discover", "--config", str(path)], tmp_path)
        assert down.returncode != 0
        assert f"cluster {dev.kubeconfig}: " in down.stderr


def test_install_hands_each_kubeconfig_over_as_its_own_credential(
    dev: KubeApi,
    prod: KubeApi,
    tmp_path: Path,
    *,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pyforward: Pyforward,  # noqa: F811
) -> None:
    monkeypatch.setattr(service_cli, "find_installation", lambda: IN_OPT)
    monkeypatch.setattr(install, "ports_taken", lambda plan: [])
    given = tmp_path / "pyforward.toml"
    given.write_text(config(dev, prod, tmp_path, 8443))
    code, out, err = run_cli(["install", "--dry-run", "--config", str(given)], capsys)
    assert code == 0, err
    assert f"LoadCredential=kubeconfig:{prod.kubeconfig}\n" in out
    assert f"LoadCredential=kubeconfig-2:{dev.kubeconfig}\n" in out
    assert (
        f"routes of kubeconfig {dev.kubeconfig} are handed it as credential 'kubeconfig-2'" in err
    )
    written = out.split("<==\n", 1)[1].split("\n==> ", 1)[0]
    data = tomllib.loads(written)
    assert "kubeconfig" not in data
    assert [r.get("kubeconfig") for r in data["route"]] == [
        "$CREDENTIALS_DIRECTORY/kubeconfig-2",
        None,
    ]

    # As the service: systemd's credentials directory holds both; each cluster answers.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "kubeconfig").write_bytes(prod.kubeconfig.read_bytes())
    (credentials / "kubeconfig-2").write_bytes(dev.kubeconfig.read_bytes())
    service_config = tmp_path / "service.toml"
    service_config.write_text(written)
    with ports_held(2) as (istio_port, traefik_port):
        dev.put_service(istio(istio_port))
        prod.put_service(traefik(traefik_port))
        result = pyforward(
            ["discover", "--config", str(service_config), "--json"],
            tmp_path,
            CREDENTIALS_DIRECTORY=str(credentials),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        clusters = json.loads(result.stdout)["clusters"]
        assert [c["routes"][0]["node_port"] for c in clusters] == [istio_port, traefik_port]
        assert clusters[0]["kubeconfig"].startswith(f"{credentials / 'kubeconfig-2'} ")
    # Outside the service, the credential cannot be found: one line says why.
    outside = pyforward(["discover", "--config", str(service_config)], tmp_path)
    assert outside.returncode == 2
    assert "$CREDENTIALS_DIRECTORY is not set" in outside.stderr
