"""install/status/uninstall where they cannot act, and the parts that need no systemd."""

from __future__ import annotations

import json
import os
import socket
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyforward.cli import service as service_cli
from pyforward.cli.app import main
from pyforward.config.settings import build_settings
from pyforward.systemd import install as service
from pyforward.systemd import procnet as ports
from pyforward.systemd import status as service_status
from pyforward.systemd import systemctl
from pyforward.systemd.install import InstallPaths
from pyforward.systemd.installation import Installation
from pyforward.systemd.status import (
    Check,
    Level,
    StatusReport,
    through_listener,
)

ROUTE = ["--listen", "443", "--target", "10.0.0.5:32653"]
IN_OPT = Installation("/opt/pyforward/bin/pyforward", "/opt/pyforward/bin/python3", ())
PORTS_TAKEN = service.ports_taken


@pytest.fixture(autouse=True)
def installed_in_opt(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about what install makes of its input: they run as if installed in
    /opt, on a machine whose ports are free. (This checkout's own installation, wherever it
    lies, is tested in test_installation and test_units; the port check below.)"""
    monkeypatch.setattr(service_cli, "find_installation", lambda: IN_OPT)
    monkeypatch.setattr(service, "ports_taken", lambda plan: [])


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], paths: InstallPaths | None = None
) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args, paths=paths)
    captured = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemctl, "is_root", lambda: False)
    monkeypatch.setattr(systemctl, "systemd_running", lambda: True)


@pytest.fixture
def no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemctl, "is_root", lambda: True)
    monkeypatch.setattr(systemctl, "systemd_running", lambda: False)


@pytest.mark.usefixtures("not_root")
@pytest.mark.parametrize("command", [["install", *ROUTE]])
def test_not_root_is_one_line_naming_what_still_works(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(command, capsys)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "needs root" in err
    assert "--dry-run" in err
    assert "pyforward run" in err


@pytest.mark.usefixtures("no_systemd")
@pytest.mark.parametrize("command", [["install", *ROUTE]])
def test_no_systemd_is_one_line_naming_what_still_works(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(command, capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert "needs a running systemd" in err
    assert "pyforward run" in err


@pytest.mark.usefixtures("no_systemd")
def test_status_without_systemd_is_down(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["status", "--json"], capsys)
    assert code == 2
    report = json.loads(out)
    assert report["checks"][0]["level"] == "down"
    assert "not running" in report["checks"][0]["detail"]


@pytest.mark.usefixtures("not_root")
def test_dry_run_needs_neither_root_nor_systemd(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["install", "--dry-run", "--name", "edge", *ROUTE], capsys)
    assert code == 0
    assert "==> /etc/pyforward/edge.toml <==" in out
    assert "==> /etc/systemd/system/edge.service <==" in out


@pytest.mark.usefixtures("not_root")
def test_dry_run_shows_the_files_and_why_the_install_would_refuse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    why = "this pyforward lives in /tmp/x/.venv, under /tmp: a service cannot run from there"
    refused = Installation("/tmp/x/.venv/bin/pyforward", "/usr/bin/python3", (), refusals=(why,))
    monkeypatch.setattr(service_cli, "find_installation", lambda: refused)
    code, out, err = run_cli(["install", "--dry-run", *ROUTE], capsys)
    # Exit 1, as install itself: the input is fine, this installation cannot be a service.
    assert code == 1
    assert "ExecStart=/tmp/x/.venv/bin/pyforward run --config /etc/pyforward/pyforward.toml" in out
    assert err == f"pyforward: error: install (without --dry-run) would refuse: {why}\n"


def test_a_port_another_program_holds_is_refused_by_install_and_its_dry_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(service, "ports_taken", PORTS_TAKEN)
    monkeypatch.setattr(service, "_pids_of", lambda unit: set())  # no such service yet
    paths = InstallPaths(config_dir=tmp_path / "etc", unit_dir=tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as other:  # "another program": this one
        port = other.getsockname()[1]
        args = ["--listen", f"127.0.0.1:{port}", "--target", "10.0.0.5:32653"]
        held = (
            f"cannot listen on 127.0.0.1:{port}: 127.0.0.1:{port} is already held by "
            f"pid {os.getpid()} ({ports.process_name(os.getpid())}); stop it or choose "
            f"another port (see: ss -ltnp 'sport = :{port}')"
        )
        code, out, err = run_cli(["install", "--dry-run", *args], capsys, paths)
        assert code == 1
        assert f"==> {tmp_path}/pyforward.service <==" in out
        assert err == f"pyforward: error: install (without --dry-run) would refuse: {held}\n"

        monkeypatch.setattr(systemctl, "is_root", lambda: True)
        monkeypatch.setattr(systemctl, "systemd_running", lambda: True)
        code, out, err = run_cli(["install", *args], capsys, paths)
        assert (code, out, err) == (1, "", f"pyforward: error: {held}\n")
        assert list(tmp_path.iterdir()) == []  # refused before writing anything
    # Free again: the dry run has nothing to say.
    code, out, err = run_cli(["install", "--dry-run", *args], capsys, paths)
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "a b", *ROUTE], "--name 'a b'"),
        (["--listen", "0", "--target", "10.0.0.5:1"], "needs a fixed port"),
        (["--listen", "443"], "needs a target"),
        ([], "no route to forward"),
        (["--bogus", *ROUTE], "No such option: --bogus"),
        (["--socket-activation", "--listen", "localhost:443", "--target", "10.0.0.5:1"], "numeric"),
        (["--kubeconfig", "/etc/my kube.yaml", *ROUTE], "free of spaces"),
    ],
)
def test_bad_input_is_exit_2_and_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["install", "--dry-run", *args], capsys)
    assert (code, out) == (2, "")
    assert message in err
    assert err.count("\n") == 1


def test_report_exit_codes_and_json() -> None:
    report = StatusReport("fwd")
    assert report.exit_code == 0
    report.checks.append(Check("fwd.service", Level.OK, "active (running)"))
    report.checks.append(Check("fwd.service", Level.WARN, "disabled: it will not start at boot"))
    assert report.exit_code == 1
    report.checks.append(Check("target 10.0.0.5:1", Level.DOWN, "unreachable: Connection refused"))
    assert report.exit_code == 2
    data = json.loads(report.to_json())
    assert [check["level"] for check in data["checks"]] == ["ok", "warn", "down"]
    assert data["exit_code"] == 2
    assert report.to_text().splitlines()[-1] == "down: forwarding does not work"


@pytest.fixture
def closing_server() -> Iterator[int]:
    """Accepts and closes at once, as the forwarder does when the target refuses."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.shutdown(socket.SHUT_RDWR)
    server.close()


def test_through_listener_sees_an_immediate_close(closing_server: int) -> None:
    assert through_listener("127.0.0.1", closing_server, wait=2.0) == (
        "closed at once: the forwarder could not reach the target"
    )


def test_through_listener_accepts_a_connection_that_stays() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert through_listener("127.0.0.1", server.getsockname()[1], wait=0.2) is None


def test_unit_summary() -> None:
    props = {
        "LoadState": "loaded",
        "ActiveState": "failed",
        "SubState": "failed",
        "UnitFileState": "enabled",
        "MainPID": "0",
        "NRestarts": "5",
        "Result": "exit-code",
        "ExecMainStatus": "203",
    }
    assert systemctl.unit_summary("fwd.service", props) == (
        "fwd.service: failed (failed), enabled, 5 restarts, result exit-code, last exit status 203"
    )


SOCAT_UNIT = """[Unit]
After=network-online.target k3s.service
[Service]
User=root
Restart=always
ExecStart=/usr/bin/socat -T 60 TCP-LISTEN:443,fork,reuseaddr TCP:10.211.55.14:32653
[Install]
WantedBy=multi-user.target
"""


def test_dry_run_carries_routes_over_from_the_socat_unit_it_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "k3s-ingress-forward.service").write_text(SOCAT_UNIT)
    code, out, err = run_cli(
        ["install", "--dry-run", "--name", "k3s-ingress-forward", "--idle-timeout", "30"],
        capsys,
        InstallPaths(unit_dir=tmp_path),
    )
    assert code == 0, err
    assert "from k3s-ingress-forward.service: listen *:443 (from TCP-LISTEN:443)" in err
    assert "would stop k3s-ingress-forward.service (not written by pyforward)" in err
    config = tomllib.loads(out.split("<==\n", 1)[1].split("\n==> ", 1)[0])
    # The routes come from socat's command line; a flag given still wins over -T 60.
    assert config["route"] == [{"listen": "443", "target": ["10.211.55.14:32653"]}]
    assert config["idle_timeout"] == 30.0
    # The unit on disk is untouched by a dry run.
    assert (tmp_path / "k3s-ingress-forward.service").read_text() == SOCAT_UNIT


