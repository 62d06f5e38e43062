"""socat's UDP addresses: what each means in pyforward, what is refused, and (property)
any generated UDP command line parses or fails with a ConfigError, and round-trips."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pyforward.cli import service as service_cli
from pyforward.config.model import Transport
from pyforward.config.settings import build_settings
from pyforward.socat.args import parse_socat_line
from pyforward.socat.format import format_socat_args
from pyforward.socat.model import ListenAddress
from pyforward.socat.translate import summarize
from pyforward.socat.unit import settings_from_socat_unit
from pyforward.systemd.installation import Installation
from tests.test_socat_args import (
    address,
    check_round_trip,
    hosts,
    keyword,
    ports,
    refusal,
    seconds,
    settings_of,
    sometimes_bad,
    switch,
)
from tests.test_socat_args import any_case as spelled_any


def test_udp_listen_fork_is_a_udp_route() -> None:
    settings = settings_of("UDP-LISTEN:53,fork,reuseaddr UDP:127.0.0.1:5353")
    (route,) = settings.routes
    assert route.protocol is Transport.UDP
    assert (str(route.listen), [str(t) for t in route.targets]) == ("*:53", ["127.0.0.1:5353"])
    assert route.udp_idle_timeout == 120.0
    assert parse_socat_line("UDP-LISTEN:53,fork UDP:127.0.0.1:5353").max_accepts is None


def test_without_fork_one_peer_is_served() -> None:
    for line in ("UDP4-LISTEN:53 UDP4:127.0.0.1:5353", "UDP-RECVFROM:53 UDP:127.0.0.1:5353"):
        assert parse_socat_line(line).max_accepts == 1
        assert any("no fork" in item for item in summarize(parse_socat_line(line)).carried)


def test_minus_t_is_the_flow_idle_timeout_and_bind_the_address() -> None:
    settings = settings_of("-T 15 UDP6-LISTEN:853,bind=[::1],fork UDP6:[::1]:53")
    (route,) = settings.routes
    assert route.udp_idle_timeout == 15.0 and route.idle_timeout is None
    assert str(route.listen) == "[::1]:853"


def test_recvfrom_is_a_flow_per_peer_and_says_so() -> None:
    command = parse_socat_line("UDP4-RECVFROM:53,fork UDP4:127.0.0.1:5353")
    assert isinstance(command.listen, ListenAddress)
    assert command.listen.recvfrom
    assert format_socat_args(command) == ["UDP4-RECVFROM:53,fork", "UDP4:127.0.0.1:5353"]
    carried = summarize(command).carried
    assert any("share one flow" in item for item in carried)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "UDP-LISTEN:53,fork TCP:127.0.0.1:53",
            "UDP-LISTEN forwards datagrams to a UDP target (UDP:HOST:PORT), got TCP",
        ),
        (
            "TCP-LISTEN:53,fork UDP:127.0.0.1:53",
            "the first address must be UDP-LISTEN or UDP-RECVFROM to forward to UDP",
        ),
        (
            "UDP-LISTEN:53,backlog=5 UDP:127.0.0.1:53",
            "address 'UDP-LISTEN:53,backlog=5': option 'backlog' is not supported on UDP-LISTEN",
        ),
        (
            "UDP4-LISTEN:53,bind=::1 UDP:127.0.0.1:53",
            "address 'UDP4-LISTEN:53,bind=::1': UDP4-LISTEN takes an IPv4 address, got '::1'",
        ),
        (
            "UDP-LISTEN:53 UDP:127.0.0.1:53,sp=5",
            "address 'UDP:127.0.0.1:53,sp=5': option 'sp' is not supported on UDP",
        ),
    ],
)
def test_udp_refusals_are_one_line(line: str, message: str) -> None:
    assert refusal(line).startswith(message)


def test_a_socat_unit_with_udp_carries_over() -> None:
    unit = """[Service]
