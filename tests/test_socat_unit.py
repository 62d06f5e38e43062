"""Reading a socat unit's ExecStart and carrying it into pyforward settings."""

from __future__ import annotations

import pytest

from pyforward.config.addresses import Address
from pyforward.config.settings import build_settings
from pyforward.errors import ConfigError
from pyforward.socat.unit import exec_start_lines, settings_from_socat_unit, socat_argv_from_unit

# The unit from the seed report, as its template renders with the values in the report
# (socat from Homebrew on Linux, HTTPS port 443, node 10.211.55.14, NodePort 32653).
SEED_UNIT = """\
[Unit]
Description=k3s Ingress Gateway HTTPS Port Forwarding
After=network-online.target k3s.service
Wants=network-online.target

[Service]
Type=simple
User=root
Restart=always
RestartSec=3
ExecStart=/home/linuxbrew/.linuxbrew/bin/socat TCP-LISTEN:443,fork,reuseaddr TCP:10.211.55.14:32653

[Install]
WantedBy=multi-user.target
"""

SEED_TEMPLATE = SEED_UNIT.replace(
    "/home/linuxbrew/.linuxbrew/bin/socat TCP-LISTEN:443,fork,reuseaddr TCP:10.211.55.14:32653",
    "${SOCAT_PATH} TCP-LISTEN:${HTTPS_PORT},fork,reuseaddr "
    "TCP:${INGRESS_TARGET_IP}:${INGRESS_TARGET_HTTPS_PORT}",
)


def unit(exec_start: str, *, before: str = "", after: str = "") -> str:
    return f"[Unit]\nDescription=x\n\n[Service]\n{before}{exec_start}\n{after}\n[Install]\n"


def test_seed_unit_carries_listen_port_and_target() -> None:
    flags, carried, dropped = settings_from_socat_unit(SEED_UNIT)
    assert flags == {"listen": "443", "target": ["10.211.55.14:32653"]}
    (route,) = build_settings(flags, {}).routes
    assert route.listen == Address(None, 443)
    assert route.targets == (Address("10.211.55.14", 32653),)
    assert carried == [
        "listen *:443 (from TCP-LISTEN:443)",
        "target 10.211.55.14:32653",
        "fork: every connection is served, all in one process",
        "reuseaddr: pyforward always sets SO_REUSEADDR on its listeners",
    ]
    assert dropped == []


def test_seed_template_before_rendering_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_socat_unit(SEED_TEMPLATE)
    assert str(info.value) == (
        "ExecStart= uses the variable ${SOCAT_PATH}, which systemd fills in at start; "
        "write its value into the unit first"
    )


@pytest.mark.parametrize(
    "exec_start",
    [
        "ExecStart=/usr/bin/socat TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        "ExecStart=socat TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        "ExecStart=/opt/homebrew/bin/socat TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        "ExecStart=/usr/local/bin/pyforward-socat TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        "ExecStart = /usr/bin/socat TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        "ExecStart=-/usr/bin/socat TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        "ExecStart=+/usr/bin/socat TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        "ExecStart=@/usr/bin/socat socat-443 TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        "ExecStart=-@+/usr/bin/socat fwd TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        "ExecStart=!!/usr/bin/socat TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        # line continuations, with a comment line inside
        "ExecStart=/usr/bin/socat \\\n    TCP-LISTEN:443,fork,reuseaddr \\\n"
        "# the node\n    TCP:10.0.0.5:32653",
        # quoting as systemd allows it
        "ExecStart=/usr/bin/socat \"TCP-LISTEN:443,fork,reuseaddr\" 'TCP:10.0.0.5:32653'",
        # an earlier ExecStart reset by an empty one (as a drop-in would)
        "ExecStart=/usr/bin/socat TCP-LISTEN:80 TCP:10.0.0.9:80\nExecStart=\n"
        "ExecStart=/usr/bin/socat TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
    ],
)
def test_exec_start_forms(exec_start: str) -> None:
    flags, _, _ = settings_from_socat_unit(unit(exec_start))
    assert flags == {"listen": "443", "target": ["10.0.0.5:32653"]}


@pytest.mark.parametrize(
    "argv_text",
    [
        "-d -d -T 30 TCP-LISTEN:443,fork TCP:10.0.0.5:32653",
        "-T 30 -d -d TCP-LISTEN:443,fork TCP:10.0.0.5:32653",
        "-T30 -dd TCP-LISTEN:443,fork TCP:10.0.0.5:32653",
    ],
)
def test_any_option_order(argv_text: str) -> None:
    flags, carried, dropped = settings_from_socat_unit(
        unit(f"ExecStart=/usr/bin/socat {argv_text}")
    )
    assert flags == {"listen": "443", "target": ["10.0.0.5:32653"], "idle_timeout": 30.0}
    assert "idle timeout 30s (-T)" in carried
    assert dropped == [
        "-dd: pyforward logs at info by default (start, listen, one line per connection)"
    ]