def test_no_route_and_a_unit_that_is_not_socat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "web.service").write_text("[Service]\nExecStart=/usr/sbin/nginx\n")
    code, out, err = run_cli(
        ["install", "--dry-run", "--name", "web"], capsys, InstallPaths(unit_dir=tmp_path)
    )
    assert (code, out) == (2, "")
    assert "cannot be carried over: ExecStart= runs '/usr/sbin/nginx', not socat" in err


def route_checks(ours: set[int], port: int, targets: list[int]) -> list[tuple[str, Level]]:
    """(kind of check, level) for a route from 127.0.0.1:port to the target ports."""
    text = ",".join(f"127.0.0.1:{t}" for t in targets)
    route = build_settings({"route": [f"127.0.0.1:{port}={text}"]}, {}).routes[0]
    report = StatusReport("fwd")
    listening = ports.listening_sockets()
    held = ports.owners({sock.inode for sock in listening})
    service_status.check_route(report, route, listening, held, ours, probe_through=True)
    return [(check.subject.split()[0], check.level) for check in report.checks]


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_route_checks_with_real_sockets() -> None:
    me = {os.getpid()}
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_server(("127.0.0.1", 0)) as target,
    ):
        port, live, dead = listener.getsockname()[1], target.getsockname()[1], unused_port()
        # Held by the service (this process here); one of two failover targets down: a warning.
        assert route_checks(me, port, [live, dead]) == [
            ("listen", Level.OK),
            ("target", Level.OK),
            ("target", Level.WARN),
            ("through", Level.OK),
        ]
        # Its only target down: forwarding is down, and no probe goes through.
        assert route_checks(me, port, [dead]) == [("listen", Level.OK), ("target", Level.DOWN)]
        # The port is held, but not by the service: down.
        assert route_checks({1}, port, [live]) == [("listen", Level.DOWN)]
    # Nothing listening at all.
    assert route_checks(me, port, [live]) == [("listen", Level.DOWN)]


