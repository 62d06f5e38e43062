"""Discovered routes in two clusters, as status and metrics show them: the service's status
names the cluster of each discovered route (text and --json), `status --metrics` names each
cluster with its state, the degraded one as a warning, and with --workers the scrape has one
`pyforward_discovery_degraded` series per cluster, not one per process. Two test API
servers, the real kubernetes client over HTTPS; the service's listener is a real socket of
this process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from pyforward.config.addresses import parse_listen
from pyforward.obs.live_status import live_status
from pyforward.systemd import install, systemctl, units
from pyforward.systemd.install import InstallPaths
from pyforward.systemd.status import Level
from tests.backends import Starter
from tests.kubeapi import KubeApi
from tests.peers_edge import free_port
from tests.test_discovery_clusters import (  # noqa: F401  (fixtures)
    config,
    degraded_by_cluster,
    dev,
    forwarding,
    ports_held,
    prod,
)
from tests.test_discovery_services import ISTIO, TRAEFIK, istio, traefik
from tests.test_metrics import metrics_port, scrape
from tests.test_service import run_cli
from tests.test_workers import with_workers


@pytest.fixture
def held_listener() -> Iterator[int]:
    """A listener of this process that greets each client with a byte, as a forwarder whose
    target speaks first: the service's address."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"!")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone would not)
    thread.join(5)
    server.close()


def running_unit(monkeypatch: pytest.MonkeyPatch, fragment: Path) -> None:
    """systemd (which cannot run here) says: fwd.service is active, its main process is this
    one; no socket unit."""
    fragment.write_text(f"{units.MARKER}\n")
    service = {
        "LoadState": "loaded",
        "ActiveState": "active",
        "SubState": "running",
        "UnitFileState": "enabled",
        "MainPID": str(os.getpid()),
        "FragmentPath": str(fragment),
    }

    def show(unit: str, properties: Sequence[str] = systemctl.UNIT_PROPERTIES) -> dict[str, str]:
        said = service if unit == "fwd.service" else {"LoadState": "not-found"}
        return {name: said.get(name, "") for name in properties}

    monkeypatch.setattr(systemctl, "systemd_running", lambda: True)
    monkeypatch.setattr(systemctl, "show", show)


def test_service_status_names_the_cluster_of_each_discovered_route(
    tmp_path: Path,
    held_listener: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = InstallPaths(config_dir=tmp_path / "etc", unit_dir=tmp_path / "units")
    paths.config_dir.mkdir()
    paths.unit_dir.mkdir()
    running_unit(monkeypatch, paths.unit_dir / "fwd.service")
    # The status reads the config, never the clusters: their API servers need not run.
    away, top = KubeApi(tmp_path), KubeApi(tmp_path)
    away.kubeconfig, top.kubeconfig = tmp_path / "dev.kubeconfig", tmp_path / "prod.kubeconfig"
    text = config(away, top, tmp_path, held_listener)
    install.config_path("fwd", paths).write_text(text)
    listen = f"127.0.0.1:{held_listener}"
    dev_route = f"discovered from cluster {away.kubeconfig} (Service {ISTIO})"
    prod_route = f"discovered from cluster default (Service {TRAEFIK})"

    code, out, err = run_cli(["status", "--name", "fwd"], capsys, paths)
    assert code == 0, out + err
    assert f"[  ok] targets of {listen}: {dev_route}" in out.splitlines()
    assert f"[  ok] targets of {listen}: {prod_route}" in out.splitlines()

    code, out, err = run_cli(["status", "--name", "fwd", "--json"], capsys, paths)
    checks = json.loads(out)["checks"]
    assert [c["detail"] for c in checks if c["subject"] == f"targets of {listen}"] == [
        dev_route,
        prod_route,
    ]

    # One cluster (the second route removed): nothing to tell apart, none is named.
    install.config_path("fwd", paths).write_text(text.rsplit("[[route]]", 1)[0])
    code, out, err = run_cli(["status", "--name", "fwd"], capsys, paths)
    assert f"[  ok] targets of {listen}: discovered from the cluster (Service {ISTIO})" in out


@pytest.mark.asyncio
async def test_live_status_names_each_cluster_and_the_degraded_one(
    dev: KubeApi,  # noqa: F811
    prod: KubeApi,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    started: Starter,
) -> None:
    gateway, ingress = await started("dev-istio", "prod-traefik")
    dev.put_service(istio(gateway.port))
    prod.put_service(traefik(ingress.port))
    caplog.set_level(logging.INFO, "pyforward")
    text = f'metrics = "127.0.0.1:0"\n{config(dev, prod, tmp_path, free_port())}'
    async with forwarding(text) as (running, _source):
        found = re.search(r"event=metrics address=(127\.0\.0\.1:\d+)", caplog.text)
        assert found is not None
        metrics = parse_listen(found.group(1))

        async def discovery_checks() -> list[tuple[str, Level, str]]:
            # In a thread: the endpoint answers from this test's own event loop.
            report = await asyncio.to_thread(live_status, metrics)
            return [
                (c.subject, c.level, c.detail)
                for c in report.checks
                if c.subject.startswith("discovery")
            ]

        # In route order: the dev route (its own kubeconfig) comes first.
        assert await discovery_checks() == [
            (f"discovery (cluster {dev.kubeconfig})", Level.OK, "following the cluster"),
            ("discovery (cluster default)", Level.OK, "following the cluster"),
        ]
        dev.stop()
        await running.status_where(lambda s: s.degraded)
        assert await discovery_checks() == [
            (
                f"discovery (cluster {dev.kubeconfig})",
                Level.WARN,
                "degraded: forwarding to unconfirmed targets",
            ),
            ("discovery (cluster default)", Level.OK, "following the cluster"),
        ]
    await gateway.close()
    await ingress.close()


def test_with_workers_each_cluster_is_one_series(
    dev: KubeApi,  # noqa: F811
    prod: KubeApi,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = tmp_path / "pyforward.toml"
    path.write_text(f'metrics = "127.0.0.1:0"\n{config(dev, prod, tmp_path, free_port())}')
    with ports_held(2) as (istio_port, traefik_port):
        dev.put_service(istio(istio_port))
        prod.put_service(traefik(traefik_port))
        with with_workers("--config", str(path)) as fwd:
            port = metrics_port(fwd)
            # Discovery runs in the main process: its series are not added up over workers.
            assert degraded_by_cluster(scrape(port)) == {str(dev.kubeconfig): 0, "default": 0}
            dev.stop()
            deadline = time.monotonic() + 20
            while (found := degraded_by_cluster(scrape(port)))[str(dev.kubeconfig)] != 1:
                assert time.monotonic() < deadline, found
                time.sleep(0.1)
            assert found == {str(dev.kubeconfig): 1, "default": 0}
