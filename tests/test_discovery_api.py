"""The API edge: fixture objects against the official schemas, and the watcher thread
against the test API server (lists once, watches from resourceVersions, notices a dead
connection through its read timeout, relists on 410)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from pyforward.discovery.api import ClusterApi, Resource
from pyforward.discovery.errors import ApiUnreachable
from pyforward.discovery.kubeconfig import KubeconfigSource
from pyforward.discovery.stores import ServiceStore
from pyforward.discovery.watcher import (
    Changed,
    Connected,
    ResourceWatcher,
    Trouble,
    Update,
    WatchTiming,
)
from tests.kubeapi import KubeApi, node, service

SERVICES = Resource("services", "istio-system")


@pytest.mark.parametrize(
    "obj",
    [
        service(),
        service("traefik", "kube-system", type="NodePort", ports=(("web", 80, 30080),)),
        service("istiod", type="ClusterIP", ports=(("grpc", 15012, None),)),
        node("node-a", "10.0.0.1"),
        node("node-b", "10.0.0.2", ready=False),
        {
            "apiVersion": "v1",
            "kind": "ServiceList",
            "metadata": {"resourceVersion": "7"},
            "items": [service()],
        },
        {
            "apiVersion": "v1",
            "kind": "NodeList",
            "metadata": {"resourceVersion": "7"},
            "items": [node("node-a", "10.0.0.1")],
        },
    ],
)
def test_fixture_objects_pass_the_official_schemas(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_the_schema_check_catches_a_string_node_port() -> None:
    bad = service()
    bad["spec"]["ports"][0]["nodePort"] = "31021"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    api = KubeApi(tmp_path)
    api.start()
    api.put_service(service())
    yield api
    api.stop()


class Watching:
    def __init__(self, kube: KubeApi, timing: WatchTiming) -> None:
        self.api = ClusterApi(KubeconfigSource("--kubeconfig", str(kube.kubeconfig)))
        self.updates: queue.Queue[Update] = queue.Queue()
        self.store = ServiceStore()
        self.watcher = ResourceWatcher(self.api, SERVICES, self.store, self.updates.put, timing)

    def next(self, kind: type[Any]) -> Any:
        """The next update of this kind (others before it are dropped)."""
        while True:
            update = self.updates.get(timeout=10)
            if isinstance(update, Changed):
                self.watcher.taken()
            if isinstance(update, kind):
                return update

    def close(self) -> None:
        self.watcher.stop()
        self.api.close()
        self.watcher.join(5)
        self.api.release()


def test_a_silent_watch_is_noticed_by_its_read_timeout(kube: KubeApi) -> None:
    kube.silent = True
    watching = Watching(kube, WatchTiming(watch_timeout=1, read_margin=0.5, backoff_initial=0.05))
    watching.watcher.start()
    try:
        assert watching.next(Changed).via == "list"
        watching.next(Connected)
        trouble = watching.next(Trouble)
        assert isinstance(trouble.error, ApiUnreachable)
        assert trouble.error.args[0].endswith("timed out")
        kube.silent = False
        kube.cut_connections()
        watching.next(Connected)
        kube.put_service(service(ports=(("https", 443, 32000),)))
        assert watching.next(Changed).via == "watch"
        assert watching.store.parsed().objects[0].ports[0].node_port == 32000
    finally:
        watching.close()
    path = "/api/v1/namespaces/istio-system/services"
    assert len(kube.lists(path)) == 1
    watches = kube.watches(path)
    assert len(watches) >= 2
    assert {w.query["timeoutSeconds"] for w in watches} == {"1"}
    assert all(w.query["resourceVersion"] for w in watches)


def test_gone_leads_to_a_new_list(kube: KubeApi) -> None:
    watching = Watching(kube, WatchTiming(watch_timeout=30, backoff_initial=0.05))
    watching.watcher.start()
    try:
        assert watching.next(Changed).via == "list"
        watching.next(Connected)
        kube.put_node(node("n", "10.0.0.1"))  # the version moves on elsewhere
        kube.compact()
        kube.cut_connections()
        relisted = watching.next(Changed)
        assert relisted.via == "list"
    finally:
        watching.close()
    assert len(kube.lists("/api/v1/namespaces/istio-system/services")) == 2