def test_discovery_kubeconfig_goes_to_the_service_as_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "k3s.yaml"
    kubeconfig.write_text("apiVersion: v1\n")
    kubeconfig.chmod(0o600)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    code, out, err = run_cli(["install", "--dry-run", "--discover", "--preset", "istio"], capsys)
    assert code == 0, err
    assert f"LoadCredential=kubeconfig:{kubeconfig}\n" in out
    # Which file the service acts with, and why that one, is said before anything is written.
    assert err == (
        f"the service is handed kubeconfig {kubeconfig} (found as $KUBECONFIG, the first "
        "kubeconfig `pyforward discover` would use here; give --kubeconfig FILE to hand over "
        "another), as its credential 'kubeconfig' (LoadCredential=, read by systemd as root)\n"
    )
    config = tomllib.loads(out.split("<==\n", 1)[1].split("\n==> ", 1)[0])
    # The service finds it in $CREDENTIALS_DIRECTORY: the file names no kubeconfig.
    assert config == {"preset": "istio", "discover": True}

    # One named in a config file goes the same way.
    given = tmp_path / "pyforward.toml"
    given.write_text(f'discover = true\npreset = "istio"\nkubeconfig = "{kubeconfig}"\n')
    monkeypatch.delenv("KUBECONFIG")
    code, out, err = run_cli(["install", "--dry-run", "--config", str(given)], capsys)
    assert code == 0, err
    assert f"LoadCredential=kubeconfig:{kubeconfig}\n" in out
    assert "kubeconfig =" not in out


