"""Inputs a new user got wrong: each is one line naming the problem and where it came from
(the flag, the variable, or FILE: key), with exit status 2; and the CLI's small courtesies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pyforward.cli import service as service_cli
from pyforward.cli.app import main
from pyforward.config.model import LogLevel
from pyforward.config.settings import build_settings
from pyforward.systemd import install as service
from pyforward.systemd import systemctl
from pyforward.systemd.install import InstallPaths
from pyforward.systemd.installation import Installation
from tests.harness import run_cli
from tests.kubeapi import KubeApi

TARGET = "127.0.0.1:32653"


@pytest.fixture(autouse=True)
def no_pyforward_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PYFORWARD_"):
            monkeypatch.delenv(key)


def cli(
    args: list[str], capsys: pytest.CaptureFixture[str], paths: InstallPaths | None = None
) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args, paths=paths)
    captured = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def error_line(
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    code: int = 2,
    paths: InstallPaths | None = None,
) -> str:
    """The one line a refused invocation prints, checked for its form and exit status."""
    got, out, err = cli(args, capsys, paths)
    assert (got, out) == (code, ""), err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyforward: error: ")
    return lines[0].removeprefix("pyforward: error: ")


def run_refused(*args: str, env: dict[str, str] | None = None) -> str:
    """The one line `pyforward run ARGS` prints when it refuses its input (exit 2). In a
    process of its own with a deadline: accepting the input would mean forwarding forever."""
    result = run_cli("run", *args, env=env, timeout=20)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pyforward: error: ")
    return lines[0].removeprefix("pyforward: error: ")


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pyforward.toml"
    path.write_text(text)
    return path


# --- values a config file holds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'listen = "18501"\ntarget = []\n',
            "{file}: target: no target given (an empty list); give at least one HOST:PORT",
        ),
        (
            '[[route]]\nlisten = "18501"\ntarget = []\n',
            "{file}: route 1: target: no target given (an empty list)",
        ),
        (
            f'listen = "18501"\ntarget = "{TARGET}"\nconnect_timeout = "5"\n',
            "{file}: connect_timeout: expected a number of seconds, got the string '5'",
        ),
        (
            f'listen = "18501"\ntarget = "{TARGET}"\nkeepalive = "yes"\n',
            "{file}: keepalive: expected true or false, got the string 'yes'",
        ),
        (
            f'[[route]]\nlisten = "18501"\ntarget = "{TARGET}"\nidle_timeout = "30"\n',
            "{file}: route 1: idle_timeout: expected a number of seconds, got the string '30'",
        ),
        (
            f'listen = "18501"\ntarget = "{TARGET}"\nmax_connections = "100"\n',
            "{file}: max_connections: expected a whole number, got the string '100'",
        ),
        (
            f'listen = "18501"\ntarget = "{TARGET}"\nallow = ["10.0.0.0/33"]\n',
            "{file}: allow: invalid network '10.0.0.0/33'",
        ),
        (
            f'listen = "18501"\ntarget = "{TARGET}"\nbacklog = 0\n',
            "{file}: backlog: must be 1-65535, got 0",
        ),
        ('listen = "-1"\ntarget = "127.0.0.1:1"\n', "{file}: listen: invalid listen address"),
        (
            f'listen = "18501"\ntarget = "{TARGET}"\nservice_port = "https"\n',
            "{file}: service_port: service_port is for Kubernetes discovery, which is off",
        ),
        (
            f'[[route]]\nlisten = "18501"\ntarget = "{TARGET}"\nservice_port = "https"\n',
            "{file}: route 1: service_port is for Kubernetes discovery, which is off",
        ),
        (
            'discover = true\n[[route]]\nlisten = "18501"\n'
            f'[[route]]\nlisten = "18502"\ntarget = "{TARGET}"\nkubeconfig = "/k"\n',
            "{file}: route 2: kubeconfig is for a route whose target Kubernetes discovery "
            "finds, and this one has a target; drop one of them",
        ),
    ],
)
def test_bad_file_value_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = config(tmp_path, text)
    assert run_refused("--config", str(path)).startswith(expected.format(file=path))


@pytest.mark.parametrize("text", ['[[route]]\nlisten = "18501"\ntarget = []\n'])
def test_install_refuses_what_run_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = config(tmp_path, text)
    line = error_line(["install", "--dry-run", "--config", str(path)], capsys)
    assert "target: no target given" in line


def test_install_writes_variables_numbers_and_booleans_typed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What install writes, not where this checkout lies (under /tmp it would refuse).
    opt = Installation("/opt/pyforward/bin/pyforward", "/opt/pyforward/bin/python3", ())
    monkeypatch.setattr(service_cli, "find_installation", lambda: opt)
    monkeypatch.setattr(service, "ports_taken", lambda plan: [])
    monkeypatch.setenv("PYFORWARD_CONNECT_TIMEOUT", "5")
    monkeypatch.setenv("PYFORWARD_KEEPALIVE", "yes")
    monkeypatch.setenv("PYFORWARD_MAX_CONNECTIONS", "100")
    code, out, err = cli(
        ["install", "--dry-run", "--name", "edge", "--listen", "443", "--target", TARGET], capsys
    )
    assert code == 0, err
    written = tomllib.loads(out.split("<==\n", 1)[1].split("\n==> ", 1)[0])
    assert written["connect_timeout"] == 5.0
    assert written["keepalive"] is True
    assert written["max_connections"] == 100


# --- flags and variables


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--listen", "18501", "--target", "http://127.0.0.1:32653"],
            "--target: invalid target address 'http://127.0.0.1:32653': a URL is not an address",
        ),
        (
            ["--listen", "18501", "--listen", "18502", "--target", TARGET],
            "--listen given 2 times (--listen 18501 --listen 18502); it names one route's "
            "address: for several ports give --route LISTEN=TARGET once per port",
        ),
        (
            ["--route", f"18501={TARGET}", "--route", f"0.0.0.0:18501={TARGET}"],
            "routes overlap: *:18501 and 0.0.0.0:18501 both listen on port 18501",
        ),
        (
            ["--route", f"[::]:18501={TARGET}", "--route", f"[::1]:18501={TARGET}"],
            "routes overlap: [::]:18501 and [::1]:18501",
        ),
        (
            ["--listen", "18501", "--target", TARGET, "--connect-timeout", "-1"],
            "--connect-timeout: expected more than 0 seconds, got -1",
        ),
        (
            ["--listen", "18501", "--target", TARGET, "--connect-timeout", "0"],
            "--connect-timeout: expected more than 0 seconds, got 0",
        ),
        (
            ["--listen", "-1", "--target", TARGET],
            "--listen: invalid listen address '-1': port must be 0-65535, got -1",
        ),
        (
            ["--listen", "18501", "--target", TARGET, "--service-port", "https"],
            "--service-port: service_port is for Kubernetes discovery, which is off; "
            "add --discover",
        ),
        (
            ["--listen", "18501", "--target", TARGET, "-q", "--log-level", "debug"],
            "--quiet and --log-level debug contradict each other",
        ),
    ],
)
def test_bad_flag_is_one_line_naming_it(args: list[str], expected: str) -> None:
    assert run_refused(*args).startswith(expected)


def test_discover_refuses_repeated_listen_too(capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(["discover", "--listen", "443", "--listen", "80"], capsys)
    assert line.startswith("--listen given 2 times (--listen 443 --listen 80)")


def test_routes_on_distinct_addresses_of_one_port_do_not_overlap() -> None:
    settings = build_settings(
        {
            "route": [
                f"127.0.0.1:18501={TARGET}",
                f"127.0.0.2:18501={TARGET}",
                f"[::]:18501={TARGET}",
            ]
        },
        {},
    )
    assert len(settings.routes) == 3


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PYFORWARD_ALLOW", "10.0.0.0/33", "PYFORWARD_ALLOW: invalid network '10.0.0.0/33'"),
        ("PYFORWARD_BACKLOG", "0", "PYFORWARD_BACKLOG: must be 1-65535, got 0"),
        ("PYFORWARD_LISTEN", "-1", "PYFORWARD_LISTEN: invalid listen address '-1'"),
        ("PYFORWARD_TARGET", "http://x:1", "PYFORWARD_TARGET: invalid target address"),
        ("PYFORWARD_SERVICE_PORT", "https", "PYFORWARD_SERVICE_PORT: service_port is for"),
    ],
)
def test_bad_variable_is_named(variable: str, value: str, expected: str) -> None:
    env = {"PYFORWARD_LISTEN": "18501", "PYFORWARD_TARGET": TARGET, variable: value}
    assert run_refused(env=env).startswith(expected)


def test_quiet_and_log_level_in_different_places_take_the_nearer() -> None:
    both = {"listen": "18501", "target": [TARGET]}
    flag_level = build_settings({**both, "log_level": "debug"}, {"PYFORWARD_QUIET": "1"})
    assert flag_level.log_level == LogLevel.DEBUG
    flag_quiet = build_settings({**both, "quiet": True}, {"PYFORWARD_LOG_LEVEL": "debug"})
    assert flag_quiet.log_level == LogLevel.WARNING


def test_config_directory_is_answered_alike_from_flag_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from_flag = error_line(["run", "--config", str(tmp_path)], capsys)
    monkeypatch.setenv("PYFORWARD_CONFIG", str(tmp_path))
    from_variable = error_line(["run"], capsys)
    assert from_flag == f"--config: {tmp_path} is a directory, not a config file"
    assert from_variable == f"PYFORWARD_CONFIG: {tmp_path} is a directory, not a config file"


def test_unknown_option_suggests_only_a_near_miss(capsys: pytest.CaptureFixture[str]) -> None:
    far = error_line(["run", "--listen", "18501", "--target", TARGET, "--foo"], capsys)
    assert far == "No such option: --foo"
    near = error_line(["run", "--listne", "18501"], capsys)
    assert near == "No such option: --listne (did you mean --listen?)"


def test_no_arguments_prints_the_usual_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli([], capsys)
    assert code == 2
    assert err == ""
    assert out.startswith("Usage: pyforward [OPTIONS] COMMAND [ARGS]...\n")
    assert "\nCommands:\n" in out
    assert "  run " in out


# --- install and uninstall


def test_install_named_unit_that_does_not_exist_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = error_line(
        ["install", "--dry-run", "--name", "k3s-ingress-forward"],
        capsys,
        paths=InstallPaths(unit_dir=tmp_path),
    )
    assert line.startswith(
        f"no route given, and there is no unit {tmp_path}/k3s-ingress-forward.service "
        "to take routes from"
    )


def test_from_unit_on_a_binary_file_is_not_a_unit_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "socat"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00")
    line = error_line(["install", "--dry-run", "--from-unit", str(binary)], capsys)
    assert line == f"{binary} is not a unit file: it is not text"


@pytest.mark.parametrize(("root", "systemd"), [(False, True), (True, False)])
def test_uninstall_where_it_cannot_act_gives_its_own_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root: bool, systemd: bool
) -> None:
    monkeypatch.setattr(systemctl, "is_root", lambda: root)
    monkeypatch.setattr(systemctl, "systemd_running", lambda: systemd)
    line = error_line(["uninstall"], capsys, code=1)
    assert line.startswith("pyforward uninstall needs")
    # Neither a dry run nor forwarding in the foreground is what someone uninstalling wants.
    assert "--dry-run" not in line
    assert "pyforward run" not in line


# --- discover --json


def test_discover_json_failure_is_json_with_a_failing_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = KubeApi(tmp_path)
    api.start()
    api.stop()  # the kubeconfig now names an API server that refuses connections
    code, out, err = cli(["discover", "--json", "--kubeconfig", str(api.kubeconfig)], capsys)
    assert code == 1, err
    data = json.loads(out)
    assert data["kind"] == "ApiUnreachable"
    assert data["error"].startswith(
        f"cannot reach the Kubernetes API at https://127.0.0.1:{api.port}"
    )


def test_discover_json_bad_input_is_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["discover", "--json", "--service", "no-slash"], capsys)
    assert code == 2
    assert json.loads(out)["error"].startswith("--service: ")


# --- smaller expectations


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    code, out, _ = cli([flag], capsys)
    assert (code, out) == (0, "pyforward 0.1.0\n")


def test_shell_completion_is_enabled() -> None:
    env = {**os.environ, "_PYFORWARD_COMPLETE": "complete_bash", "COMP_WORDS": "pyforward ru"}
    env["COMP_CWORD"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pyforward"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.stdout.split() == ["run"], result.stderr
    code = subprocess.run(
        [sys.executable, "-m", "pyforward", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert code.returncode == 0
    assert "complete" in code.stdout


def test_run_help_lists_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["run", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for variable in ("PYFORWARD_CONFIG", "PYFORWARD_LISTEN", "PYFORWARD_CONNECT_TIMEOUT"):
        assert variable in flat


def test_install_help_lists_the_options_it_takes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["install", "--help"], capsys)
    assert code == 0
    assert "every option of run" not in out
    assert "Options of run" in out
    for option in ("--dry-run", "--from-unit", "--listen", "--target", "--route", "--config"):
        assert option in out
    assert out.count("--kubeconfig") == 1  # install's own, not run's as well
