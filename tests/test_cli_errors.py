"""Every start-up error through the CLI: one clear line on stderr and the right exit code."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.harness import run_cli


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pyforward: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["run", "--listen", "99999", "--target", "127.0.0.1:80"], 2, "port must be 0-65535"),
        (["run", "--listen", "80", "--target", "127.0.0.1"], 2, "expected HOST:PORT"),
        (["run", "--listen", "80", "--target", "::1:80"], 2, "[ADDRESS]:PORT"),
        (["run", "--listen", "abc", "--target", "127.0.0.1:80"], 2, "'abc' is not a number"),
        (["run", "--listen", "80", "--target", "bad_host!:80"], 2, "not a host name"),
        (["run", "--listne", "80"], 2, "No such option: --listne"),
        (["run", "--listen", "80"], 2, "needs a target"),
        (["run"], 2, "no route to forward"),
        (["run", "--route", "80:127.0.0.1:8080"], 2, "expected LISTEN=TARGET"),
        (["run", "--listen", "1", "--target", "a:1", "--relay", "zero"], 2, "--relay"),
        (["run", "--listen", "1", "--target", "a:1", "--idle-timeout", "-1"], 2, "non-negative"),
        (["run", "--config", "/nonexistent/pyforward.toml"], 2, "does not exist"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_bad_input_is_one_line_and_exit_code(args: list[str], code: int, expected: str) -> None:
    result = run_cli(*args)
    assert result.returncode == code, result.stderr
    assert expected in one_error_line(result.stderr)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('listen = "80"\ntarget = "127.0.0.1:1"\nidle_timout = 5\n', "unknown key 'idle_timout'"),
        ("listen = 80 80\n", "not valid TOML"),
        ('[[route]]\nlisten = "80"\n', "needs both 'listen' and 'target'"),
        ('[[route]]\nlisten = "80"\ntarget = "a:1"\nrelay = "copy"\n', "unknown key 'relay'"),
        ('listen = "80"\ntarget = "a:1"\nconnect_timeout = "soon"\n', "connect_timeout"),
    ],
)
def test_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "pyforward.toml"
    config.write_text(text)
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert expected in line
    assert str(config) in line


def test_bad_environment_variable_names_the_variable() -> None:
    result = run_cli(
        "run", "--listen", "1", "--target", "a:1", env={"PYFORWARD_MAX_CONNECTIONS": "lots"}
    )
    assert result.returncode == 2
    assert "PYFORWARD_MAX_CONNECTIONS" in one_error_line(result.stderr)


def test_port_already_in_use_names_the_port_and_how_to_see_who_holds_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        result = run_cli("run", "--listen", f"127.0.0.1:{port}", "--target", "127.0.0.1:1")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert f"port {port} is already in use" in line
    assert "ss -ltnp" in line


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_privileged_port_without_permission_says_what_is_needed() -> None:
    # As root, drop CAP_NET_BIND_SERVICE, as an unprivileged service would run.
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-net_bind_service", "--"]
    if os.geteuid() != 0:
        drop = []
    result = run_cli("run", "--listen", "127.0.0.1:81", "--target", "127.0.0.1:1", prefix=drop)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "permission denied" in line
    assert "CAP_NET_BIND_SERVICE" in line


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_target_that_does_not_resolve() -> None:
    # In a fresh network namespace no name server is reachable and no query leaves.
    result = run_cli(
        "run",
        "--listen",
        "127.0.0.1:0",
        "--target",
        "ingress.example.internal:443",
        prefix=["unshare", "--net", "--"],
    )
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "'ingress.example.internal' does not resolve" in line


def test_unknown_listen_host_address() -> None:
    result = run_cli("run", "--listen", "192.0.2.1:8080", "--target", "127.0.0.1:1")
    assert result.returncode == 1
    assert "is not an address of this host" in one_error_line(result.stderr)
