"""The unit files: what systemd says of them, and the examples kept in systemd/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyforward.cli import service as service_cli
from pyforward.cli.app import main
from pyforward.config.addresses import Address, parse_listen
from pyforward.errors import ConfigError
from pyforward.systemd.installation import Installation
from pyforward.systemd.units import (
    UnitSpec,
    check_name,
    check_path,
    command_line,
    listen_stream,
    render_units,
)
from tests.places import REFUSAL, VOLATILE_AREA

ROOT = Path(__file__).resolve().parent.parent
PYFORWARD = str(Path(sys.prefix) / "bin" / "pyforward")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

# The examples in systemd/: a venv in /opt, and the commands that render them.
EXAMPLE_INSTALLATION = Installation(
    "/opt/pyforward/bin/pyforward", "/opt/pyforward/bin/python3", ()
)
EXAMPLES = {
    "systemd": ["--route", "443=10.0.0.5:32653"],
    "systemd/socket-activation": [
        "--socket-activation",
        "--route",
        "443=10.0.0.5:32653",
        "--kubeconfig",
        "/etc/rancher/k3s/k3s.yaml",
    ],
}


def split_dry_run(text: str) -> dict[str, str]:
    """`==> PATH <==` blocks of `install --dry-run` output, by file name."""
    blocks = re.split(r"^==> (\S+) <==\n", text, flags=re.MULTILINE)
    assert blocks[0] == ""
    return {Path(path).name: body for path, body in zip(blocks[1::2], blocks[2::2], strict=True)}


def dry_run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["install", "--dry-run", *args])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return split_dry_run(captured.out)


def write_examples() -> None:
    """Regenerate systemd/ (scripts/render-example-units runs this)."""
    import io  # noqa: PLC0415
    from contextlib import redirect_stdout  # noqa: PLC0415

    service_cli.find_installation = lambda: EXAMPLE_INSTALLATION
    for directory, args in EXAMPLES.items():
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(SystemExit):
            main(["install", "--dry-run", *args])
        for name, text in split_dry_run(out.getvalue()).items():
            (ROOT / directory).mkdir(parents=True, exist_ok=True)
            (ROOT / directory / name).write_text(text)


@pytest.mark.parametrize("directory", sorted(EXAMPLES))
def test_examples_in_the_repository_are_what_install_renders(
    directory: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(service_cli, "find_installation", lambda: EXAMPLE_INSTALLATION)
    rendered = dry_run(EXAMPLES[directory], capsys)
    kept = {path.name: path.read_text() for path in (ROOT / directory).glob("pyforward.*")}
    assert kept == rendered, "regenerate with scripts/render-example-units"


def this_installation_units(tmp_path: Path, args: list[str]) -> list[Path]:
    """Units `pyforward install --dry-run` renders for this very installation, on disk."""
    result = subprocess.run(
        [PYFORWARD, "install", "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # From a checkout under /tmp, the files are shown all the same, and the refusal said;
    # a machine whose port 443 is taken gets the same kind of line, for that.
    refusals = result.stderr.splitlines()
    assert all(line.startswith(REFUSAL) for line in refusals), result.stderr
    assert result.returncode == (1 if refusals else 0), result.stderr
    if VOLATILE_AREA is not None:
        assert f"under {VOLATILE_AREA}: a service cannot run from there" in result.stderr
    paths = []
    for name, text in split_dry_run(result.stdout).items():
        if name.endswith((".service", ".socket")):
            (tmp_path / name).write_text(text)
            paths.append(tmp_path / name)
    return paths


VARIANTS = {
    "plain": ["--listen", "443", "--target", "10.0.0.5:32653"],
    "socket-activation": [
        "--socket-activation",
        "--route",
        "443=10.0.0.5:32653",
        "--route",
        "127.0.0.1:8443=10.0.0.5:31000",
        "--kubeconfig",
        "/etc/rancher/k3s/k3s.yaml",
    ],
}


@pytest.fixture
def analyze() -> str:
    if SYSTEMD_ANALYZE is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    return SYSTEMD_ANALYZE


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_systemd_analyze_verify_says_nothing(variant: str, tmp_path: Path, analyze: str) -> None:
    units = this_installation_units(tmp_path, VARIANTS[variant])
    result = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and bad values are only warnings: any output at all is a failure.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_security_exposure_is_at_most_2(variant: str, tmp_path: Path, analyze: str) -> None:
    service = next(
        p for p in this_installation_units(tmp_path, VARIANTS[variant]) if p.suffix == ".service"
    )
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_verify_catches_a_missing_binary(tmp_path: Path, analyze: str) -> None:
    """The check above can fail: a unit naming a binary that is not there."""
    spec = UnitSpec(
        "pyforward",
        "/nonexistent/bin/pyforward",
        "/etc/pyforward/pyforward.toml",
        (parse_listen("443"),),
    )
    (tmp_path / "pyforward.service").write_text(render_units(spec)["pyforward.service"])
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "pyforward.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 or result.stderr


def spec(**changes: object) -> UnitSpec:
    values: dict[str, object] = {
        "name": "fwd",
        "exec_start": "/opt/pyforward/bin/pyforward",
        "config_path": "/etc/pyforward/fwd.toml",
        "listen": (parse_listen("443"), parse_listen("10.0.0.1:8443"), parse_listen("[::1]:9443")),
    }
    values.update(changes)
    return UnitSpec(**values)  # type: ignore[arg-type]


def lines(text: str) -> set[str]:
    return set(text.splitlines())


def test_service_unit_settings() -> None:
    units = render_units(spec())
    assert list(units) == ["fwd.service"]
    service = lines(units["fwd.service"])
    assert {
        "Type=notify",
        "ExecStart=/opt/pyforward/bin/pyforward run --config /etc/pyforward/fwd.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "WatchdogSec=10",
        "TimeoutStopSec=30",
        "After=network-online.target k3s.service",
        "Wants=network-online.target",
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ProtectHome=yes",
        "StateDirectory=fwd",
    } <= service
    assert not any(line.startswith(("LoadCredential=", "BindReadOnlyPaths=")) for line in service)


def test_installation_under_home_is_bound_into_an_empty_home() -> None:
    service = lines(
        render_units(spec(read_only_paths=("/root/venv", "/root/.pyenv/versions/3.11.7")))[
            "fwd.service"
        ]
    )
    assert "ProtectHome=tmpfs" in service
    assert "BindReadOnlyPaths=/root/venv /root/.pyenv/versions/3.11.7" in service


def test_socket_activation_and_credential() -> None:
    units = render_units(
        spec(socket_activation=True, kubeconfig="/etc/rancher/k3s/k3s.yaml", backlog=512)
    )
    service, socket_unit = lines(units["fwd.service"]), lines(units["fwd.socket"])
    assert {"Requires=fwd.socket", "After=fwd.socket", "CapabilityBoundingSet="} <= service
    assert "LoadCredential=kubeconfig:/etc/rancher/k3s/k3s.yaml" in service
    assert not any(line.startswith("AmbientCapabilities=") for line in service)
    assert {
        "ListenStream=443",
        "ListenStream=10.0.0.1:8443",
        "ListenStream=[::1]:9443",
        "Backlog=512",
        "Service=fwd.service",
        "WantedBy=sockets.target",
    } <= socket_unit


def test_names_and_paths_that_cannot_go_into_a_unit() -> None:
    assert check_name("k3s-ingress-forward") == "k3s-ingress-forward"
    with pytest.raises(ConfigError, match=r"without \.service"):
        check_name("pyforward.service")
    with pytest.raises(ConfigError, match="letters, digits"):
        check_name("a/b")
    with pytest.raises(ConfigError, match="free of spaces"):
        check_path("/opt/my venv/bin/pyforward", "entry point")
    with pytest.raises(ConfigError, match="free of spaces"):
        check_path("/opt/100%/bin/pyforward", "entry point")
    with pytest.raises(ConfigError, match="numeric address"):
        listen_stream(parse_listen("localhost:443"))


def verify(analyze: str, *units: Path) -> str:
    """What `systemd-analyze verify` says of the units: empty when all is well."""
    result = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr


INJECTION = '[::1%%\nExecStartPre=/bin/sh -c "id >/tmp/x"\nListenStream=127.0.0.1:8443\n#]:8443'


def test_a_zone_that_writes_unit_lines_is_refused_from_a_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["install", "--dry-run", "--socket-activation", "--listen", INJECTION,
              "--target", "127.0.0.1:80"])  # fmt: skip
    captured = capsys.readouterr()
    assert (info.value.code, captured.out) == (2, "")
    assert captured.err.count("\n") == 1
    assert "is not an interface name" in captured.err


def test_a_zone_that_writes_unit_lines_is_refused_from_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "evil.toml"
    config.write_text(
        '[[route]]\nlisten = "[::1%%\\nExecStartPre=/bin/sh -c \\"id >/tmp/x\\"\\n'
        'ListenStream=127.0.0.1:8443\\n#]:8443"\ntarget = ["127.0.0.1:80"]\n'
    )
    with pytest.raises(SystemExit) as info:
        main(["install", "--dry-run", "--socket-activation", "--config", str(config)])
    captured = capsys.readouterr()
    assert (info.value.code, captured.out) == (2, "")
    assert captured.err.count("\n") == 1
    assert "is not an interface name" in captured.err


def test_a_zone_that_writes_unit_lines_is_refused_from_a_socat_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # socat's own lexer reads \n inside the single-quoted word as a newline.
    unit = tmp_path / "evil.service"
    unit.write_text(
        "[Service]\nExecStart=/usr/bin/socat 'TCP6-LISTEN:8443,fork,reuseaddr,bind=[::1%%\\n"
        "ExecStartPre=/bin/sh -c id\\nListenStream=127.0.0.1:8443\\n#]' TCP:127.0.0.1:80\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["install", "--dry-run", "--socket-activation", "--from-unit", str(unit)])
    captured = capsys.readouterr()
    assert (info.value.code, captured.out) == (2, "")
    assert captured.err.count("\n") == 1
    assert "is not an interface name" in captured.err
    assert str(unit) in captured.err


@pytest.mark.parametrize(
    "spec_changes",
    [
        {"name": "fwd\nExecStartPre=/bin/id"},
        {"config_path": "/etc/pyforward/fwd.toml\nExecStartPre=/bin/id"},
        {"exec_start": "/opt/pyforward/bin/pyforward\r"},
        {"kubeconfig": "/etc/k3s.yaml\nExecStartPre=/bin/id"},
        {"read_only_paths": ("/root/venv\x85",)},
        {"socket_activation": True, "listen": (Address("fe80::1%eth0\nx", 443),)},
    ],
)
def test_rendering_refuses_a_control_character_whatever_let_it_through(
    spec_changes: dict[str, object],
) -> None:
    with pytest.raises(ConfigError, match="control character"):
        render_units(spec(**spec_changes))


def test_a_zone_renders_where_systemd_reads_it_with_percent_escaped() -> None:
    units = render_units(spec(socket_activation=True, listen=(parse_listen("[fe80::1%eth0]:443"),)))
    assert "ListenStream=[fe80::1]:443%%eth0" in lines(units["fwd.socket"])


@pytest.mark.parametrize(("zone", "exists"), [("lo", True), ("pfnosuch0", False)])
def test_systemd_reads_the_zone_as_the_interface_given(
    zone: str, exists: bool, tmp_path: Path, analyze: str
) -> None:
    units = render_units(
        spec(socket_activation=True, listen=(parse_listen(f"[fe80::1%{zone}]:443"),))
    )
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    said = verify(analyze, tmp_path / "fwd.socket")
    if exists:
        assert "ListenStream" not in said and "address" not in said, said
    else:
        # systemd quotes the value after expanding specifiers: the zone arrived whole.
        assert f"'[fe80::1]:443%{zone}'" in said
        assert "No such device" in said


def test_exec_start_quotes_what_systemd_would_split_or_expand(tmp_path: Path, analyze: str) -> None:
    odd = tmp_path / "an odd $HOME 100%h dir"
    odd.mkdir()
    program = odd / "pyforward"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    units = render_units(spec(exec_start=str(program), read_only_paths=()))
    (tmp_path / "fwd.service").write_text(units["fwd.service"])
    # verify checks that ExecStart='s program exists: only the exact path passes.
    assert verify(analyze, tmp_path / "fwd.service") == ""
    program.unlink()
    assert "pyforward" in verify(analyze, tmp_path / "fwd.service")


def test_command_line_quoting() -> None:
    assert command_line("/opt/pf/bin/pyforward", "run") == "/opt/pf/bin/pyforward run"
    assert command_line("/a b/$c", '"x" $y\\') == '"/a b/$c" "\\"x\\" $$y\\\\"'
    with pytest.raises(ConfigError, match="without quotes"):
        command_line('/opt/"pf"/pyforward')
