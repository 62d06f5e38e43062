"""`pyforward discover` and `pyforward run --discover` as a user runs them: subprocesses,
the real kubernetes client, the test API server over HTTPS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyforward.cli.app import main
from tests.backends import Backend, reached
from tests.kubeapi import KubeApi, node, service

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    api = KubeApi(tmp_path)
    api.start()
    api.put_service(service())
    api.put_node(node("node-b", "10.0.0.12"))
    api.put_node(node("node-a", "10.0.0.11"))
    api.put_node(node("node-c", "10.0.0.13", ready=False))
    yield api
    api.stop()


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with no kubeconfig of the user's and no PYFORWARD_ settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYFORWARD_", "KUBE")) and k not in ("CREDENTIALS_DIRECTORY",)
    }
    env["HOME"] = str(tmp_path / "home")
    env["NODE_NAME"] = "node-b"  # this host is node-b
    env.update(extra)
    return env


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


Pyforward = Callable[..., Outcome]


@pytest.fixture
def pyforward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Pyforward:
    """Run the CLI's entry point in this process (kubernetes is imported once, not per
    test), with a clean environment; returns its exit code and output."""

    def run(args: list[str], tmp_path: Path, **env: str) -> Outcome:
        for key in list(os.environ):
            monkeypatch.delenv(key)
        for key, value in clean_env(tmp_path, **env).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(args)
        captured = capsys.readouterr()
        code = exited.value.code
        return Outcome(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


def run_subprocess(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`pyforward run` in its own process: it sets up logging and signal handlers."""
    return subprocess.run(
        [sys.executable, "-m", "pyforward", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(tmp_path),
        cwd=ROOT,
        check=False,
    )


def error_line(result: Outcome | subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pyforward: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_discover_prints_service_nodes_and_choice(
    kube: KubeApi, tmp_path: Path, pyforward: Pyforward
) -> None:
    result = pyforward(["discover", "--kubeconfig", str(kube.kubeconfig)], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"kubeconfig: {kube.kubeconfig} (--kubeconfig)" in out
    assert "Service istio-system/istio-ingressgateway (type LoadBalancer)" in out
    assert "port https (443/TCP)  nodePort 31443" in out
    assert "node-a: Ready; InternalIP 10.0.0.11, Hostname node-a" in out
    assert "node-c: NotReady (KubeletNotReady: container runtime network not ready)" in out
    assert "picked: node node-b (10.0.0.12): this host" in out
    assert "forward: *:443 -> 10.0.0.12:31443, 10.0.0.11:31443" in out
    # The gateway itself is a LoadBalancer on 443: ServiceLB may hold that port.
    assert "warning: LoadBalancer Service istio-system/istio-ingressgateway exposes port 443" in out


def test_discover_says_which_nodes_it_left_out_and_why(
    kube: KubeApi, tmp_path: Path, pyforward: Pyforward
) -> None:
    kube.put_node(node("evil", "evil.invalid"))
    kube.put_node(node("zero", "0.0.0.0"))
    result = pyforward(["discover", "--kubeconfig", str(kube.kubeconfig)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nodes (5):" in result.stdout
    assert (
        '  left out: node evil: InternalIP "evil.invalid" is not an IP address\n' in result.stdout
    )
    assert '  left out: node zero: InternalIP "0.0.0.0" is the unspecified' in result.stdout
    assert "forward: *:443 -> 10.0.0.12:31443, 10.0.0.11:31443 " in result.stdout
    result = pyforward(["discover", "--kubeconfig", str(kube.kubeconfig), "--json"], tmp_path)
    assert [n["name"] for n in json.loads(result.stdout)["rejected_nodes"]] == ["evil", "zero"]


def test_error_a_list_that_is_no_list_object(
    kube: KubeApi, tmp_path: Path, pyforward: Pyforward
) -> None:
    kube.list_bodies["/api/v1/nodes"] = ["not", "a", "NodeList"]
    result = pyforward(["discover", "--kubeconfig", str(kube.kubeconfig)], tmp_path)
    assert result.returncode == 1
    assert error_line(result) == (
        f"pyforward: error: the API server at https://127.0.0.1:{kube.port} answered list "
        "nodes with a list, not a NodeList object"
    )


def test_error_node_port_that_is_no_port(
    kube: KubeApi, tmp_path: Path, pyforward: Pyforward
) -> None:
    broken = service()
    broken["spec"]["ports"][2]["nodePort"] = True
    kube.put_service(broken)
    result = pyforward(["discover", "--kubeconfig", str(kube.kubeconfig)], tmp_path)
    assert result.returncode == 1
    assert error_line(result) == (
        "pyforward: error: Service istio-system/istio-ingressgateway: port https: nodePort is "
        "true, not a port number (an integer 1-65535)"
    )


def test_discover_json_with_preset(kube: KubeApi, tmp_path: Path, pyforward: Pyforward) -> None:
    result = pyforward(
        ["discover", "--kubeconfig", str(kube.kubeconfig), "--preset", "istio", "--json"],
        tmp_path,
        NODE_NAME="elsewhere",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["picked"] == {
        "node": "node-a",
        "address": "10.0.0.11",
        "why": "no node is this host; first by name",
    }
    assert [(r["listen"], r["service_port"], r["node_port"]) for r in data["routes"]] == [
        ("*:443", "https", 31443),
        ("*:80", "http2", 31080),
    ]
    assert data["routes"][0]["targets"] == ["10.0.0.11:31443", "10.0.0.12:31443"]
    assert {n["name"]: n["ready"] for n in data["nodes"]} == {
        "node-a": True,
        "node-b": True,
        "node-c": False,
    }
    assert data["error"] is None


def test_discover_node_ip_and_port_number(
    kube: KubeApi, tmp_path: Path, pyforward: Pyforward
) -> None:
    result = pyforward(
        [
            "discover",
            "--kubeconfig",
            str(kube.kubeconfig),
            "--service-port",
            "80",
            "--node-ip",
            "192.0.2.7",
            "--json",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["routes"][0]["targets"] == ["192.0.2.7:31080"]
    assert kube.lists("/api/v1/nodes") == [], "--node-ip needs no node list"


def test_discover_uses_kubeconfig_variable(
    kube: KubeApi, tmp_path: Path, pyforward: Pyforward
) -> None:
    result = pyforward(["discover"], tmp_path, KUBECONFIG=str(kube.kubeconfig))
    assert result.returncode == 0, result.stderr
    assert f"kubeconfig: {kube.kubeconfig} ($KUBECONFIG)" in result.stdout


def test_discover_uses_systemd_credential(
    kube: KubeApi, tmp_path: Path, pyforward: Pyforward
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    kube.write_kubeconfig(credentials / "kubeconfig")
    result = pyforward(["discover"], tmp_path, CREDENTIALS_DIRECTORY=str(credentials))
    assert result.returncode == 0, result.stderr
    assert "(systemd credential)" in result.stdout


@pytest.mark.skipif(Path("/etc/rancher/k3s/k3s.yaml").exists(), reason="k3s is installed here")
def test_error_no_kubeconfig(tmp_path: Path, pyforward: Pyforward) -> None:
    result = pyforward(["discover"], tmp_path)
    assert result.returncode == 2
    line = error_line(result)
    assert "no kubeconfig found; looked at: $KUBECONFIG (not set)" in line
    assert f"{tmp_path}/home/.kube/config (does not exist)" in line
    assert "/etc/rancher/k3s/k3s.yaml (does not exist)" in line
    assert "in-cluster (not in a pod" in line
    assert "--kubeconfig FILE" in line


def credential_programs(marker: Path) -> list[tuple[str, dict[str, Any], str]]:
    """User entries whose credentials would come from a program that creates `marker`."""
    return [
        (
            "exec",
            {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1beta1",
                    "command": "/bin/sh",
                    "args": ["-c", f"touch {marker}"],
                }
            },
            "exec: runs '/bin/sh'",
        ),
        (
            "auth-provider",
            {
                "auth-provider": {
                    "name": "gcp",
                    "config": {"cmd-path": "touch", "cmd-args": str(marker)},
                }
            },
            "auth-provider 'gcp'",
        ),
    ]


@pytest.mark.parametrize("kind", ["exec", "auth-provider"])
@pytest.mark.parametrize("command", ["discover", "run"])
def test_error_kubeconfig_that_would_run_a_program_runs_nothing(
    kube: KubeApi, tmp_path: Path, pyforward: Pyforward, kind: str, command: str
) -> None:
    marker = tmp_path / "marker"
    [(_, entry, how)] = [p for p in credential_programs(marker) if p[0] == kind]
    kubeconfig = kube.write_kubeconfig(tmp_path / "evil-kubeconfig", user=("evil", entry))
    args = ["--kubeconfig", str(kubeconfig)]
    if command == "run":
        args += ["--discover", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "s")]
    result = pyforward([command, *args], tmp_path)
    assert result.returncode == 2
    # run logs the kubeconfig it found first; the error is the last line either way.
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"pyforward: error: kubeconfig {kubeconfig} (--kubeconfig): user 'evil' of context "
        f"'test' gets its credentials from a program ({how}); pyforward runs no program named "
        "in a kubeconfig: give it one whose user has a token or a client certificate, such as "
        "a ServiceAccount token allowed to list and watch services and nodes"
    )
    assert not marker.exists()
    assert kube.requests == []


def test_error_kubeconfig_flag_missing(tmp_path: Path, pyforward: Pyforward) -> None:
    result = pyforward(["discover", "--kubeconfig", str(tmp_path / "nope")], tmp_path)
    assert result.returncode == 2
    assert error_line(result).endswith(f"--kubeconfig {tmp_path}/nope: does not exist")


def test_error_api_unreachable(kube: KubeApi, tmp_path: Path, pyforward: Pyforward) -> None:
    kube.stop()
    result = pyforward(["discover", "--kubeconfig", str(kube.kubeconfig)], tmp_path)
    assert result.returncode == 1
    line = error_line(result)
    assert f"cannot reach the Kubernetes API at https://127.0.0.1:{kube.port}" in line
    assert line.endswith("Connection refused")


def test_error_untrusted_certificate(kube: KubeApi, tmp_path: Path, pyforward: Pyforward) -> None:
    other = KubeApi(tmp_path / "other")
    (tmp_path / "other").mkdir()
    other.port = kube.port  # a kubeconfig for kube's address, with another CA
    config = other.write_kubeconfig(tmp_path / "wrong-ca")
    result = pyforward(["discover", "--kubeconfig", str(config)], tmp_path)
    assert result.returncode == 1
    assert "TLS: certificate verify failed" in error_line(result)


def test_error_bad_token(kube: KubeApi, tmp_path: Path, pyforward: Pyforward) -> None:
    config = kube.write_kubeconfig(tmp_path / "bad-token", token="wrong")
    result = pyforward(["discover", "--kubeconfig", str(config)], tmp_path)
    assert result.returncode == 1
    line = error_line(result)
    assert f"the API server at https://127.0.0.1:{kube.port} rejected the credentials" in line
    assert "(401 Unauthorized)" in line


def test_error_forbidden(kube: KubeApi, tmp_path: Path, pyforward: Pyforward) -> None:
    kube.forbidden.add(("list", "nodes"))
    result = pyforward(["discover", "--kubeconfig", str(kube.kubeconfig)], tmp_path)
    assert result.returncode == 1
    line = error_line(result)
    assert "forbids 'list' on nodes" in line
    assert "(403 Forbidden; RBAC must allow verbs list and watch on nodes)" in line
    assert 'cannot list resource "nodes"' in line


def test_error_service_not_found(kube: KubeApi, tmp_path: Path, pyforward: Pyforward) -> None:
    kube.put_service(service("other-gateway", type="NodePort"))
    kube.put_service(service("istiod", type="ClusterIP", ports=(("grpc", 15012, None),)))
    result = pyforward(
        ["discover", "--kubeconfig", str(kube.kubeconfig), "--service", "istio-system/gw"],
        tmp_path,
    )
    assert result.returncode == 1
    assert error_line(result) == (
        "pyforward: error: Service istio-system/gw not found; NodePort/LoadBalancer "
        "Services in istio-system: istio-ingressgateway, other-gateway"
    )


def test_error_port_not_found(kube: KubeApi, tmp_path: Path, pyforward: Pyforward) -> None:
    result = pyforward(
        ["discover", "--kubeconfig", str(kube.kubeconfig), "--service-port", "websecure"],
        tmp_path,
    )
    assert result.returncode == 1
    assert error_line(result) == (
        "pyforward: error: Service istio-system/istio-ingressgateway has no port named "
        "'websecure'; its ports: status-port (15021/TCP), http2 (80/TCP), https (443/TCP)"
    )


def test_error_cluster_ip_service(kube: KubeApi, tmp_path: Path, pyforward: Pyforward) -> None:
    kube.put_service(
        service("traefik", "kube-system", type="ClusterIP", ports=(("websecure", 443, None),))
    )
    result = pyforward(
        ["discover", "--kubeconfig", str(kube.kubeconfig), "--preset", "traefik"], tmp_path
    )
    assert result.returncode == 1
    line = error_line(result)
    assert "Service kube-system/traefik is of type ClusterIP" in line
    assert "port websecure (443/TCP) has no nodePort" in line
    assert "make the Service type NodePort or LoadBalancer" in line


def test_error_no_ready_node(kube: KubeApi, tmp_path: Path, pyforward: Pyforward) -> None:
    kube.put_node(node("node-a", "10.0.0.11", ready=False))
    kube.put_node(node("node-b", "10.0.0.12", ready=False))
    result = pyforward(["discover", "--kubeconfig", str(kube.kubeconfig)], tmp_path)
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith("pyforward: error: no Ready node with an InternalIP: node-a not Ready")
    assert "node-c not Ready (KubeletNotReady: container runtime network not ready)" in line
    # What was found is still printed.
    assert "node-b: NotReady" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--service", "istio-ingressgateway"], "--service: expected NAMESPACE/NAME"),
        (["--service", "Istio/x"], "namespace 'Istio' in 'Istio/x' is not a valid"),
        (["--service-port", "no_such!"], "--service-port: expected a port name"),
        (["--service-port", "70000"], "port number must be 1-65535"),
        (["--node-ip", "node-1"], "--node-ip: expected an IP address, got 'node-1'"),
    ],
)
def test_error_bad_flags(
    tmp_path: Path, args: list[str], message: str, pyforward: Pyforward
) -> None:
    result = pyforward(["discover", *args], tmp_path)
    assert result.returncode == 2
    assert message in error_line(result)


def test_error_bad_preset(tmp_path: Path, pyforward: Pyforward) -> None:
    result = pyforward(["run", "--discover", "--preset", "nginx"], tmp_path)
    assert result.returncode == 2
    assert "nginx" in error_line(result)


def test_run_discover_boot_gives_up_with_the_reason(kube: KubeApi, tmp_path: Path) -> None:
    kube.stop()
    result = run_subprocess(
        [
            "run",
            "--discover",
            "--listen",
            "127.0.0.1:0",
            "--kubeconfig",
            str(kube.kubeconfig),
            "--state-dir",
            str(tmp_path / "state"),
            "--discover-timeout",
            "1",
        ],
        tmp_path,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pyforward: error: cannot reach the Kubernetes API")
    assert last.endswith("(still so after 1 s)")
    assert "Traceback" not in result.stderr


@pytest.mark.asyncio
async def test_run_discover_follows_a_nodeport_change(kube: KubeApi, tmp_path: Path) -> None:
    old, new = Backend("old"), Backend("new")
    await old.start()
    await new.start()
    kube.put_node(node("node-b", "127.0.0.1"))
    kube.put_node(node("node-a", "127.0.0.1", ready=False))
    kube.put_service(service(ports=(("https", 443, old.port),)))
    config = tmp_path / "pyforward.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            discover = true
            kubeconfig = "{kube.kubeconfig}"
            state_dir = "{tmp_path / "state"}"
            [[route]]
            listen = "127.0.0.1:0"
            service_port = "https"
            """
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pyforward",
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(tmp_path),
        cwd=ROOT,
    )
    assert process.stderr is not None
    log: list[str] = []
    port = 0
    try:
        while not port:
            line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
            assert line, "".join(log)
            log.append(line)
            if "event=listen " in line:
                port = int(line.split("address=127.0.0.1:")[1].split()[0])
        assert await reached(port) == "old"
        kube.put_service(service(ports=(("https", 443, new.port),)))
        while "event=target-change" not in log[-1]:
            log.append((await asyncio.wait_for(process.stderr.readline(), 10)).decode())
        assert f"was=127.0.0.1:{old.port}" in log[-1]
        assert f"targets=127.0.0.1:{new.port}" in log[-1]
        assert await reached(port) == "new"
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 20)
        assert await process.wait() == 0, rest.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    saved = json.loads(
        (tmp_path / "state" / "discovery-istio-system-istio-ingressgateway.json").read_text()
    )
    assert saved["routes"][0]["targets"] == [f"127.0.0.1:{new.port}"]
    await old.close()
    await new.close()


def test_static_forwarding_does_not_import_kubernetes(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        import pyforward.cli.app
        from pyforward.config.load import load_settings
        from pyforward.engine.runtime import serve

        settings = load_settings(
            {"listen": "127.0.0.1:0", "target": ["127.0.0.1:9"]}, None, dict(os.environ)
        )
        async def main():
            stop = asyncio.Event()
            def ready(forwarder):
                stop.set()
            await serve(settings, shutdown_trigger=stop.wait, on_ready=ready)
        asyncio.run(main())
        loaded = [m for m in sys.modules if m.split(".")[0] in ("kubernetes", "urllib3", "yaml")]
        loaded += [m for m in sys.modules if m.startswith("pyforward.discovery.")]
        print(sorted(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The schema's option parsers (and the node address rule --node-ip passes) are all of
    # discovery that static forwarding loads.
    assert result.stdout.strip() == (
        "['pyforward.discovery.nodeaddress', 'pyforward.discovery.options']"
    ), result.stdout