def test_install_refuses_a_kubeconfig_that_would_run_a_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "admin", "context": {"cluster": "c", "user": "sso"}}],
                "current-context": "admin",
                "users": [
                    {"name": "sso", "user": {"exec": {"command": "touch", "args": [str(marker)]}}}
                ],
            }
        )
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    code, out, err = run_cli(["install", "--dry-run", "--discover", "--preset", "istio"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"pyforward: error: kubeconfig {kubeconfig} ($KUBECONFIG): user 'sso' of context "
        "'admin' gets its credentials from a program (exec: runs 'touch'); pyforward runs no "
        "program named in a kubeconfig: give it one whose user has a token or a client "
        "certificate, such as a ServiceAccount token allowed to list and watch services and "
        "nodes\n"
    )
    assert not marker.exists()


def test_from_unit_carries_the_seed_units_listen_port_and_target_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_socat_unit import SEED_UNIT  # noqa: PLC0415

    unit = tmp_path / "k3s-ingress-forward.service"
    unit.write_text(SEED_UNIT)
    code, out, err = run_cli(["install", "--dry-run", "--from-unit", str(unit)], capsys)
    assert code == 0, err
    config = tomllib.loads(out.split("==> /etc/pyforward/pyforward.toml <==\n")[1].split("==>")[0])
    settings = build_settings({}, {}, config)
    [route] = settings.routes
    assert (str(route.listen), [str(t) for t in route.targets]) == (
        "*:443",
        ["10.211.55.14:32653"],
    )
    assert f"from {unit}: " in err  # says what it carried


def test_from_unit_that_is_not_a_socat_unit_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = tmp_path / "other.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/nginx -g 'daemon off;'\n")
    code, out, err = run_cli(["install", "--dry-run", "--from-unit", str(unit)], capsys)
    assert (code, out) == (2, "")
    assert "cannot be carried over" in err
    assert err.count("\n") == 1
    code, out, err = run_cli(
        ["install", "--dry-run", "--from-unit", "/nonexistent.service"], capsys
    )
    assert (code, err.count("\n")) == (2, 1)
    assert "does not exist" in err


