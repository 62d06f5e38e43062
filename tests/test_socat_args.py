"""socat command lines: every supported form, every kind of refusal, and round trips."""

from __future__ import annotations

import contextlib
import shlex
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pyforward.config.addresses import Address
from pyforward.config.model import LogLevel, Settings
from pyforward.config.settings import build_settings
from pyforward.errors import ConfigError
from pyforward.socat.args import parse_socat_args, parse_socat_line
from pyforward.socat.format import format_socat_args
from pyforward.socat.model import ConnectAddress, Family, ListenAddress, SocatCommand
from pyforward.socat.translate import summarize, to_flags

T = TypeVar("T")
SEED = "TCP-LISTEN:443,fork,reuseaddr TCP:10.211.55.14:32653"


def settings_of(line: str) -> Settings:
    return build_settings(to_flags(parse_socat_line(line)), {})


def refusal(line: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_socat_line(line)
    return str(info.value)


# --- the seed's command line


def test_seed_command_line_listens_on_443_everywhere_and_targets_the_node_port() -> None:
    command = parse_socat_line(SEED)
    assert command.listen.fork and command.max_accepts is None
    settings = settings_of(SEED)
    (route,) = settings.routes
    assert route.listen == Address(None, 443)
    assert str(route.listen) == "*:443"
    assert route.targets == (Address("10.211.55.14", 32653),)


def test_seed_command_line_with_socat_path_in_front() -> None:
    for program in ("/usr/bin/socat", "/home/linuxbrew/.linuxbrew/bin/socat", "socat"):
        assert parse_socat_line(f"{program} {SEED}") == parse_socat_line(SEED)


# --- listen address forms


@pytest.mark.parametrize(
    ("address", "listen"),
    [
        ("TCP-LISTEN:8443", Address(None, 8443)),
        ("tcp-listen:8443", Address(None, 8443)),
        ("TCP-L:8443", Address(None, 8443)),
        ("Tcp-L:8443", Address(None, 8443)),
        ("TCP4-LISTEN:8443", Address("0.0.0.0", 8443)),
        ("TCP4-L:8443", Address("0.0.0.0", 8443)),
        # TCP6-LISTEN without ipv6only takes IPv4-mapped clients too, as "every interface".
        ("TCP6-LISTEN:8443", Address(None, 8443)),
        ("TCP6-L:8443", Address(None, 8443)),
        ("TCP-LISTEN:0", Address(None, 0)),
        ("TCP-LISTEN:8443,bind=127.0.0.1", Address("127.0.0.1", 8443)),
        ("TCP-LISTEN:8443,BIND=localhost", Address("localhost", 8443)),
        ("TCP-LISTEN:8443,bind=[::1]", Address("::1", 8443)),
        ("TCP-LISTEN:8443,bind=::1", Address("::1", 8443)),
        ("TCP6-LISTEN:8443,bind=[::]", Address("::", 8443)),
        ("TCP4-LISTEN:8443,bind=10.1.2.3", Address("10.1.2.3", 8443)),
    ],
)
def test_listen_forms(address: str, listen: Address) -> None:
    (route,) = settings_of(f"{address} TCP:10.0.0.5:80").routes
    assert route.listen == listen


def test_listen_options_reach_the_settings() -> None:
    line = (
        "TCP-LISTEN:443,fork,reuseaddr,bind=127.0.0.1,backlog=512,max-children=100,"
        "keepalive,nodelay TCP:10.0.0.5:80"
    )
    command = parse_socat_line(line)
    assert command.listen.fork and command.max_accepts is None
    settings = settings_of(line)
    assert settings.backlog == 512
    assert settings.max_connections == 100
    assert settings.routes[0].keepalive is True
    assert settings.routes[0].listen == Address("127.0.0.1", 443)


@pytest.mark.parametrize(
    "options",
    [
        "FORK,SO-REUSEADDR,MaxChildren=7,Backlog=9,SO-KEEPALIVE,TCP-NODELAY",
        "fork=1,reuseaddr=1,maxchildren=7,backlog=9,keepalive=1,nodelay=1",
        ",,fork,,reuseaddr,max-children=7,,backlog=9,keepalive,nodelay,",
    ],
)
def test_option_names_are_case_insensitive_with_socat_aliases(options: str) -> None:
    command = parse_socat_line(f"TCP-LISTEN:443,{options} TCP:10.0.0.5:80")
    listen = command.listen
    assert isinstance(listen, ListenAddress)
    assert (listen.fork, listen.reuseaddr, listen.keepalive, listen.nodelay) == (
        True,
        True,
        True,
        True,
    )
    assert (listen.max_children, listen.backlog) == (7, 9)


def test_without_fork_one_connection_is_served() -> None:
    assert parse_socat_line("TCP-LISTEN:443 TCP:10.0.0.5:80").max_accepts == 1
    assert parse_socat_line("TCP-LISTEN:443,fork=0 TCP:10.0.0.5:80").max_accepts == 1
    assert parse_socat_line("TCP-LISTEN:443,fork=2 TCP:10.0.0.5:80").max_accepts is None


def test_max_children_zero_means_no_limit_as_in_socat() -> None:
    assert settings_of("TCP-LISTEN:443,fork,max-children=0 TCP:10.0.0.5:80").max_connections is None


# --- target address forms


@pytest.mark.parametrize(
    ("address", "target", "family"),
    [
        ("TCP:10.0.0.5:32653", Address("10.0.0.5", 32653), Family.ANY),
        ("tcp:node.example:32653", Address("node.example", 32653), Family.ANY),
        ("TCP-CONNECT:10.0.0.5:32653", Address("10.0.0.5", 32653), Family.ANY),
        ("TCP4:10.0.0.5:32653", Address("10.0.0.5", 32653), Family.IPV4),
        ("TCP4-CONNECT:10.0.0.5:32653", Address("10.0.0.5", 32653), Family.IPV4),
        ("TCP6:[fd00::5]:32653", Address("fd00::5", 32653), Family.IPV6),
        ("TCP6-CONNECT:[::1]:32653", Address("::1", 32653), Family.IPV6),
        ("TCP:[::1]:32653", Address("::1", 32653), Family.ANY),
    ],
)
def test_target_forms(address: str, target: Address, family: Family) -> None:
    command = parse_socat_line(f"TCP-LISTEN:443,fork {address}")
    assert isinstance(command.connect, ConnectAddress)
    assert command.connect.family is family
    assert settings_of(f"TCP-LISTEN:443,fork {address}").routes[0].targets == (target,)


def test_target_options_reach_the_settings() -> None:
    route = settings_of("TCP-L:443 TCP:10.0.0.5:80,connect-timeout=2.5,keepalive,nodelay").routes[0]
    assert route.connect_timeout == 2.5
    assert route.keepalive is True


# --- socat's own options


@pytest.mark.parametrize(
    ("options", "idle", "level"),
    [
        ("", None, LogLevel.INFO),
        ("-T 30", 30.0, LogLevel.INFO),
        ("-T30", 30.0, LogLevel.INFO),
        ("-T 0.5", 0.5, LogLevel.INFO),
        ("-T 0", None, LogLevel.INFO),  # socat: 0 is no timeout; pyforward: 0 is never
        ("-d", None, LogLevel.INFO),
        ("-d -d", None, LogLevel.INFO),
        ("-dd -T 5", 5.0, LogLevel.INFO),
        ("-ddd", None, LogLevel.INFO),
        ("-d -d -d -d", None, LogLevel.DEBUG),
        ("-dddd", None, LogLevel.DEBUG),
        ("-b 65536", None, LogLevel.INFO),
        ("-b8192 -t 0.5 -ls", None, LogLevel.INFO),
    ],
)
def test_socat_options(options: str, idle: float | None, level: LogLevel) -> None:
    settings = settings_of(f"{options} {SEED}")
    assert settings.routes[0].idle_timeout == idle
    assert settings.log_level is level


def test_buffer_size_and_close_delay_are_accepted_and_reported_as_dropped() -> None:
    command = parse_socat_line(f"-b 65536 -t 2 {SEED}")
    assert (command.buffer_size, command.close_delay) == (65536, 2.0)
    assert settings_of(f"-b 65536 -t 2 {SEED}") == settings_of(SEED)
    dropped = summarize(command).dropped
    assert "-b 65536: the relay sizes its own buffers" in dropped
    assert any(item.startswith("-t 2: ") for item in dropped)


def test_summary_names_what_is_carried() -> None:
    command = parse_socat_line(
        "-T 30 TCP-LISTEN:443,fork,reuseaddr,backlog=64 TCP:10.211.55.14:32653,connect-timeout=3"
    )
    carried = summarize(command).carried
    assert carried[:2] == ("listen *:443 (from TCP-LISTEN:443)", "target 10.211.55.14:32653")
    assert "idle timeout 30s (-T)" in carried
    assert "connect timeout 3s" in carried
    assert "backlog 64" in carried


def test_summary_as_a_service_drops_the_single_connection() -> None:
    command = parse_socat_line("TCP-LISTEN:443 TCP:10.0.0.5:80")
    assert "no fork: one connection is served, then pyforward exits" in summarize(command).carried
    dropped = summarize(command, as_service=True).dropped
    assert dropped == (
        "no fork: socat served one connection per start; "
        "the pyforward service serves every connection",
    )


# --- the lexer: quotes, brackets and escapes where socat allows them


@pytest.mark.parametrize(
    "line",
    [
        'TCP-LISTEN:443,fork TCP:"10.0.0.5":80',
        "TCP-LISTEN:443,fork TCP:'10.0.0.5':80",
        r"TCP-LISTEN:443,fork TCP:10.0.0.5:\80",
        r"TCP-LISTEN:4\43,fork TCP:10.0.0.5:80",
        "TCP-LISTEN:443,fork TCP:10.0.0.5:'8'0",
        "TCP-LISTEN:44'3',fork TCP:10.0.0.5:80",
        'TCP-LISTEN:443,"fork" TCP:10.0.0.5:80',
        "'TCP-LISTEN':443,fork TCP:10.0.0.5:80",
        r"TCP-LISTEN:443,f\or\k TCP:10.0.0.5:80",
    ],
)
def test_quotes_and_escapes_are_removed(line: str) -> None:
    # Each word is what socat receives after the shell: socat's own lexer removes these.
    expected = parse_socat_args(["TCP-LISTEN:443,fork", "TCP:10.0.0.5:80"])
    assert parse_socat_args(line.split(" ")) == expected


def test_c_escapes_are_solved_as_socat_does() -> None:
    with pytest.raises(ConfigError) as info:
        parse_socat_args(["TCP-LISTEN:443", r"TCP:10.0.0.5:8\t0"])
    # The message shows the word as given, then the port as socat read it: with a tab.
    assert str(info.value) == (
        r"address 'TCP:10.0.0.5:8\\t0': port '8\t0' is not a number "
        "(pyforward takes port numbers, not service names)"
    )


def test_brackets_keep_colons_and_commas_inside_one_parameter() -> None:
    command = parse_socat_args(["TCP-LISTEN:443,bind=[::1],fork", "TCP:[fd00::1]:80"])
    assert isinstance(command.listen, ListenAddress)
    assert isinstance(command.connect, ConnectAddress)
    assert command.listen.bind == "::1"
    assert command.connect.host == "fd00::1"


def test_an_escaped_comma_is_not_an_option_separator() -> None:
    with pytest.raises(ConfigError) as info:
        parse_socat_args([r"TCP-LISTEN:443\,fork", "TCP:10.0.0.5:80"])
    assert str(info.value) == (
        r"address 'TCP-LISTEN:443\\,fork': port '443,fork' is not a number "
        "(pyforward takes port numbers, not service names)"
    )


# --- refusals, each with its message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # address types socat knows and pyforward does not forward
        (
            "OPENSSL-LISTEN:443,fork TCP:10.0.0.5:80",
            "OPENSSL-LISTEN is not supported: pyforward forwards TCP; TLS passes through untouched",
        ),
        (
            "TCP-LISTEN:443 OPENSSL:10.0.0.5:443",
            "OPENSSL is not supported: pyforward forwards TCP; TLS passes through untouched",
        ),
        (
            "SSL-L:443 TCP:10.0.0.5:80",
            "SSL-L is not supported: pyforward forwards TCP; TLS passes through untouched",
        ),
        (
            "UDP-SENDTO:10.0.0.5:53 UDP:10.0.0.5:53",
            "UDP-SENDTO is not supported: pyforward-socat takes UDP-LISTEN or UDP-RECVFROM, "
            "and a UDP:HOST:PORT target",
        ),
        (
            "TCP-LISTEN:443 UNIX-SENDTO:/run/app.sock",
            "UNIX-SENDTO is not supported: pyforward forwards UNIX stream sockets "
            "(UNIX-LISTEN, UNIX-CONNECT), not datagrams",
        ),
        (
            "TCP-LISTEN:443 -,echo=0",
            "- (STDIO) is not supported: pyforward forwards between TCP sockets, "
            "not files or terminals",
        ),
        (
            "TCP-LISTEN:443 UNIX-CONNECT:run/app.sock",
            "address 'UNIX-CONNECT:run/app.sock': give the socket's absolute path "
            "('run/app.sock' is relative to a working directory a service does not have)",
        ),
        (
            "UNIX-LISTEN:/run/a.sock,mode=999 TCP:10.0.0.5:80",
            "address 'UNIX-LISTEN:/run/a.sock,mode=999': mode=999: expected an octal file mode "
            "such as 0660, got '999'",
        ),
        (
            "ABSTRACT-LISTEN:x,mode=0600 TCP:10.0.0.5:80",
            "address 'ABSTRACT-LISTEN:x,mode=0600': an abstract socket has no file to give a "
            "mode or owner",
        ),
        (
            "UNIX-LISTEN:/run/a.sock,range=10.0.0.0/8 TCP:10.0.0.5:80",
            "address 'UNIX-LISTEN:/run/a.sock,range=10.0.0.0/8': option range does not apply "
            "to UNIX-LISTEN",
        ),
        (
            "TCP-LISTEN:443,range=10.0.0.0/33 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,range=10.0.0.0/33': range=10.0.0.0/33: expected "
            "ADDRESS/BITS, e.g. range=10.0.0.0/8",
        ),
        (
            "TCP4-LISTEN:443,ipv6-v6only TCP:10.0.0.5:80",
            "address 'TCP4-LISTEN:443,ipv6-v6only': ipv6-v6only applies to TCP6-LISTEN, "
            "not TCP4-LISTEN",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5:80,retry=many",
            "address 'TCP:10.0.0.5:80,retry=many': retry: expected a whole number, got 'many'",
        ),
        (
            "TCP-LISTEN:443 EXEC:/bin/cat",
            "EXEC is not supported: pyforward connects to a TCP target, it does not run programs",
        ),
        (
            "TCP-LISTEN:443 SOCKS4A:proxy:10.0.0.5:80",
            "SOCKS4A is not supported: pyforward connects to its target directly, "
            "not through a proxy",
        ),
        (
            "TCP-LISTEN:443 STDIO",
            "STDIO is not supported: pyforward forwards between TCP sockets, "
            "not files or terminals",
        ),
        (
            "TCP-LISTEN:443 -",
            "- (STDIO) is not supported: pyforward forwards between TCP sockets, "
            "not files or terminals",
        ),
        (
            "TCP-LISTEN:443 /dev/null",
            "'/dev/null' (a file) is not supported: pyforward forwards between TCP sockets, "
            "not files or terminals",
        ),
        ("TCP-LISTEN:443 3", "3 (file descriptor) is not supported: not TCP"),
        # unknown address types
        (
            "TCP-LISTN:443 TCP:10.0.0.5:80",
            "unknown address type 'TCP-LISTN' in 'TCP-LISTN:443': "
            "pyforward-socat takes TCP-LISTEN:PORT or UNIX-LISTEN:PATH [,OPTIONS], then "
            "TCP:HOST:PORT or UNIX-CONNECT:PATH [,OPTIONS]",
        ),
        # the roles of the two addresses
        (
            "TCP:10.0.0.5:80 TCP-LISTEN:443",
            "the first address must be TCP-LISTEN or UNIX-LISTEN (pyforward listens, then "
            "connects to the target for each client), got TCP",
        ),
        (
            "TCP-LISTEN:443 TCP-LISTEN:444",
            "the second address must be TCP:HOST:PORT or UNIX-CONNECT:PATH (the target), "
            "got TCP-LISTEN",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5:80!!TCP:10.0.0.6:80",
            "address 'TCP:10.0.0.5:80!!TCP:10.0.0.6:80': dual addresses (READ!!WRITE) are not "
            "supported: pyforward relays one connection both ways",
        ),
        # the number of addresses
        (
            "TCP-LISTEN:443",
            "socat takes two addresses, got 1 address: "
            "e.g. TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5:80 TCP:10.0.0.6:80",
            "socat takes two addresses, got 3 addresses: "
            "e.g. TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        ),
        (
            "",
            "socat takes two addresses, got 0 addresses: "
            "e.g. TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653",
        ),
        # missing or extra parameters
        (
            "TCP-LISTEN TCP:10.0.0.5:80",
            "address 'TCP-LISTEN': TCP-LISTEN takes TCP-LISTEN:PORT (0 parameters given)",
        ),
        (
            "TCP-LISTEN:443:1 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443:1': TCP-LISTEN takes TCP-LISTEN:PORT (2 parameters given)",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5",
            "address 'TCP:10.0.0.5': TCP takes TCP:HOST:PORT (1 parameter given)",
        ),
        (
            "TCP-LISTEN:443 TCP:::1:80",
            "address 'TCP:::1:80': TCP takes TCP:HOST:PORT (4 parameters given); "
            "write an IPv6 address in brackets, e.g. TCP:[::1]:8443",
        ),
        ("TCP-LISTEN:443 TCP::80", "address 'TCP::80': the host is empty"),
        ("TCP-LISTEN: TCP:10.0.0.5:80", "address 'TCP-LISTEN:': the port is empty"),
        # bad ports
        (
            "TCP-LISTEN:https TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:https': port 'https' is not a number "
            "(pyforward takes port numbers, not service names)",
        ),
        (
            "TCP-LISTEN:65536 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:65536': port must be 0-65535, got 65536",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5:0",
            "address 'TCP:10.0.0.5:0': port must be 1-65535, got 0",
        ),
        (
            "TCP-LISTEN:-1 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:-1': port must be 0-65535, got -1",
        ),
        # bad hosts and families
        (
            "TCP-LISTEN:443 TCP:bad_host:80",
            "address 'TCP:bad_host:80': 'bad_host' is not a host name or IP address",
        ),
        (
            "TCP-LISTEN:443 TCP4:[::1]:80",
            "address 'TCP4:[::1]:80': TCP4 takes an IPv4 address, got '::1'",
        ),
        (
            "TCP-LISTEN:443 TCP6:10.0.0.5:80",
            "address 'TCP6:10.0.0.5:80': TCP6 takes an IPv6 address, got '10.0.0.5'",
        ),
        (
            "TCP4-LISTEN:443,bind=::1 TCP:10.0.0.5:80",
            "address 'TCP4-LISTEN:443,bind=::1': TCP4-LISTEN takes an IPv4 address, got '::1'",
        ),
        (
            "TCP-LISTEN:443,bind=127.0.0.1:80 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,bind=127.0.0.1:80': bind=127.0.0.1:80: give bind= an "
            "address only; the port comes from TCP-LISTEN:PORT",
        ),
        (
            "TCP-LISTEN:443,bind=no_such! TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,bind=no_such!': bind=no_such!: "
            "'no_such!' is not a host name or IP address",
        ),
        # unknown, unsupported and misplaced options
        (
            "TCP-LISTEN:443,forks TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,forks': unknown option 'forks' (did you mean 'fork'?)",
        ),
        (
            "TCP-LISTEN:443,cool-write TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,cool-write': option 'cool-write' is not supported; on "
            "TCP-LISTEN pyforward-socat takes fork, reuseaddr, bind, backlog, max-children, "
            "keepalive, nodelay, range, su, ipv6-v6only, reuseport",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5:80,fork",
            "address 'TCP:10.0.0.5:80,fork': option fork does not apply to TCP",
        ),
        (
            "TCP-LISTEN:443,connect-timeout=5 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,connect-timeout=5': option connect-timeout does not apply "
            "to TCP-LISTEN",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5:80,bind=10.0.0.1",
            "address 'TCP:10.0.0.5:80,bind=10.0.0.1': option bind does not apply to TCP",
        ),
        # bad option values
        (
            "TCP-LISTEN:443,backlog TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,backlog': option backlog needs a value: backlog=128",
        ),
        (
            "TCP-LISTEN:443,bind= TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,bind=': option bind needs a value: bind=127.0.0.1",
        ),
        (
            "TCP-LISTEN:443,backlog=65536 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,backlog=65536': backlog must be 1-65535, got 65536",
        ),
        (
            "TCP-LISTEN:443,backlog=many TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,backlog=many': backlog: expected a whole number, got 'many'",
        ),
        (
            "TCP-LISTEN:443,backlog=0 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,backlog=0': backlog must be 1-65535, got 0",
        ),
        (
            "TCP-LISTEN:443,max-children=-1 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,max-children=-1': max-children: expected a whole number, "
            "got '-1'",
        ),
        (
            "TCP-LISTEN:443,fork=yes TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,fork=yes': fork=yes: expected a whole number, got 'yes'",
        ),
        (
            "TCP-LISTEN:443,reuseaddr=0 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,reuseaddr=0': reuseaddr=0 is not supported: "
            "pyforward always sets SO_REUSEADDR on its listeners",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5:80,nodelay=0",
            "address 'TCP:10.0.0.5:80,nodelay=0': nodelay=0 is not supported: "
            "pyforward always sets TCP_NODELAY on both legs",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5:80,connect-timeout=0",
            "address 'TCP:10.0.0.5:80,connect-timeout=0': connect-timeout must be more than "
            "0 seconds",
        ),
        (
            "TCP-LISTEN:443 TCP:10.0.0.5:80,connect-timeout=1e3",
            "address 'TCP:10.0.0.5:80,connect-timeout=1e3': connect-timeout: expected a number "
            "of seconds, got '1e3'",
        ),
        # socat's own options
        ("-T", "socat option -T needs a value, e.g. -T 30"),
        (f"-T soon {SEED}", "-T: expected a number of seconds, got 'soon'"),
        (f"-T -5 {SEED}", "-T: expected a number of seconds, got '-5'"),
        (f"-b 0 {SEED}", "-b must be 1-2147483647, got 0"),
        (f"-b big {SEED}", "-b: expected a whole number, got 'big'"),
        (f"-t x {SEED}", "-t: expected a number of seconds, got 'x'"),
        (
            f"-r /tmp/r {SEED}",
            "socat option -r is not supported: pyforward writes its dump (-v, -x) to stderr, "
            "not to a file",
        ),
        (f"-u {SEED}", "socat option -u is not supported: pyforward relays both directions"),
        (
            f"-lf /var/log/socat.log {SEED}",
            "socat option -lf is not supported: pyforward logs to stderr (under systemd, the "
            "journal); to keep a file, set StandardError=append:FILE in the unit",
        ),
        (
            f"-lf/var/log/socat.log {SEED}",
            "socat option -lf is not supported: pyforward logs to stderr (under systemd, the "
            "journal); to keep a file, set StandardError=append:FILE in the unit",
        ),
        (
            f"-6 {SEED}",
            "socat option -6 is not supported: TCP-LISTEN listens on IPv4 and IPv6; name the "
            "version with TCP4-LISTEN or TCP6-LISTEN",
        ),
        (
            f"-q {SEED}",
            "unknown socat option '-q': pyforward-socat takes -d, -T SECONDS, -t SECONDS, "
            "-b SIZE, -ls, -v, -x",
        ),
        (
            f"-dx {SEED}",
            "unknown socat option '-dx': pyforward-socat takes -d, -T SECONDS, -t SECONDS, "
            "-b SIZE, -ls, -v, -x",
        ),
        # lexical errors
        (
            "TCP-LISTEN:443,bind=[::1 TCP:10.0.0.5:80",
            "address 'TCP-LISTEN:443,bind=[::1': [ is never closed (expected ])",
        ),
        (
            "TCP-LISTEN:443 'TCP:10.0.0.5:80",
            "cannot split the command line: No closing quotation",
        ),
    ],
)
def test_refusals(line: str, message: str) -> None:
    assert refusal(line) == message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["TCP-LISTEN:443", "TCP:'10.0.0.5:80"],
            "address \"TCP:'10.0.0.5:80\": ' is never closed (expected ')",
        ),
        (
            ["TCP-LISTEN:443", "TCP:10.0.0.5:80\\"],
            "address 'TCP:10.0.0.5:80\\\\': ends in a lone backslash",
        ),
        (["TCP-LISTEN:443", ""], "empty address: expected TYPE:PARAMS, e.g. TCP-LISTEN:443"),
    ],
)
def test_refusals_of_argv_the_shell_would_not_produce(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_socat_args(argv)
    assert str(info.value) == message


def test_format_gives_socat_words_socat_itself_accepts() -> None:
    command = parse_socat_line(
        "-dd -T 30 tcp6-l:443,bind=[::],FORK,maxchildren=5 tcp6:[fd00::1]:80,connect-timeout=.5"
    )
    assert format_socat_args(command) == [
        "-dd",
        "-T",
        "30",
        "TCP6-LISTEN:443,fork,bind=[::],max-children=5",
        "TCP6:[fd00::1]:80,connect-timeout=0.5",
    ]


# --- property: only ConfigError, and what is accepted round-trips
#
# Generated command lines are mostly well-formed, spelled in every way socat allows
# (any case, aliases, quotes, escapes, empty options), with a bad part now and then.

# A backslash before these is a no-op (not a C escape such as \n, \t, \0).
SAFE_TO_ESCAPE = "cdeghijklmopqsuwxyz123456789.-"


def sometimes_bad(good: st.SearchStrategy[T], bad: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`good` about nine times in ten, else `bad`."""
    # sampled_from draws about evenly; st.integers would favour its bounds.
    return st.sampled_from([True] * 9 + [False]).flatmap(lambda ok: good if ok else bad)


@st.composite
def any_case(draw: st.DrawFn, word: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in word)


@st.composite
def spelled(draw: st.DrawFn, word: str) -> str:
    """The word as socat reads it, spelled with quotes or escapes its lexer removes."""
    how = draw(st.sampled_from(["plain", "plain", "double", "single", "escape"]))
    if how == "double":
        return f'"{word}"'
    if how == "single":
        return f"'{word}'"
    if how == "escape" and word:
        index = draw(st.integers(0, len(word) - 1))
        if word[index] in SAFE_TO_ESCAPE:
            return word[:index] + "\\" + word[index:]
    return word


def keyword(words: list[str], others: list[str]) -> st.SearchStrategy[str]:
    choice = sometimes_bad(st.sampled_from(words), st.sampled_from(others))
    return choice.flatmap(any_case).flatmap(spelled)


ports = sometimes_bad(
    st.integers(0, 65535).map(str),
    st.one_of(
        st.integers(65536, 10**6).map(str),
        st.sampled_from(["", "https", "-1", "0x50", "1e3", " 80", "\uff18\uff10"]),
    ),
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
names = st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z]{1,4}){0,2}", fullmatch=True)
hosts = sometimes_bad(
    st.one_of(ipv4, ipv6.map(lambda a: f"[{a}]"), names),
    st.one_of(ipv6, st.text(max_size=6), st.sampled_from(["", "a_b", "1.2.3", "[::1"])),
)
whole = sometimes_bad(st.integers(1, 10**6).map(str), st.sampled_from(["", "x", "-1", "0"]))
seconds = sometimes_bad(
    st.one_of(
        st.integers(1, 10**6).map(str),
        st.decimals("0.001", "1000", places=3).map(str),
        st.sampled_from([".5", "5.", "0.25"]),
    ),
    st.sampled_from(["", "x", "-1", "0", "1e3", "inf"]),
)
switch = sometimes_bad(st.sampled_from(["", "=1", "=7"]), st.sampled_from(["=0", "=x", "="]))


def named(name: str, values: st.SearchStrategy[str], sep: str = "=") -> st.SearchStrategy[str]:
    return st.tuples(any_case(name), values).map(lambda nv: f"{nv[0]}{sep if nv[1] else ''}{nv[1]}")


listen_options = st.one_of(
    st.tuples(any_case("fork"), st.sampled_from(["", "=1", "=0", "=3"])).map("".join),
    st.tuples(st.sampled_from(["reuseaddr", "so-reuseaddr"]).flatmap(any_case), switch).map(
        "".join
    ),
    st.tuples(st.sampled_from(["keepalive", "so-keepalive"]).flatmap(any_case), switch).map(
        "".join
    ),
    st.tuples(st.sampled_from(["nodelay", "tcp-nodelay"]).flatmap(any_case), switch).map("".join),
    st.tuples(any_case("bind"), hosts).map(lambda nv: f"{nv[0]}={nv[1]}"),
    st.tuples(any_case("backlog"), whole).map(lambda nv: f"{nv[0]}={nv[1]}"),
    st.tuples(st.sampled_from(["max-children", "maxchildren"]).flatmap(any_case), whole).map(
        lambda nv: f"{nv[0]}={nv[1]}"
    ),
    st.just(""),  # an empty option: ",," is allowed
)
connect_options = st.one_of(
    st.tuples(any_case("connect-timeout"), seconds).map(lambda nv: f"{nv[0]}={nv[1]}"),
    st.tuples(st.sampled_from(["keepalive", "nodelay"]).flatmap(any_case), switch).map("".join),
    st.just(""),
)
wrong_options = st.sampled_from(["range=10.0.0.0/8", "su=nobody", "forks", "fork:1", "cool-write"])


@st.composite
def address(
    draw: st.DrawFn,
    word: st.SearchStrategy[str],
    params: st.SearchStrategy[list[str]],
    options: st.SearchStrategy[str],
) -> str:
    parts = [draw(word), *(draw(spelled(p)) for p in draw(params))]
    chosen = draw(st.lists(sometimes_bad(options, wrong_options), max_size=4))
    return ":".join(parts) + "".join("," + o for o in chosen)


listen_address = address(
    keyword(
        ["tcp-listen", "tcp4-listen", "tcp6-listen", "tcp-l", "tcp4-l", "inet6-l"],
        ["udp-l", "openssl-listen", "tcp-listn", "tcp"],
    ),
    sometimes_bad(
        ports.map(lambda p: [p]), st.lists(ports, max_size=3).filter(lambda ps: len(ps) != 1)
    ),
    listen_options,
)
connect_address = address(
    keyword(
        ["tcp", "tcp4", "tcp6", "tcp-connect", "inet"],
        ["openssl", "stdio", "exec", "nope", "tcp-listen"],
    ),
    sometimes_bad(
        st.tuples(hosts, ports).map(lambda hp: [hp[0], hp[1]]),
        st.lists(st.one_of(hosts, ports), max_size=4).filter(lambda ps: len(ps) != 2),
    ),
    connect_options,
)
socat_options = st.lists(
    sometimes_bad(
        st.one_of(
            st.from_regex(r"-d{1,5}", fullmatch=True),
            seconds.map(lambda n: f"-T{n}"),
            whole.map(lambda n: f"-b{n}"),
            seconds.map(lambda n: f"-t{n}"),
            st.just("-ls"),
        ),
        st.sampled_from(["-T", "-b", "-v", "-lf", "-6", "-q", "-", "--", "5"]),
    ),
    max_size=4,
)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    argv = draw(socat_options)
    addresses = [draw(listen_address), draw(connect_address)]
    if draw(st.sampled_from([False] * 19 + [True])):
        addresses.reverse()
    return argv + addresses


def check_round_trip(argv: list[str]) -> SocatCommand | None:
    try:
        command = parse_socat_args(argv)
    except ConfigError:
        return None
    formatted = format_socat_args(command)
    again = parse_socat_args(formatted)
    assert again == command
    assert build_settings(to_flags(again), {}) == build_settings(to_flags(command), {})
    # ...and as one line, the way a unit's ExecStart holds it.
    assert parse_socat_line(shlex.join(["/usr/bin/socat", *formatted])) == command
    return command


@hypothesis_settings(max_examples=300)
@given(command_lines())
def test_generated_command_lines_fail_only_with_config_error_and_round_trip(
    argv: list[str],
) -> None:
    check_round_trip(argv)


@given(st.lists(st.text(max_size=30), max_size=5))
def test_arbitrary_words_fail_only_with_config_error(argv: list[str]) -> None:
    check_round_trip(argv)


@given(st.text(max_size=80))
def test_arbitrary_lines_fail_only_with_config_error(line: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_socat_line(line)


def test_the_generator_reaches_accepted_command_lines() -> None:
    # Guards the property test: most generated lines are refused; some must not be.
    accepted = [
        check_round_trip(["-T", "5", "tcp-l:80,fork,bind='127.0.0.1'", 'TCP:"10.0.0.5":\\80']),
        check_round_trip(["TCP6-L:80,MaxChildren=3", "tcp6:[::1]:80,connect-timeout=1.250"]),
    ]
    assert all(command is not None for command in accepted)
