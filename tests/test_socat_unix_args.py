"""socat's UNIX addresses and the options beyond TCP-to-TCP: forms, settings, summaries,
refusals, and the property that only the parser's own error comes out and that what is
accepted round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pyforward.config.access import AccessList
from pyforward.config.addresses import Address, UnixAddress
from pyforward.socat.args import parse_socat_args, parse_socat_line
from pyforward.socat.format import format_socat_args
from pyforward.socat.model import ListenAddress, Retry
from pyforward.socat.translate import summarize
from pyforward.socat.unix import UnixConnectAddress, UnixListenAddress
from tests.test_socat_args import (
    any_case,
    check_round_trip,
    listen_address,
    seconds,
    settings_of,
    socat_options,
    sometimes_bad,
    spelled,
    switch,
    whole,
)


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("UNIX-CONNECT:/var/run/docker.sock", UnixAddress("/var/run/docker.sock")),
        ("unix-client:/run/pg/.s.PGSQL.5432", UnixAddress("/run/pg/.s.PGSQL.5432")),
        ("UNIX:/tmp/puma.sock", UnixAddress("/tmp/puma.sock")),
        ("LOCAL:/tmp/puma.sock", UnixAddress("/tmp/puma.sock")),
        ("ABSTRACT-CONNECT:agent", UnixAddress("@agent")),
        ("ABSTRACT:agent", UnixAddress("@agent")),
    ],
)
def test_unix_targets(address: str, target: UnixAddress) -> None:
    (route,) = settings_of(f"TCP-LISTEN:2375,fork,reuseaddr {address}").routes
    assert route.targets == (target,)
    assert route.listen == Address(None, 2375)


def test_unix_listen_with_mode_owner_and_fork() -> None:
    line = "UNIX-LISTEN:/run/app/api.sock,fork,mode=0660,user=www-data,group=app TCP:127.0.0.1:80"
    command = parse_socat_line(line)
    assert command.listen == UnixListenAddress(
        "/run/app/api.sock", fork=True, mode=0o660, user="www-data", group="app"
    )
    (route,) = settings_of(line).routes
    assert route.listen == UnixAddress("/run/app/api.sock")
    assert (route.unix_mode, route.unix_user, route.unix_group) == (0o660, "www-data", "app")
    assert route.targets == (Address("127.0.0.1", 80),)


def test_unix_listen_aliases_and_unlink_options_are_reported() -> None:
    command = parse_socat_line("UNIX-L:/run/a.sock,perm=600,unlink-early,unlink-close=0 TCP:h:80")
    assert isinstance(command.listen, UnixListenAddress)
    assert command.listen.mode == 0o600
    carried = summarize(command).carried
    assert any(line.startswith("unlink-early: a stale socket file is replaced") for line in carried)
    assert any(line.startswith("unlink-close:") for line in carried)


def test_abstract_listen() -> None:
    (route,) = settings_of("ABSTRACT-LISTEN:front,fork UNIX-CONNECT:/run/back.sock").routes
    assert (route.listen, route.targets) == (
        UnixAddress("@front"),
        (UnixAddress("/run/back.sock"),),
    )


@pytest.mark.parametrize(
    ("option", "network"),
    [
        ("range=10.0.0.0/8", "10.0.0.0/8"),
        ("range=192.168.1.0:255.255.255.0", "192.168.1.0/24"),
        ("RANGE=127.0.0.1", "127.0.0.1/32"),
        ("range=[fd00::]/8", "fd00::/8"),
    ],
)
def test_range_is_an_allow_list(option: str, network: str) -> None:
    (route,) = settings_of(f"TCP-LISTEN:443,fork,{option} TCP:10.0.0.5:80").routes
    assert route.access == AccessList.parse([network], [])


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("TCP6-LISTEN:443,ipv6-v6only", Address("::", 443)),
        ("TCP6-LISTEN:443,ipv6only=1", Address("::", 443)),
        ("TCP6-LISTEN:443,ipv6-v6only=0", Address(None, 443)),
        ("TCP6-LISTEN:443,bind=[::],ipv6-v6only=0", Address(None, 443)),
    ],
)
def test_ipv6_v6only(listen: str, expected: Address) -> None:
    (route,) = settings_of(f"{listen} TCP:10.0.0.5:80").routes
    assert route.listen == expected


def test_su_is_kept_for_the_socat_command_and_dropped_for_a_service() -> None:
    command = parse_socat_line("TCP-LISTEN:443,fork,su=nobody TCP:10.0.0.5:80")
    assert isinstance(command.listen, ListenAddress)
    assert command.listen.su == "nobody"
    assert "su=nobody: pyforward becomes nobody once it listens" in summarize(command).carried
    dropped = summarize(command, as_service=True).dropped
    assert "su=nobody: the service runs as its own unprivileged user" in dropped


def test_retry_reaches_the_settings_and_sourceport_is_reported() -> None:
    line = "TCP-L:443,fork TCP:10.0.0.5:80,retry=5,interval=2,sp=2000"
    command = parse_socat_line(line)
    assert command.connect.retry == Retry(5, 2.0)
    policy = settings_of(line).routes[0].policy
    assert (policy.connect_retries, policy.connect_retry_interval) == (5, 2.0)
    forever_line = "TCP-L:443,fork UNIX-CONNECT:/run/a.sock,forever"
    forever = parse_socat_line(forever_line)
    assert forever.connect == UnixConnectAddress("/run/a.sock", retry=Retry(None))
    assert settings_of(forever_line).routes[0].policy.connect_retries is None
    assert any(
        line.startswith("retry=5: a refused dial is tried again every 2s")
        for line in summarize(command).carried
    )
    assert any(line.startswith("sourceport=2000:") for line in summarize(command).carried)
    assert policy.source_port == 2000


def test_format_gives_canonical_unix_words() -> None:
    command = parse_socat_args(
        ["unix-l:/run/a\\,b.sock,FORK,perm=0600,owner=root", "unix:/run/b.sock,forever,interval=.5"]
    )
    assert format_socat_args(command) == [
        "UNIX-LISTEN:/run/a\\,b.sock,fork,mode=0600,user=root",
        "UNIX-CONNECT:/run/b.sock,forever,interval=0.5",
    ]


@pytest.mark.parametrize("stdio", ["-", "-,echo=0", "-,raw,echo=0", "-!!-"])
def test_stdio_in_any_spelling_is_refused_as_stdio(stdio: str) -> None:
    with pytest.raises(Exception) as info:
        parse_socat_line(f"TCP-LISTEN:443 {stdio}")
    assert str(info.value).startswith(("- (STDIO) is not supported", "address"))
    assert "unknown socat option" not in str(info.value)


# --- property: UNIX addresses and the new options, generated

paths = sometimes_bad(
    st.from_regex(r"/[a-z0-9._-]{1,12}(/[a-z0-9._-]{1,12}){0,3}", fullmatch=True),
    st.one_of(st.text(max_size=8), st.sampled_from(["", "rel/x.sock", "/" + "x" * 120])),
)
modes = sometimes_bad(
    st.integers(0, 0o7777).map(lambda m: f"{m:o}"), st.sampled_from(["", "9", "x", "77777"])
)
owners = sometimes_bad(
    st.from_regex(r"[a-z_][a-z0-9_-]{0,8}", fullmatch=True), st.sampled_from(["", "a b", "x:y"])
)
networks = sometimes_bad(
    st.one_of(
        st.ip_addresses(v=4).map(str).map(lambda a: f"{a}/24"),
        st.sampled_from(["10.0.0.0:255.0.0.0", "[fd00::]/8", "127.0.0.1"]),
    ),
    st.sampled_from(["", "10.0.0.0/33", "x", "[::1"]),
)


def _opt(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(any_case(name), values).map(lambda nv: f"{nv[0]}={nv[1]}")


unix_listen_options = st.one_of(
    st.tuples(any_case("fork"), st.sampled_from(["", "=1", "=0"])).map("".join),
    _opt("mode", modes),
    _opt("perm", modes),
    _opt("user", owners),
    _opt("group", owners),
    _opt("su", owners),
    _opt("backlog", whole),
    st.tuples(st.sampled_from(["unlink-early", "unlink-close"]).flatmap(any_case), switch).map(
        "".join
    ),
    st.sampled_from(["", "range=10.0.0.0/8", "bind=127.0.0.1", "cool-write"]),
)
tcp_listen_extra = st.one_of(
    st.tuples(any_case("reuseport"), switch).map("".join),
    _opt("range", networks),
    _opt("su", owners),
    st.tuples(st.sampled_from(["ipv6-v6only", "ipv6only"]).flatmap(any_case), switch).map("".join),
)
unix_connect_options = st.one_of(
    st.tuples(any_case("forever"), switch).map("".join),
    _opt("retry", whole),
    _opt("interval", seconds),
    _opt("connect-timeout", seconds),
    st.sampled_from(["", "sp=2000", "fork"]),
)


def _address(keywords: list[str], params: st.SearchStrategy[str], options: st.SearchStrategy[str]):  # type: ignore[no-untyped-def]
    word = st.sampled_from(keywords).flatmap(any_case).flatmap(spelled)
    chosen = st.lists(options, max_size=4).map(lambda os: "".join("," + o for o in os))
    return st.tuples(word, params.flatmap(spelled), chosen).map(lambda p: f"{p[0]}:{p[1]}{p[2]}")


unix_listen = _address(["unix-listen", "unix-l", "abstract-listen"], paths, unix_listen_options)
unix_connect = _address(
    ["unix-connect", "unix-client", "unix", "abstract-connect", "unix-sendto"],
    paths,
    unix_connect_options,
)
tcp_listen_more = st.tuples(listen_address, st.lists(tcp_listen_extra, max_size=2)).map(
    lambda p: p[0] + "".join("," + o for o in p[1])
)


@st.composite
def unix_command_lines(draw: st.DrawFn) -> list[str]:
    argv = draw(socat_options)
    first = draw(st.one_of(unix_listen, tcp_listen_more))
    second = draw(st.one_of(unix_connect, st.just("TCP:127.0.0.1:80,retry=3,sp=1234")))
    return [*argv, first, second]


@hypothesis_settings(max_examples=300)
@given(unix_command_lines())
def test_generated_unix_command_lines_fail_only_with_config_error_and_round_trip(
    argv: list[str],
) -> None:
    check_round_trip(argv)


def test_the_unix_generator_reaches_accepted_command_lines() -> None:
    accepted = [
        check_round_trip(["UNIX-LISTEN:/run/a.sock,fork,mode=660", "UNIX-CONNECT:/run/b.sock"]),
        check_round_trip(["TCP6-L:80,ipv6only=0,range=[::1]/128", "ABSTRACT:x,forever"]),
        check_round_trip(["TCP-L:80,su=nobody,range=10.0.0.0:255.0.0.0", "UNIX:/x,retry=2"]),
    ]
    assert all(command is not None for command in accepted)
