"""`pyforward check` as an operator runs it: real processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Backend, echo, forwarder, run_cli
from tests.kubeapi import KubeApi, node, service


def free_port() -> int:
    """A port nothing listens on now (the system picked it, then let it go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port held (bound, not listening) so that connections to it are refused."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend(echo) as server:
        yield server


def findings(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines, result.stderr
    return lines


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pyforward.toml"
    path.write_text(text)
    return path


def test_all_well_is_ok_lines_and_exit_0(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    config = write(tmp_path, f'listen = "127.0.0.1:{port}"\ntarget = "{backend.address}"\n')
    result = run_cli("check", "--config", str(config))
    lines = findings(result)
    assert result.returncode == 0, result.stdout
    assert lines == [
        "ok: config: valid; 1 route",
        f"ok: listen 127.0.0.1:{port}: free",
        f"ok: target {backend.address}: accepts connections",
        "ok: run would start, and everything answers",
    ]


def test_what_run_refuses_is_one_error_and_exit_2(tmp_path: Path) -> None:
    config = write(tmp_path, '[[route]]\nlisten = "18501"\ntarget = []\n')
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    lines = findings(result)
    assert lines[0] == (
        f"error: config: {config}: route 1: target: no target given (an empty list); "
        "give at least one HOST:PORT"
    )
    assert lines[1].startswith("error: 1 error(s)")


def test_target_that_refuses_is_a_warning_and_exit_1(refusing_port: int) -> None:
    port = free_port()
    result = run_cli(
        "check", "--listen", f"127.0.0.1:{port}", "--target", f"127.0.0.1:{refusing_port}"
    )
    assert result.returncode == 1, result.stdout
    assert (
        f"warning: target 127.0.0.1:{refusing_port}: does not accept connections "
        "(Connection refused)"
    ) in result.stdout


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_target_that_does_not_resolve_is_an_error() -> None:
    # In a fresh network namespace no name server is reachable and no query leaves.
    result = run_cli(
        "check",
        "--listen",
        "127.0.0.1:0",
        "--target",
        "ingress.example.internal:443",
        prefix=["unshare", "--net", "--"],
    )
    assert result.returncode == 2, result.stdout
    assert (
        "error: target ingress.example.internal:443: host 'ingress.example.internal' "
        "does not resolve"
    ) in result.stdout


def test_listen_address_held_by_another_program_is_an_error(backend: Backend) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        result = run_cli("check", "--listen", f"127.0.0.1:{port}", "--target", backend.address)
    assert result.returncode == 2, result.stdout
    line = next(line for line in findings(result) if line.startswith("error: listen"))
    assert f"port {port} is already in use" in line
    assert f"held by pid {os.getpid()} (" in line


needs_root_and_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv (util-linux) to check as a lesser user",
)


@needs_root_and_setpriv
def test_listen_address_held_where_this_user_cannot_look_is_a_warning(backend: Backend) -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        result = run_cli(
            "check", "--listen", f"127.0.0.1:{port}", "--target", backend.address, prefix=nobody
        )
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(line for line in findings(result) if line.startswith("warning: listen"))
    assert f"port {port} is already in use" in line
    assert "held by a process this user cannot look at" in line


@needs_root_and_setpriv
def test_low_port_without_the_capability_is_a_warning(backend: Backend) -> None:
    # Root without CAP_NET_BIND_SERVICE, as an operator's shell is; the service has it.
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-net_bind_service", "--"]
    result = run_cli("check", "--listen", "127.0.0.1:81", "--target", backend.address, prefix=drop)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "warning: listen 127.0.0.1:81: cannot listen on 127.0.0.1:81: permission denied"
        in result.stdout
    )


def test_listen_address_that_is_not_this_hosts_is_an_error(backend: Backend) -> None:
    result = run_cli("check", "--listen", "192.0.2.1:8080", "--target", backend.address)
    assert result.returncode == 2
    assert (
        "error: listen 192.0.2.1:8080: cannot listen on 192.0.2.1:8080: 192.0.2.1 is not an "
        "address of this host" in result.stdout
    )


def test_listen_address_held_by_this_configurations_forwarder_is_ok(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write(tmp_path, f'listen = "127.0.0.1:{port}"\ntarget = "{backend.address}"\n')
    with forwarder("--config", str(config)) as running:
        result = run_cli("check", "--config", str(config))
        pid = running.proc.pid
    assert result.returncode == 0, result.stdout
    assert (
        f"ok: listen 127.0.0.1:{port}: held by this configuration's forwarder (pid {pid})"
        in findings(result)
    )


def test_forwarder_given_its_config_by_variable_is_recognised(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write(tmp_path, f'listen = "127.0.0.1:{port}"\ntarget = "{backend.address}"\n')
    with forwarder(env={"PYFORWARD_CONFIG": str(config)}) as running:
        result = run_cli("check", "--config", str(config))
        pid = running.proc.pid
    assert result.returncode == 0, result.stdout
    assert f"held by this configuration's forwarder (pid {pid})" in result.stdout


def test_same_flags_as_the_running_forwarder_are_recognised(backend: Backend) -> None:
    args = ("--listen", f"127.0.0.1:{free_port()}", "--target", backend.address)
    with forwarder(*args) as running:
        ours = run_cli("check", *args)
        other = run_cli("check", *args, "--idle-timeout", "5")
        pid = running.proc.pid
    assert ours.returncode == 0, ours.stdout
    assert f"held by this configuration's forwarder (pid {pid})" in ours.stdout
    # Other settings on the same port: run would refuse them, the port is in use.
    assert other.returncode == 2, other.stdout
    assert f"held by pid {pid} (" in other.stdout


# --- discovery


@pytest.fixture
def kube(tmp_path: Path, backend: Backend) -> Iterator[KubeApi]:
    """The test API server; the Service's https nodePort is the backend's port."""
    api = KubeApi(tmp_path)
    api.start()
    api.put_service(service(ports=(("https", 443, backend.port),)))
    api.put_node(node("node-a", "127.0.0.1"))
    yield api
    api.stop()


def discovery_args(kube: KubeApi, tmp_path: Path) -> list[str]:
    return [
        "check",
        "--discover",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--kubeconfig",
        str(kube.kubeconfig),
        "--node-ip",
        "127.0.0.1",
        "--state-dir",
        str(tmp_path / "state"),
    ]


def test_discovery_api_that_answers_and_its_targets(
    kube: KubeApi, tmp_path: Path, backend: Backend
) -> None:
    result = run_cli(*discovery_args(kube, tmp_path))
    lines = findings(result)
    assert result.returncode == 0, result.stdout
    assert f"ok: discovery: the API at https://127.0.0.1:{kube.port} answers" in result.stdout
    assert f"ok: target 127.0.0.1:{backend.port}: accepts connections" in lines


def test_discovery_api_that_does_not_answer_is_a_warning(kube: KubeApi, tmp_path: Path) -> None:
    args = discovery_args(kube, tmp_path)
    kube.stop()
    result = run_cli(*args)
    assert result.returncode == 1, result.stdout
    line = next(line for line in findings(result) if line.startswith("warning: discovery"))
    assert f"cannot reach the Kubernetes API at https://127.0.0.1:{kube.port}" in line
    assert "run would serve the last saved targets, or wait for the API" in line


def test_discovery_credentials_refused_is_an_error(kube: KubeApi, tmp_path: Path) -> None:
    kube.write_kubeconfig(kube.kubeconfig, token="wrong")
    result = run_cli(*discovery_args(kube, tmp_path))
    assert result.returncode == 2, result.stdout
    line = next(line for line in findings(result) if line.startswith("error: discovery"))
    assert "rejected the credentials" in line


def test_help_lists_run_options() -> None:
    result = run_cli("check", "--help")
    assert result.returncode == 0
    assert "Options of run" in result.stdout
    for option in ("--listen", "--target", "--config", "--connect-timeout", "--discover"):
        assert option in result.stdout