ExecStart=/usr/bin/socat -T 30 UDP-LISTEN:53,fork,reuseaddr UDP:10.43.0.10:53
"""
    flags, carried, _dropped = settings_from_socat_unit(unit)
    assert flags["protocol"] == "udp" and flags["udp_idle_timeout"] == 30.0
    assert "target 10.43.0.10:53 (UDP)" in carried


udp_listen_options = st.one_of(
    st.tuples(spelled_any("fork"), st.sampled_from(["", "=1", "=0"])).map("".join),
    st.tuples(st.sampled_from(["reuseaddr", "so-reuseaddr"]).flatmap(spelled_any), switch).map(
        "".join
    ),
    st.tuples(spelled_any("bind"), hosts).map(lambda nv: f"{nv[0]}={nv[1]}"),
    st.just(""),
)
udp_listen = address(
    keyword(
        ["udp-listen", "udp4-listen", "udp6-listen", "udp-l", "udp-recvfrom", "udp6-recvfrom"],
        ["udp-sendto", "udp-datagram", "tcp-listen", "udp"],
    ),
    sometimes_bad(ports.map(lambda p: [p]), st.lists(ports, max_size=3)),
    sometimes_bad(udp_listen_options, st.sampled_from(["backlog=5", "range=10.0.0.0/8"])),
)
udp_target = address(
    keyword(["udp", "udp4", "udp6", "udp-connect"], ["udp-listen", "tcp", "udp-recv"]),
    sometimes_bad(
        st.tuples(hosts, ports).map(lambda hp: [hp[0], hp[1]]),
        st.lists(st.one_of(hosts, ports), max_size=4),
    ),
    st.sampled_from(["", "", "", "sp=53"]),
)


@hypothesis_settings(max_examples=300)
@given(
    st.lists(sometimes_bad(seconds.map(lambda n: f"-T{n}"), st.just("-T")), max_size=1),
    udp_listen,
    udp_target,
)
def test_generated_udp_lines_fail_only_with_config_error_and_round_trip(
    options: list[str], listen: str, target: str
) -> None:
    check_round_trip([*options, listen, target])


def test_the_udp_generator_reaches_accepted_lines() -> None:
    accepted = [
        check_round_trip(["-T", "5", "udp-l:53,fork,bind='127.0.0.1'", 'UDP:"10.0.0.5":\\53']),
        check_round_trip(["UDP6-RECVFROM:53,reuseaddr=0", "udp6:[::1]:53"]),
    ]
    assert all(command is not None for command in accepted)


def test_install_from_a_socat_udp_unit_writes_a_datagram_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_service import run_cli  # noqa: PLC0415

    # What install writes, not where this checkout lies (under /tmp it would refuse).
    opt = Installation("/opt/pyforward/bin/pyforward", "/opt/pyforward/bin/python3", ())
    monkeypatch.setattr(service_cli, "find_installation", lambda: opt)
    unit = tmp_path / "dns-forward.service"
    unit.write_text(
        "[Service]\nExecStart=/usr/bin/socat -T 30 UDP-LISTEN:5354,fork,reuseaddr "
        "UDP:127.0.0.1:53\n"
    )
    code, out, err = run_cli(
        ["install", "--dry-run", "--from-unit", str(unit), "--socket-activation"], capsys
    )
    assert code == 0, err
    config = tomllib.loads(out.split("==> /etc/pyforward/pyforward.toml <==\n")[1].split("==>")[0])
    (route,) = build_settings({}, {}, config).routes
    assert route.protocol is Transport.UDP and route.udp_idle_timeout == 30.0
    socket_unit = out.split("pyforward.socket <==\n")[1].split("==>")[0].splitlines()
    assert "ListenDatagram=5354" in socket_unit
    assert not any(line.startswith("ListenStream=") for line in socket_unit)
    assert "flow idle timeout 30s (-T)" in err and "SO_REUSEADDR" not in err
