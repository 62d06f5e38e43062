"""The container image of deploy/kubernetes, built here with podman by scripts/build-image
and run the way the DaemonSet runs it: as uid 65532 with NET_BIND_SERVICE alone, binding a
port below 1024; and with the ConfigMap's pyforward.toml, the service-account files at the
in-cluster paths, a read-only root and the state on a tmpfs, forwarding bytes.

Slow the first time on a machine (debootstrap makes the base image, about 90 s), a minute
after that (the wheels and the image). Needs root, podman and debootstrap; skipped where
they are missing, unless PYFORWARD_REQUIRE_PRIVILEGED=1."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import (
    ROOT,
    SERVICE_ACCOUNT_DIR,
    ask,
    config_text,
    container,
    free_port,
    objects,
    service_account_files,
    skip_or_fail,
    with_ports,
)
from tests.echo import NamedEcho
from tests.harness import ForwarderProcess, fields
from tests.kubeapi import KubeApi, node, service

IMAGE = "localhost/pyforward-tcp:test"
# Containers this module started, by name: removed at its end, even those whose podman
# client was killed (the container itself would go on running).
STARTED: list[str] = []


def podman_command() -> list[str]:
    # crun refuses a machine whose cgroups mix v1 and v2; runc runs there.
    podman = ["podman"]
    if shutil.which("runc"):
        podman += ["--runtime", "runc"]
    return podman


def limits() -> list[str]:
    """podman's default limits (a million files and processes) are above what a process may
    set where raising a hard limit is not allowed (no CAP_SYS_RESOURCE): give modest ones,
    ample for a forwarder under test."""
    files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 16384)
    return ["--ulimit", f"nofile={files}:{files}", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image, built once for this module and removed after it; the base image is kept
    (podman's storage), as pip keeps its cache, and made again only where it is missing."""
    if os.geteuid() != 0:
        skip_or_fail("building an image needs root")
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            skip_or_fail(f"needs {tool} (apt-get install podman runc debootstrap)")
    built = subprocess.run(
        [str(ROOT / "scripts" / "build-image")],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env=os.environ
        | {
            "PYTHON": sys.executable,
            "PODMAN": " ".join(podman_command()),
            "PODMAN_BUILD_OPTS": " ".join(limits()),
            "PYFORWARD_IMAGE": IMAGE,
        },
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.strip() == IMAGE
    yield IMAGE
    for name in STARTED:
        subprocess.run([*podman_command(), "rm", "--force", name], capture_output=True, check=False)
    subprocess.run([*podman_command(), "rmi", "--force", IMAGE], capture_output=True, check=False)


def run(image: str, *options: str, args: tuple[str, ...] = ()) -> list[str]:
    """The podman command line that runs `image ARGS` in a container named for cleanup."""
    STARTED.append(f"pyforward-test-{os.getpid()}-{len(STARTED)}")
    return [
        *podman_command(),
        "run",
        "--rm",
        "--name",
        STARTED[-1],
        *limits(),
        *options,
        image,
        *args,
    ]


def as_kubernetes_runs_it(image: str, *args: str) -> list[str]:
    """`pyforward ARGS` in the image with the capability sets containerd gives a non-root
    container: uid 65532, NET_BIND_SERVICE in the bounding set and in no other (podman
    itself would put an added capability in the ambient set too; Kubernetes has no field
    for that). setpriv starts as root only to set this up, in a network of its own."""
    options = ["--network", "none", "--user", "0", "--cap-drop", "all"]
    options += ["--cap-add", "NET_BIND_SERVICE,SETUID,SETGID,SETPCAP", "--entrypoint", "setpriv"]
    drop = ["--reuid=65532", "--regid=65532", "--clear-groups", "--inh-caps=-all"]
    drop += ["--bounding-set=-all,+net_bind_service"]
    return run(image, *options, args=(*drop, "--", "/opt/pyforward/bin/pyforward", *args))


def test_the_image_runs_pyforward(image: str) -> None:
    out = subprocess.run(
        run(image, "--network", "none", args=("--version",)),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "pyforward 0.1.0"


def test_a_non_root_container_binds_port_80_with_the_file_capability(image: str) -> None:
    process = ForwarderProcess(
        [],
        program=as_kubernetes_runs_it(
            image, "run", "--listen", "127.0.0.1:80", "--target", "127.0.0.1:9"
        ),
    )
    try:
        line = process.wait_line(r"event=listen ", timeout=60)
        assert fields(line)["address"] == "127.0.0.1:80"
    finally:
        process.stop()


def test_the_image_runs_the_daemonsets_config_in_cluster(
    image: str, kube: KubeApi, tmp_path: Path
) -> None:
    items: list[dict[str, Any]] = objects()
    https, http = NamedEcho(b"https"), NamedEcho(b"http2")
    kube.put_service(service(ports=(("http2", 80, http.port), ("https", 443, https.port))))
    kube.put_node(node("node-a", "127.0.0.3"))
    kube.put_node(node("node-b", "127.0.0.1"))
    ports = {"443": free_port(), "80": free_port()}
    config = tmp_path / "config"
    config.mkdir()
    (config / "pyforward.toml").write_text(with_ports(config_text(items), ports))
    files = service_account_files(kube, tmp_path / "sa", "pyforward")
    ctx = container(items)
    # What the DaemonSet asks for, in podman's words; the host's network, as hostNetwork.
    options = [
        "--network",
        "host",
        "--user",
        "65532:65532",
        "--cap-drop",
        "all",
        "--cap-add",
        ",".join(ctx["securityContext"]["capabilities"]["add"]),
        "--read-only",
        "--tmpfs",
        "/var/lib/pyforward:rw,mode=1777",
        "--tmpfs",
        "/tmp",
        "-v",
        f"{config}:/etc/pyforward:ro",
        "-v",
        f"{files}:{SERVICE_ACCOUNT_DIR}:ro",
        "-e",
        "KUBERNETES_SERVICE_HOST=127.0.0.1",
        "-e",
        f"KUBERNETES_SERVICE_PORT={kube.port}",
        "-e",
        "NODE_NAME=node-b",
    ]
    process = ForwarderProcess([], program=run(image, *options, args=tuple(ctx["args"])))
    try:
        line = process.wait_line(r"event=kubeconfig ", timeout=60)
        assert fields(line)["source"] == '"the in-cluster service account"', line
        listen = process.wait_line(rf"event=listen address=\S+:{ports['443']} ", timeout=60)
        assert fields(listen)["target"] == f"127.0.0.1:{https.port},127.0.0.3:{https.port}"
        process.wait_line(rf"event=listen address=\S+:{ports['80']} ")
        assert ask(ports["443"], b"hello") == b"https:hello"
        assert ask(ports["80"], b"plain") == b"http2:plain"
        assert process.stop() == 0
    finally:
        process.stop()
        https.close()
        http.close()