BAD_NAMES = ["-Hhost", "--help", "..", ".hidden", "a:b", "a@b", "a\\b", "a b", "x" * 248, ""]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize(
    "command", [["install", "--dry-run", *ROUTE], ["uninstall"], ["status", "--json"]]
)
def test_a_name_that_is_no_unit_name_is_refused_where_it_enters(
    command: list[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli([*command, f"--name={name}"], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "--name" in err


def test_the_longest_unit_name_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    name = "x" * 247  # with .service, systemd's 255
    code, out, err = run_cli(["install", "--dry-run", f"--name={name}", *ROUTE], capsys)
    assert code == 0, err
    assert f"==> /etc/systemd/system/{name}.service <==" in out


def test_systemctl_never_reads_a_unit_name_as_an_option() -> None:
    assert systemctl.command("stop", ["-Hhost.service"]) == [
        "systemctl",
        "stop",
        "--",
        "-Hhost.service",
    ]
    # The real systemctl: after `--`, -Hhost.service is a unit (not `-H host`).
    outcome = systemctl.run("is-enabled", "-Hhost.service")
    assert not outcome.ok
    assert "-Hhost.service" in outcome.output


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InstallPaths:
    """Root and systemd as far as the checks go, with /etc/pyforward and the unit
    directory under tmp_path."""
    monkeypatch.setattr(systemctl, "is_root", lambda: True)
    monkeypatch.setattr(systemctl, "systemd_running", lambda: True)
    paths = InstallPaths(config_dir=tmp_path / "pyforward", unit_dir=tmp_path / "systemd")
    paths.unit_dir.mkdir()
    paths.config_dir.mkdir()
    return paths


def config_install_writes(
    name: str, capsys: pytest.CaptureFixture[str], paths: InstallPaths
) -> tuple[Path, str]:
    code, out, err = run_cli(["install", "--dry-run", f"--name={name}", *ROUTE], capsys, paths)
    assert code == 0, err
    path = service.config_path(name, paths)
    return path, out.split(f"==> {path} <==\n")[1].split("==> ")[0]


def test_uninstall_leaves_a_config_file_install_did_not_write(
    paths: InstallPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    own = paths.config_dir / "edge.toml"
    own.write_text('# my own routes\nlisten = "443"\ntarget = ["10.0.0.5:1"]\n')
    # One install wrote for another name is not edge's either.
    other_path, other_text = config_install_writes("other", capsys, paths)
    (paths.config_dir / "edge2.toml").write_text(other_text)
    for name, path in (("edge", own), ("edge2", paths.config_dir / "edge2.toml")):
        before = path.read_text()
        code, out, err = run_cli(["uninstall", f"--name={name}"], capsys, paths)
        assert code == 0, err
        assert path.read_text() == before
        assert f"{path} was not written by `pyforward install --name {name}`" in out
        assert f"{name} is not installed; nothing to remove" in out
    assert not other_path.exists()


def test_uninstall_removes_the_config_file_install_wrote(
    paths: InstallPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    path, text = config_install_writes("edge", capsys, paths)
    path.write_text(text)
    code, out, err = run_cli(["uninstall", "--name=edge"], capsys, paths)
    assert code == 0, err
    assert not path.exists()
    assert f"removed {path}" in out


def test_install_keeps_a_config_file_it_did_not_write_and_uninstall_restores_it(
    paths: InstallPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    own = service.config_path("edge", paths)
    own.write_text('# my own routes, with my comments\nlisten = "443"\ntarget = ["10.0.0.5:1"]\n')
    before = own.read_text()
    code, _, err = run_cli(
        ["install", "--dry-run", "--name=edge", "--config", str(own)], capsys, paths
    )
    assert code == 0, err
    assert f"would keep {own} (not written by pyforward install)" in err
    assert own.read_text() == before  # a dry run changes nothing
    # What install does before it writes: the file moves aside, its own takes the place.
    path, text = config_install_writes("edge", capsys, paths)
    service.keep_foreign_config("edge", print, paths)
    assert not own.exists()
    path.write_text(text)
    service.keep_foreign_config("edge", print, paths)  # its own file stays
    assert path.read_text() == text
    code, out, err = run_cli(["uninstall", "--name=edge"], capsys, paths)
    assert code == 0, err
    assert own.read_text() == before
    assert f"restored {own}" in out


@pytest.mark.usefixtures("not_root")
def test_socket_activation_with_workers_says_a_udp_route_is_served_by_one_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = tmp_path / "edge.toml"
    given.write_text(
        'workers = 2\n[[route]]\nlisten = "0.0.0.0:53"\ntarget = "10.0.0.5:53"\nprotocol = "udp"\n'
    )
    code, out, err = run_cli(
        ["install", "--dry-run", "--socket-activation", "--config", str(given)], capsys
    )
    assert code == 0
    assert "ListenDatagram=0.0.0.0:53" in out
    assert err.splitlines() == [
        "warning: UDP route 0.0.0.0:53: under socket activation systemd passes one socket, "
        "served by worker 0 alone; without --socket-activation each worker gets its own"
    ]
    # Without socket activation, each worker binds its own: nothing to say.
    code, out, err = run_cli(["install", "--dry-run", "--config", str(given)], capsys)
    assert (code, err) == (0, "")
