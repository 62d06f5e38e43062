"""deploy/kubernetes: the manifests against the official schemas, the kustomization, the
DaemonSet's promises, and its discovery path run for real: `pyforward run` with the
ConfigMap's pyforward.toml, in-cluster credentials at their paths, against the test API
server, forwarding bytes, with RBAC that allows exactly the requests it made."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy import (
    DEPLOY,
    SERVICE_ACCOUNT_DIR,
    Access,
    access_of,
    allows,
    ask,
    config_text,
    container,
    free_port,
    granted,
    kustomization,
    manifest_files,
    objects,
    one,
    parse_config,
    pod_env,
    pod_prefix,
    service_account_files,
    with_ports,
)
from tests.echo import NamedEcho
from tests.harness import ForwarderProcess, fields
from tests.kubeapi import KubeApi, node, service

KUBERNETES_VERSION = kubernetes_validate.latest_version()


@pytest.fixture(scope="module")
def items() -> list[dict[str, Any]]:
    return objects()


def test_every_manifest_passes_the_official_schema_strictly(items: list[dict[str, Any]]) -> None:
    assert KUBERNETES_VERSION >= "1.33"  # a current Kubernetes
    kinds = sorted(o["kind"] for o in items)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Namespace",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    for obj in items:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_mistake(items: list[dict[str, Any]]) -> None:
    bad = json.loads(json.dumps(one(items, "DaemonSet")))
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "443"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
    bad = json.loads(json.dumps(one(items, "DaemonSet")))
    bad["spec"]["template"]["spec"]["hostNetwrok"] = True  # strict: unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_names_every_manifest_and_sets_the_image(
    items: list[dict[str, Any]],
) -> None:
    kust = kustomization()
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == [p.name for p in manifest_files()]
    (image,) = kust["images"]
    assert image["name"] == container(items)["image"]  # the placeholder it replaces
    assert image["newName"] and image["newTag"]


def test_the_kustomization_renders(items: list[dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: the kustomization's structure is checked above")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc is not None]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in docs) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in items
    )
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    image = kustomization()["images"][0]
    assert container(docs)["image"] == f"{image['newName']}:{image['newTag']}"


def test_the_daemonset_binds_the_host_ports_on_every_node(items: list[dict[str, Any]]) -> None:
    pod = one(items, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    tolerated = {t["key"] for t in pod["tolerations"]}
    assert "node-role.kubernetes.io/control-plane" in tolerated
    ctr = container(items)
    config = parse_config(config_text(items))
    listened = sorted(int(route["listen"]) for route in config["route"])
    assert listened == [80, 443]
    assert sorted(p["containerPort"] for p in ctr["ports"]) == listened
    # The node's own name, from the downward API: pyforward tries its InternalIP first.
    (node_name,) = [e for e in ctr["env"] if e["name"] == "NODE_NAME"]
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Readiness and liveness ask pyforward itself: a TCP check of a port it listens on.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ctr[probe]["tcpSocket"]["port"] in listened
    assert {"cpu", "memory"} <= ctr["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= ctr["resources"]["limits"].keys()


def test_the_container_runs_as_non_root_with_net_bind_service_alone(
    items: list[dict[str, Any]],
) -> None:
    pod = one(items, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(items)["securityContext"]
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["privileged"] is False
    # True for the image's file capability alone (daemonset.yaml says why).
    assert ctx["allowPrivilegeEscalation"] is True


def test_config_state_and_mounts_agree(items: list[dict[str, Any]]) -> None:
    pod = one(items, "DaemonSet")["spec"]["template"]["spec"]
    ctr = container(items)
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = Path(ctr["args"][ctr["args"].index("--config") + 1])
    config_volume = volumes[mounts[str(config_path.parent)]]
    assert config_volume["configMap"]["name"] == one(items, "ConfigMap")["metadata"]["name"]
    assert config_path.name in one(items, "ConfigMap")["data"]
    config = parse_config(config_text(items))
    assert "emptyDir" in volumes[mounts[config["state_dir"]]]
    assert config["discover"] is True
    for route in config["route"]:
        assert "service_port" in route and "target" not in route  # discovered
    # The grace period leaves the drain its time.
    assert pod["terminationGracePeriodSeconds"] > config["shutdown_timeout"]
    account = one(items, "ServiceAccount")["metadata"]
    assert pod["serviceAccountName"] == account["name"]
    assert account["namespace"] == one(items, "DaemonSet")["metadata"]["namespace"]


def test_rbac_grants_list_and_watch_and_nothing_else(items: list[dict[str, Any]]) -> None:
    account = one(items, "ServiceAccount")["metadata"]
    rules = granted(items, (account["namespace"], account["name"]))
    gateway_namespace = parse_config(config_text(items))["service"].split("/")[0]
    assert rules == {
        Access("list", "services", gateway_namespace),
        Access("watch", "services", gateway_namespace),
        Access("list", "nodes", None),
        Access("watch", "nodes", None),
    }


# --- the DaemonSet's discovery path, for real


def test_the_daemonset_config_runs_in_cluster_and_forwards(
    kube: KubeApi, tmp_path: Path, items: list[dict[str, Any]]
) -> None:
    https, http = NamedEcho(b"https"), NamedEcho(b"http2")
    # The gateway's NodePorts are where the backends listen on 127.0.0.1: this node's
    # address. Node "node-a" sorts first by name; the pod runs on "node-b".
    kube.put_service(
        service(
            ports=(
                ("status-port", 15021, 31021),
                ("http2", 80, http.port),
                ("https", 443, https.port),
            )
        )
    )
    kube.put_node(node("node-a", "127.0.0.3"))
    kube.put_node(node("node-b", "127.0.0.1"))
    kube.put_node(node("node-c", "127.0.0.4", ready=False))
    ports = {"443": free_port(), "80": free_port()}
    config = tmp_path / "pyforward.toml"
    config.write_text(with_ports(config_text(items), ports))
    state = tmp_path / "state"  # the emptyDir; the file keeps state_dir, a flag moves it
    files = service_account_files(kube, tmp_path / "sa", "pyforward")
    process = ForwarderProcess(
        ["run", "--config", str(config), "--state-dir", str(state)],
        env=pod_env(kube, tmp_path / "home", "node-b"),
        prefix=pod_prefix(files),
    )
    try:
        line = process.wait_line(r"event=kubeconfig ")
        assert fields(line)["source"] == '"the in-cluster service account"', line
        listens = [process.wait_line(rf"event=listen address=\S+:{ports['443']} ")]
        listens.append(process.wait_line(rf"event=listen address=\S+:{ports['80']} "))
        # Its own node first, then the other Ready node; the NotReady one never.
        assert fields(listens[0])["target"] == f"127.0.0.1:{https.port},127.0.0.3:{https.port}"
        assert fields(listens[1])["target"] == f"127.0.0.1:{http.port},127.0.0.3:{http.port}"
        assert ask(ports["443"], b"hello") == b"https:hello"
        assert ask(ports["80"], b"plain") == b"http2:plain"
        # The state is saved (and fsynced) off the event loop once the targets are found:
        # the file appears a moment after forwarding starts.
        saved_file = state / "discovery-istio-system-istio-ingressgateway.json"
        deadline = time.monotonic() + 10
        while not saved_file.exists():
            assert time.monotonic() < deadline, "the state file was never written"
            time.sleep(0.05)
        saved = json.loads(saved_file.read_text())
        assert saved
        # Every request it made is one the manifests' RBAC allows; and each rule was used.
        kube.wait_for(lambda: any(r.watch and r.path == "/api/v1/nodes" for r in kube.requests))
        kube.wait_for(lambda: any(r.watch and "services" in r.path for r in kube.requests))
        made = {access_of(r) for r in kube.requests}
        account = one(items, "ServiceAccount")["metadata"]
        rules = granted(items, (account["namespace"], account["name"]))
        assert all(allows(rules, wanted) for wanted in made), made - rules
        assert rules == made
        assert process.stop() == 0
    finally:
        process.stop()
        https.close()
        http.close()
    assert not Path(SERVICE_ACCOUNT_DIR).exists()  # the host never saw it
