"""deploy/kubernetes/services-in-another-namespace: the kustomize component for a route that
follows a Service outside the gateway's namespace. Its manifests against the official schemas,
what it grants (list and watch of Services in its namespace, to the DaemonSet's
ServiceAccount, nothing else), the kustomization rendered with it as the docs say to add it,
and the ConfigMap's pyforward.toml with such a route run against the test API server: every
request it makes is allowed by the manifests with the component, each rule used, and the
component's rules are the ones it needed beyond the base."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy import (
    DEPLOY,
    Access,
    access_of,
    config_text,
    free_port,
    granted,
    objects,
    one,
    parse_config,
    with_ports,
)
from tests.harness import ForwarderProcess
from tests.kubeapi import KubeApi, node, service
from tests.test_deploy import KUBERNETES_VERSION

COMPONENT = DEPLOY / "services-in-another-namespace"


def component_files() -> list[Path]:
    return sorted(p for p in COMPONENT.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def items() -> list[dict[str, Any]]:
    return objects()


@pytest.fixture(scope="module")
def extra() -> list[dict[str, Any]]:
    return objects(component_files())


def account(items: list[dict[str, Any]]) -> tuple[str, str]:
    meta = one(items, "ServiceAccount")["metadata"]
    return meta["namespace"], meta["name"]


def test_the_component_passes_the_schema_and_grants_its_namespace_only(
    items: list[dict[str, Any]], extra: list[dict[str, Any]]
) -> None:
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert component["kind"] == "Component"
    assert sorted(component["resources"]) == [p.name for p in component_files()]
    assert sorted(o["kind"] for o in extra) == ["Role", "RoleBinding"]
    for obj in extra:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    namespace = one(extra, "Role")["metadata"]["namespace"]
    gateway_namespace = parse_config(config_text(items))["service"].split("/")[0]
    assert namespace != gateway_namespace
    # The same ServiceAccount as the DaemonSet's, given list and watch there, and no more.
    assert granted(items + extra, account(items)) - granted(items, account(items)) == {
        Access("list", "services", namespace),
        Access("watch", "services", namespace),
    }


def test_the_kustomization_renders_with_the_component(
    tmp_path: Path, items: list[dict[str, Any]], extra: list[dict[str, Any]]
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: the component's structure is checked above")
    # As docs/kubernetes.md says: the component added to deploy/kubernetes/kustomization.yaml.
    copy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copy)
    with (copy / "kustomization.yaml").open("a") as kustomization:
        kustomization.write(f"components:\n  - {COMPONENT.name}\n")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(copy)], capture_output=True, text=True, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc is not None]

    def named(objs: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
        return sorted(
            (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs
        )

    assert named(docs) == named(items + extra)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_route_in_another_namespace_needs_exactly_the_component(
    kube: KubeApi, tmp_path: Path, items: list[dict[str, Any]], extra: list[dict[str, Any]]
) -> None:
    namespace = one(extra, "Role")["metadata"]["namespace"]
    kube.put_service(service())  # the gateway of the ConfigMap, in istio-system
    kube.put_service(
        service("traefik", namespace, ports=(("web", 80, 30080), ("websecure", 443, 30443)))
    )
    kube.put_node(node("node-b", "127.0.0.1"))
    ports = {"443": free_port(), "80": free_port()}
    other = free_port()
    # The ConfigMap's pyforward.toml with one more route, as docs/kubernetes.md shows it.
    text = with_ports(config_text(items), ports)
    text += f'\n[[route]]\nlisten = "{other}"\nservice = "{namespace}/traefik"\n'
    text += 'service_port = "websecure"\n'
    config = tmp_path / "pyforward.toml"
    config.write_text(text)
    process = ForwarderProcess(
        [
            "run",
            "--config",
            str(config),
            "--kubeconfig",
            str(kube.kubeconfig),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env={"HOME": str(tmp_path / "home"), "NODE_NAME": "node-b"},
    )
    try:
        line = process.wait_line(rf"event=listen address=\S+:{other} ")
        assert "target=127.0.0.1:30443" in line, line
        for path in (f"/api/v1/namespaces/{namespace}/services", "/api/v1/nodes"):
            kube.wait_for(lambda p=path: any(r.watch and r.path == p for r in kube.requests))
        kube.wait_for(lambda: any(r.watch and "istio-system" in r.path for r in kube.requests))
        made = {access_of(r) for r in kube.requests}
        # Allowed with the component, every rule of it used; the base alone lacks its rules.
        assert made == granted(items + extra, account(items))
        assert made - granted(items, account(items)) == {
            Access("list", "services", namespace),
            Access("watch", "services", namespace),
        }
        assert process.stop() == 0
    finally:
        process.stop()