def test_everything_the_subset_holds_is_carried_or_dropped_with_a_reason() -> None:
    exec_start = (
        "ExecStart=/usr/bin/socat -d -d -d -d -T 600 -b 65536 -t 2 "
        "TCP4-LISTEN:8443,bind=192.0.2.10,reuseaddr,backlog=1024,max-children=500,keepalive "
        "TCP:10.0.0.5:32653,connect-timeout=3,nodelay"
    )
    flags, carried, dropped = settings_from_socat_unit(unit(exec_start))
    assert flags == {
        "listen": "192.0.2.10:8443",
        "target": ["10.0.0.5:32653"],
        "idle_timeout": 600.0,
        "connect_timeout": 3.0,
        "backlog": 1024,
        "max_connections": 500,
        "keepalive": True,
        "log_level": "debug",
    }
    assert carried == [
        "listen 192.0.2.10:8443 (from TCP4-LISTEN:8443,bind=192.0.2.10)",
        "target 10.0.0.5:32653",
        "reuseaddr: pyforward always sets SO_REUSEADDR on its listeners",
        "nodelay: pyforward always sets TCP_NODELAY on both legs",
        "idle timeout 600s (-T)",
        "connect timeout 3s",
        "backlog 1024",
        "max connections 500 (max-children)",
        "keepalive on both legs",
        "log level debug (-dddd)",
    ]
    assert dropped == [
        "no fork: socat served one connection per start; "
        "the pyforward service serves every connection",
        "-b 65536: the relay sizes its own buffers",
        "-t 2: pyforward keeps each direction open until it ends (half-close), with no close delay",
    ]
    build_settings(flags, {})  # the flags are valid settings as they stand


def test_percent_percent_is_a_literal_percent() -> None:
    argv = socat_argv_from_unit(unit("ExecStart=/usr/bin/socat TCP-L:1 TCP:a%%b:1"))
    assert argv == ["TCP-L:1", "TCP:a%b:1"]


def test_exec_start_outside_service_is_ignored() -> None:
    text = "[Unit]\nExecStart=/bin/false\n" + unit("ExecStart=/usr/bin/socat TCP-L:1 TCP:a:1")
    assert exec_start_lines(text) == ["/usr/bin/socat TCP-L:1 TCP:a:1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (unit("Type=simple"), "the unit has no ExecStart= in its [Service] section"),
        (
            unit(
                "ExecStart=/usr/bin/socat TCP-L:1 TCP:a:1\nExecStart=/usr/bin/socat TCP-L:2 TCP:a:2"
            ),
            "the unit has 2 ExecStart= lines; a socat unit runs one command",
        ),
        (unit("ExecStart=/usr/bin/nc -l 443"), "ExecStart= runs '/usr/bin/nc', not socat"),
        (
            unit("ExecStart=/usr/bin/socat TCP-L:1 TCP:a:1 ; /bin/true"),
            "ExecStart= runs several commands (separated by ;); expected one socat",
        ),
        (
            unit("ExecStart=/usr/bin/socat TCP-LISTEN:%i,fork TCP:10.0.0.5:80"),
            "ExecStart= uses the specifier %i, which systemd fills in at start; "
            "write its value into the unit first",
        ),
        (
            unit("ExecStart=/usr/bin/socat TCP-LISTEN:443,fork TCP:$NODE:80"),
            "ExecStart= uses the variable $NODE, which systemd fills in at start; "
            "write its value into the unit first",
        ),
        (
            unit("ExecStart=/usr/bin/socat 'TCP-LISTEN:443 TCP:10.0.0.5:80"),
            "cannot split the command line: No closing quotation",
        ),
        (
            unit("ExecStart=/usr/bin/socat OPENSSL-LISTEN:443,fork TCP:10.0.0.5:80"),
            "OPENSSL-LISTEN is not supported: pyforward forwards TCP; TLS passes through untouched",
        ),
        (
            unit("ExecStart=/usr/bin/socat -lf /var/log/fwd.log TCP-LISTEN:443 TCP:10.0.0.5:80"),
            "socat option -lf is not supported: pyforward logs to stderr (under systemd, the "
            "journal); to keep a file, set StandardError=append:FILE in the unit",
        ),
        (
            unit("ExecStart=@/usr/bin/socat"),
            "socat takes two addresses, got 0 addresses: "
            "e.g. TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        ),
        (unit("ExecStart=-"), "ExecStart= is empty"),
    ],
)
def test_unit_refusals(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_socat_unit(text)
    assert str(info.value) == message
