"""socat command lines: parse the subset a TCP forward uses, refuse the rest. Pure.

The grammar follows socat's documentation (ADDRESS SPECIFICATIONS in socat(1)) and its
lexer (nestlex.c):

    socat [OPTIONS] ADDRESS ADDRESS
    ADDRESS = TYPE { ":" PARAM } { "," OPTION [ "=" VALUE ] }

Keywords and option names are case-insensitive. Inside a word, `\\` escapes the next
character (with C escapes: `\\n`, `\\t`, ...), `"..."` and `'...'` quote (the quotes are
dropped), and `(...)`, `[...]`, `{...}` nest (the brackets are kept): `:` and `,` are not
special inside any of them, so `TCP:[::1]:80` has two parameters. A value runs to the
next `,`, so it may hold `:` and `=`.

The subset: `TCP-LISTEN` (also `TCP4-LISTEN`, `TCP6-LISTEN`, `TCP-L`, ...) first, then
`TCP` (also `TCP4`, `TCP6`, `TCP-CONNECT`, ...), with the options a forward needs. What
the relay does better by design is accepted and reported as dropped (`-b`, `-t`);
everything else is refused with a `ConfigError` naming the part, never guessed at.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from pathlib import PurePosixPath

from pyforward.config.access import parse_network
from pyforward.config.addresses import PortError, host_port, parse_listen, parse_target, port_number
from pyforward.config.settings import MAX_BACKLOG, Transport
from pyforward.errors import ConfigError
from pyforward.obs.dump import DumpMode
from pyforward.socat.unix import (
    UNIX_CONNECT_TYPES,
    UNIX_LISTEN_OPTIONS,
    UNIX_LISTEN_TYPES,
    UNIX_OPTION_ALIASES,
    UnixConnectAddress,
    UnixListenAddress,
    keyword_of_connect,
    keyword_of_listen,
    listen_mode,
    owner_name,
    socat_param,
    unix_name,
)

PROGRAM_NAMES = frozenset({"socat", "pyforward-socat"})
_INT_MAX = 2**31 - 1  # the kernel takes backlog and counts as a C int


class Family(StrEnum):
    """The IP version an address keyword names: TCP (any), TCP4, TCP6."""

    ANY = ""
    IPV4 = "4"
    IPV6 = "6"


@dataclass(frozen=True)
class ListenAddress:
    """A `TCP-LISTEN` address. `fork` False means: serve one connection, then exit."""

    family: Family
    port: int
    bind: str | None = None  # host to listen on; None: every interface
    fork: bool = False
    backlog: int | None = None
    max_children: int | None = None  # 0 or None: no limit
    keepalive: bool = False
    reuseaddr: bool = False  # given; pyforward sets it on every listener anyway
    nodelay: bool = False  # given; pyforward sets it on every socket anyway
    transport: Transport = Transport.TCP  # UDP-LISTEN, UDP-RECVFROM: see udp.py
    recvfrom: bool = False  # UDP-RECVFROM rather than UDP-LISTEN
    allow: str | None = None  # range=: the one network whose clients are served
    su: str | None = None  # su=: the user to become once the socket is bound
    ipv6_v6only: bool | None = None  # TCP6-LISTEN's IPV6_V6ONLY; None: not given
    reuseport: bool = False


@dataclass(frozen=True)
class ConnectAddress:
    """A `TCP` (connect) address."""

    family: Family
    host: str
    port: int
    connect_timeout: float | None = None
    keepalive: bool = False
    nodelay: bool = False
    transport: Transport = Transport.TCP  # UDP:HOST:PORT
    retry: Retry | None = None
    sourceport: int | None = None  # sourceport=, sp=: the local port of the connect


@dataclass(frozen=True)
class Retry:
    """forever, retry=N, interval=SECONDS on the target: socat tries the connect again."""

    times: int | None  # None: forever
    interval: float | None = None  # None: socat's 1 s


Listen = ListenAddress | UnixListenAddress
Connect = ConnectAddress | UnixConnectAddress


@dataclass(frozen=True)
class SocatCommand:
    """A parsed socat command line within the supported subset."""

    listen: Listen
    connect: Connect
    idle_timeout: float | None = None  # -T; 0 means none, as in socat
    verbosity: int = 0  # number of -d
    buffer_size: int | None = None  # -b: accepted, not used
    close_delay: float | None = None  # -t: accepted, not used
    dump_text: bool = False  # -v: the bytes to stderr as text
    dump_hex: bool = False  # -x: ... as hex

    @property
    def dump(self) -> DumpMode:
        if self.dump_text:
            return DumpMode.TEXT_HEX if self.dump_hex else DumpMode.TEXT
        return DumpMode.HEX if self.dump_hex else DumpMode.OFF

    @property
    def max_accepts(self) -> int | None:
        """Without `fork`, socat serves one connection and exits."""
        return None if self.listen.fork else 1


# --- the lexer, after socat's nestlex(): ends, hard and soft quotes, nesting, escapes

_NESTS = {"(": ")", "[": "]", "{": "}"}
_C_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_DUAL = "!!"  # socat's separator of a dual (read!!write) address


def _lex(
    text: str,
    pos: int,
    ends: tuple[str, ...],
    *,
    where: str,
    quotes: bool = True,
    nests: bool = True,
    drop_quotes: bool = True,
) -> tuple[str, int]:
    """Read one word from `text[pos:]` up to an unquoted, unnested end; return it and
    the position of the end (or len(text)). As in socat, only the outermost quotes are
    dropped; quotes inside brackets or other quotes are kept."""
    out: list[str] = []
    while pos < len(text):
        if text.startswith(ends, pos):
            return "".join(out), pos
        char = text[pos]
        closer: str | None = None
        inner_quotes = inner_nests = True
        if quotes and char == "'":  # hard quote: no nesting inside, only escapes
            closer, inner_quotes, inner_nests = "'", False, False
        elif quotes and char == '"':
            closer = '"'
        elif nests and char in _NESTS:
            closer = _NESTS[char]
        if closer is not None:
            inner, end = _lex(
                text,
                pos + 1,
                (closer,),
                where=where,
                quotes=inner_quotes,
                nests=inner_nests,
                drop_quotes=False,
            )
            if end >= len(text):
                raise ConfigError(f"{where}: {char} is never closed (expected {closer})")
            keep = char in _NESTS or not drop_quotes
            out.append(f"{char}{inner}{closer}" if keep else inner)
            pos = end + 1
            continue
        if char == "\\":
            if pos + 1 >= len(text):
                raise ConfigError(f"{where}: ends in a lone backslash")
            escaped = text[pos + 1]
            out.append(_C_ESCAPES.get(escaped, escaped))
            pos += 2
            continue
        out.append(char)
        pos += 1
    return "".join(out), pos


@dataclass(frozen=True)
class _RawAddress:
    text: str  # as given, for messages
    keyword: str  # as given
    params: tuple[str, ...]
    options: tuple[tuple[str, str | None], ...]  # (name as given, value or None)


def _split_address(text: str) -> _RawAddress:
    where = f"address {text!r}"
    if not text:
        raise ConfigError("empty address: expected TYPE:PARAMS, e.g. TCP-LISTEN:443")
    keyword, pos = _lex(text, 0, (":", ",", _DUAL), where=where)
    params: list[str] = []
    while text.startswith(":", pos):
        param, pos = _lex(text, pos + 1, (":", ",", _DUAL), where=where)
        params.append(param)
    options: list[tuple[str, str | None]] = []
    while pos < len(text) and not text.startswith(_DUAL, pos):
        # pos is at a ",": empty options (",,") are skipped, as socat does.
        pos += 1
        if pos >= len(text) or text.startswith((",", _DUAL), pos):
            continue
        name, pos = _lex(text, pos, (",", "=", _DUAL), where=where)
        value: str | None = None
        if text.startswith("=", pos):
            value, pos = _lex(text, pos + 1, (",", _DUAL), where=where)
        options.append((name, value))
    if text.startswith(_DUAL, pos):
        raise ConfigError(
            f"{where}: dual addresses (READ!!WRITE) are not supported: "
            "pyforward relays one connection both ways"
        )
    return _RawAddress(text, keyword, tuple(params), tuple(options))


# --- address types

_LISTEN_TYPES = {
    "tcp-listen": Family.ANY,
    "tcp-l": Family.ANY,
    "inet-listen": Family.ANY,
    "inet-l": Family.ANY,
    "tcp4-listen": Family.IPV4,
    "tcp4-l": Family.IPV4,
    "inet4-listen": Family.IPV4,
    "inet4-l": Family.IPV4,
    "tcp6-listen": Family.IPV6,
    "tcp6-l": Family.IPV6,
    "inet6-listen": Family.IPV6,
    "inet6-l": Family.IPV6,
}
_CONNECT_TYPES = {
    "tcp": Family.ANY,
    "tcp-connect": Family.ANY,
    "inet": Family.ANY,
    "tcp4": Family.IPV4,
    "tcp4-connect": Family.IPV4,
    "inet4": Family.IPV4,
    "tcp6": Family.IPV6,
    "tcp6-connect": Family.IPV6,
    "inet6": Family.IPV6,
}

# Address types socat knows that pyforward refuses, by the first matching prefix.
_TLS = "pyforward forwards TCP; TLS passes through untouched"
_NOT_FILES = "pyforward forwards between TCP sockets, not files or terminals"
_REFUSED_PREFIXES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("openssl", "ssl", "dtls"), _TLS),
    (("udp",), "pyforward-socat takes UDP-LISTEN or UDP-RECVFROM, and a UDP:HOST:PORT target"),
    (("sctp", "dccp"), "pyforward forwards TCP only"),
    (
        ("unix", "abstract"),
        "pyforward forwards UNIX stream sockets (UNIX-LISTEN, UNIX-CONNECT), not datagrams",
    ),
    (("exec", "system", "shell"), "pyforward connects to a TCP target, it does not run programs"),
    (("proxy", "socks"), "pyforward connects to its target directly, not through a proxy"),
    (
        ("stdio", "stdin", "stdout", "stderr", "fd", "open", "gopen", "file", "creat", "pipe"),
        _NOT_FILES,
    ),
    (("fifo", "echo", "pty", "readline", "named", "tun", "interface", "if"), "not TCP"),
    (("ip", "socket", "datagram", "dgram", "sendto", "vsock", "posixmq"), "not TCP"),
    (("accept-fd", "socketpair"), "not TCP"),
)
# Every address keyword of socat 1.7 and 1.8, aliases included.
_SOCAT_TYPES = """abstract abstract-client abstract-connect abstract-listen abstract-recv
    abstract-recvfrom abstract-sendto accept-fd creat create datagram dccp dccp-connect
    dccp-listen dgram dtls dtls-c dtls-client dtls-connect dtls-l dtls-listen dtls-server
    echo exec fd fifo file gopen if interface ip ip-datagram ip-dgram ip-recv ip-recvfrom
    ip-send ip-sendto ip4 ip4-datagram ip4-dgram ip4-recv ip4-recvfrom ip4-send ip4-sendto
    ip6 ip6-datagram ip6-dgram ip6-recv ip6-recvfrom ip6-send ip6-sendto local named open
    openssl openssl-connect openssl-dtls-client openssl-dtls-connect openssl-dtls-listen
    openssl-dtls-server openssl-listen pipe posixmq-bidirectional posixmq-read
    posixmq-receive posixmq-send posixmq-write proxy proxy-connect pty readline sctp
    sctp-connect sctp-l sctp-listen sctp4 sctp4-connect sctp4-l sctp4-listen sctp6
    sctp6-connect sctp6-l sctp6-listen sendto shell socket-connect socket-datagram
    socket-listen socket-recv socket-recvfrom socket-sendto socketpair socks socks4 socks4a
    socks5 socks5-connect socks5-listen ssl ssl-l stderr stdin stdio stdout system tun udp
    udp-connect udp-datagram udp-dgram udp-l udp-listen udp-recv udp-recvfrom udp-send
    udp-sendto udp4 udp4-connect udp4-datagram udp4-dgram udp4-l udp4-listen udp4-recv
    udp4-recvfrom udp4-send udp4-sendto udp6 udp6-connect udp6-datagram udp6-dgram udp6-l
    udp6-listen udp6-recv udp6-recvfrom udp6-send udp6-sendto udplite udplite-connect
    udplite-listen unix unix-client unix-connect unix-l unix-listen unix-recv
    unix-recvfrom unix-send unix-sendto vsock vsock-connect vsock-l vsock-listen"""
_KNOWN_SOCAT_TYPES = frozenset(_SOCAT_TYPES.split())
_SUPPORTED_HINT = (
    "pyforward-socat takes TCP-LISTEN:PORT or UNIX-LISTEN:PATH [,OPTIONS], then "
    "TCP:HOST:PORT or UNIX-CONNECT:PATH [,OPTIONS]"
)


def _refuse_type(raw: _RawAddress) -> ConfigError:
    keyword = raw.keyword
    lowered = keyword.lower()
    shown = keyword.upper()
    if keyword in ("-", ""):
        return ConfigError(f"- (STDIO) is not supported: {_NOT_FILES}")
    if keyword.isdigit():
        return ConfigError(f"{keyword} (file descriptor) is not supported: not TCP")
    if "/" in keyword:
        return ConfigError(f"{keyword!r} (a file) is not supported: {_NOT_FILES}")
    if lowered in _KNOWN_SOCAT_TYPES:
        for prefixes, reason in _REFUSED_PREFIXES:
            if lowered.startswith(prefixes):
                return ConfigError(f"{shown} is not supported: {reason}")
    return ConfigError(f"unknown address type {keyword!r} in {raw.text!r}: {_SUPPORTED_HINT}")


# --- values


def _port(text: str, where: str, *, minimum: int) -> int:
    try:
        return port_number(text, minimum)
    except PortError as exc:
        # socat itself would look a name up in /etc/services.
        names = " (pyforward takes port numbers, not service names)" if exc.not_a_number else ""
        raise ConfigError(f"{where}: {exc}{names}") from None


_SECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _seconds(text: str, what: str) -> float:
    if not _SECONDS.fullmatch(text):
        raise ConfigError(f"{what}: expected a number of seconds, got {text!r}")
    return float(text)


def _whole(text: str, what: str, *, minimum: int = 0, maximum: int = _INT_MAX) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{what}: expected a whole number, got {text!r}")
    number = int(text)
    if not minimum <= number <= maximum:
        raise ConfigError(f"{what} must be {minimum}-{maximum}, got {number}")
    return number


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _literal_family(host: str) -> Family | None:
    try:
        version = ipaddress.ip_address(host.split("%", 1)[0]).version
    except ValueError:
        return None
    return Family.IPV4 if version == 4 else Family.IPV6


def _check_family(host: str, family: Family, where: str, keyword: str) -> None:
    found = _literal_family(host)
    if family is not Family.ANY and found is not None and found is not family:
        version = "IPv4" if family is Family.IPV4 else "IPv6"
        raise ConfigError(f"{where}: {keyword.upper()} takes an {version} address, got {host!r}")


# --- options

_ALWAYS_ON = {
    "reuseaddr": "pyforward always sets SO_REUSEADDR on its listeners",
    "nodelay": "pyforward always sets TCP_NODELAY on both legs",
}
_OPTION_ALIASES = {
    "so-reuseaddr": "reuseaddr",
    "so-keepalive": "keepalive",
    "tcp-nodelay": "nodelay",
    "maxchildren": "max-children",
    "ipv6only": "ipv6-v6only",
    "ipv6-v6only": "ipv6-v6only",
    "substuser": "su",
    "su-d": "su",
    "substuser-delayed": "su",
    "sp": "sourceport",
    **UNIX_OPTION_ALIASES,
}
_LISTEN_OPTIONS = (
    "fork",
    "reuseaddr",
    "bind",
    "backlog",
    "max-children",
    "keepalive",
    "nodelay",
    "range",
    "su",
    "ipv6-v6only",
    "reuseport",
)
# forever, retry, interval and sourceport are read and reported (summarize): see there.
_CONNECT_OPTIONS = (
    "connect-timeout",
    "keepalive",
    "nodelay",
    "forever",
    "retry",
    "interval",
    "sourceport",
)
_UNIX_CONNECT_OPTIONS = ("connect-timeout", "forever", "retry", "interval")
# Every table of options, for "does not apply to" rather than "unknown".
_ALL_OPTIONS = (_LISTEN_OPTIONS, _CONNECT_OPTIONS, UNIX_LISTEN_OPTIONS, _UNIX_CONNECT_OPTIONS)


def _flag(name: str, value: str | None, where: str) -> bool:
    """socat's boolean and integer switches: bare means on, =N means N != 0."""
    if value is None:
        return True
    return _whole(value, f"{where}: {name}={value}", minimum=0) != 0


def _needs(name: str, value: str | None, where: str, example: str) -> str:
    if value is None or value == "":
        raise ConfigError(f"{where}: option {name} needs a value: {name}={example}")
    return value


def _option_name(raw: _RawAddress, name: str, allowed: tuple[str, ...], keyword: str) -> str:
    lowered = name.lower()
    canonical = _OPTION_ALIASES.get(lowered, lowered)
    if canonical in allowed:
        return canonical
    where = f"address {raw.text!r}"
    if any(canonical in table for table in _ALL_OPTIONS):
        raise ConfigError(f"{where}: option {name} does not apply to {keyword.upper()}")
    close = difflib.get_close_matches(canonical, allowed, n=1)
    if close:
        raise ConfigError(f"{where}: unknown option {name!r} (did you mean {close[0]!r}?)")
    raise ConfigError(
        f"{where}: option {name!r} is not supported; on {keyword.upper()} pyforward-socat "
        f"takes {', '.join(allowed)}"
    )


def _check_params(raw: _RawAddress, expected: Sequence[str]) -> None:
    if len(raw.params) != len(expected):
        form = ":".join([raw.keyword.upper(), *expected])
        got = len(raw.params)
        hint = ""
        if len(expected) == 2 and got > 2:
            hint = "; write an IPv6 address in brackets, e.g. TCP:[::1]:8443"
        raise ConfigError(
            f"address {raw.text!r}: {raw.keyword.upper()} takes {form} "
            f"({got} parameter{'s' if got != 1 else ''} given){hint}"
        )


def _parse_bind(value: str, where: str) -> str:
    """bind= on a listener: an address, no port (the port is TCP-LISTEN's parameter)."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ConfigError(f"{where}: bind={value}: missing ]")
        if rest:
            raise ConfigError(
                f"{where}: bind={value}: give bind= an address only; "
                "the port comes from TCP-LISTEN:PORT"
            )
    elif value.count(":") == 1:
        raise ConfigError(
            f"{where}: bind={value}: give bind= an address only; "
            "the port comes from TCP-LISTEN:PORT"
        )
    else:
        host = value
    if not host:
        raise ConfigError(f"{where}: bind= needs an address")
    return host


def _parse_listen(raw: _RawAddress, family: Family) -> ListenAddress:
    where = f"address {raw.text!r}"
    _check_params(raw, ["PORT"])
    address = ListenAddress(family=family, port=_port(raw.params[0], where, minimum=0))
    for name, value in raw.options:
        option = _option_name(raw, name, _LISTEN_OPTIONS, raw.keyword)
        if option == "fork":
            address = replace(address, fork=_flag(name, value, where))
        elif option == "keepalive":
            address = replace(address, keepalive=_flag(name, value, where))
        elif option in _ALWAYS_ON:
            if not _flag(name, value, where):
                raise ConfigError(f"{where}: {name}={value} is not supported: {_ALWAYS_ON[option]}")
            if option == "reuseaddr":
                address = replace(address, reuseaddr=True)
            else:
                address = replace(address, nodelay=True)
        elif option == "bind":
            host = _parse_bind(_needs(name, value, where, "127.0.0.1"), where)
            address = replace(address, bind=host)
        elif option == "backlog":
            text = _needs(name, value, where, "128")
            backlog = _whole(text, f"{where}: {name}", minimum=1, maximum=MAX_BACKLOG)
            address = replace(address, backlog=backlog)
        elif option == "range":
            address = replace(
                address, allow=_range(_needs(name, value, where, "10.0.0.0/8"), where)
            )
        elif option == "su":
            address = replace(
                address, su=owner_name(name, _needs(name, value, where, "nobody"), where)
            )
        elif option == "reuseport":
            address = replace(address, reuseport=_flag(name, value, where))
        elif option == "ipv6-v6only":
            if family is not Family.IPV6:
                raise ConfigError(
                    f"{where}: {name} applies to TCP6-LISTEN, not {raw.keyword.upper()}"
                )
            address = replace(address, ipv6_v6only=_flag(name, value, where))
        else:  # max-children
            text = _needs(name, value, where, "100")
            address = replace(address, max_children=_whole(text, f"{where}: {name}"))
    if address.bind is not None:
        _check_family(address.bind, family, where, raw.keyword)
        try:
            parse_listen(host_port(address.bind, address.port))
        except ConfigError as exc:
            raise ConfigError(f"{where}: bind={address.bind}: {_reason(exc)}") from None
    return address


def _parse_connect(raw: _RawAddress, family: Family) -> ConnectAddress:
    where = f"address {raw.text!r}"
    _check_params(raw, ["HOST", "PORT"])
    host = _unbracket(raw.params[0])
    if not host:
        raise ConfigError(f"{where}: the host is empty")
    port = _port(raw.params[1], where, minimum=1)
    _check_family(host, family, where, raw.keyword)
    try:
        parse_target(host_port(host, port))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {_reason(exc)}") from None
    address = ConnectAddress(family=family, host=host, port=port)
    for name, value in raw.options:
        option = _option_name(raw, name, _CONNECT_OPTIONS, raw.keyword)
        if option == "keepalive":
            address = replace(address, keepalive=_flag(name, value, where))
        elif option == "nodelay":
            if not _flag(name, value, where):
                raise ConfigError(f"{where}: {name}={value} is not supported: {_ALWAYS_ON[option]}")
            address = replace(address, nodelay=True)
        elif option in _RETRY_OPTIONS:
            address = replace(address, retry=_retry(address.retry, option, name, value, where))
        elif option == "sourceport":
            port = _port(_needs(name, value, where, "2000"), f"{where}: {name}", minimum=1)
            address = replace(address, sourceport=port)
        else:  # connect-timeout
            address = replace(address, connect_timeout=_timeout(name, value, where))
    return address


def _timeout(name: str, value: str | None, where: str) -> float:
    seconds = _seconds(_needs(name, value, where, "5"), f"{where}: {name}")
    if seconds <= 0:
        raise ConfigError(f"{where}: {name} must be more than 0 seconds")
    return seconds


_RETRY_OPTIONS = ("forever", "retry", "interval")


def _retry(
    retry: Retry | None, option: str, name: str, value: str | None, where: str
) -> Retry | None:
    """forever / retry=N / interval=SECONDS, on top of what the address said so far."""
    current = retry or Retry(times=0)
    if option == "forever":
        return replace(current, times=None) if _flag(name, value, where) else current
    if option == "retry":
        times = _whole(_needs(name, value, where, "5"), f"{where}: {name}")
        return replace(current, times=times)
    return replace(current, interval=_timeout(name, value, where))


def _range(value: str, where: str) -> str:
    """range=: socat's ADDRESS/BITS or ADDRESS:MASK, IPv6 in brackets; the network as text."""
    text = value
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        text = inner + rest if sep else text
    address, colon, mask = text.partition(":")
    if colon and "." in address and "." in mask:
        text = f"{address}/{mask}"
    try:
        network = ipaddress.ip_network(text, strict=False)
        parse_network(str(network))
    except ValueError:
        raise ConfigError(
            f"{where}: range={value}: expected ADDRESS/BITS, e.g. range=10.0.0.0/8"
        ) from None
    return str(network)


def _parse_unix_listen(raw: _RawAddress, abstract: bool) -> UnixListenAddress:
    where = f"address {raw.text!r}"
    _check_params(raw, ["PATH"])
    address = UnixListenAddress(unix_name(raw.params[0], abstract, where))
    for name, value in raw.options:
        option = _option_name(raw, name, UNIX_LISTEN_OPTIONS, raw.keyword)
        if option == "fork":
            address = replace(address, fork=_flag(name, value, where))
        elif option == "backlog":
            text = _needs(name, value, where, "128")
            backlog = _whole(text, f"{where}: {name}", minimum=1, maximum=MAX_BACKLOG)
            address = replace(address, backlog=backlog)
        elif option == "max-children":
            text = _needs(name, value, where, "100")
            address = replace(address, max_children=_whole(text, f"{where}: {name}"))
        elif option == "mode":
            address = replace(address, mode=listen_mode(_needs(name, value, where, "0660"), where))
        elif option == "user":
            address = replace(
                address, user=owner_name(name, _needs(name, value, where, "0"), where)
            )
        elif option == "group":
            address = replace(
                address, group=owner_name(name, _needs(name, value, where, "0"), where)
            )
        elif option == "su":
            address = replace(
                address, su=owner_name(name, _needs(name, value, where, "nobody"), where)
            )
        elif option == "unlink-early":
            address = replace(address, unlink_early=_flag(name, value, where))
        else:  # unlink-close
            address = replace(address, unlink_close=_flag(name, value, where))
    if address.abstract and (address.mode, address.user, address.group) != (None,) * 3:
        raise ConfigError(f"{where}: an abstract socket has no file to give a mode or owner")
    return address


def _parse_unix_connect(raw: _RawAddress, abstract: bool) -> UnixConnectAddress:
    where = f"address {raw.text!r}"
    _check_params(raw, ["PATH"])
    address = UnixConnectAddress(unix_name(raw.params[0], abstract, where))
    for name, value in raw.options:
        option = _option_name(raw, name, _UNIX_CONNECT_OPTIONS, raw.keyword)
        if option in _RETRY_OPTIONS:
            address = replace(address, retry=_retry(address.retry, option, name, value, where))
        else:  # connect-timeout
            address = replace(address, connect_timeout=_timeout(name, value, where))
    return address


# Address types by keyword: the parser of each, first (listen) or second (target) address.
_LISTEN_PARSERS: dict[str, Callable[[_RawAddress], Listen]] = {
    **{k: functools.partial(_parse_listen, family=f) for k, f in _LISTEN_TYPES.items()},
    **{k: functools.partial(_parse_unix_listen, abstract=a) for k, a in UNIX_LISTEN_TYPES.items()},
}
_CONNECT_PARSERS: dict[str, Callable[[_RawAddress], Connect]] = {
    **{k: functools.partial(_parse_connect, family=f) for k, f in _CONNECT_TYPES.items()},
    **{
        k: functools.partial(_parse_unix_connect, abstract=a) for k, a in UNIX_CONNECT_TYPES.items()
    },
}


def _reason(exc: ConfigError) -> str:
    """The part of an address error after `invalid ... 'TEXT': `, which we replace."""
    message = str(exc)
    return message.split("': ", 1)[1] if "': " in message else message


# --- command-line options

_OPTIONS_WITH_VALUE = ("-T", "-t", "-b")
_REFUSED_OPTIONS = {
    "-r": "pyforward writes its dump (-v, -x) to stderr, not to a file",
    "-R": "pyforward writes its dump (-v, -x) to stderr, not to a file",
    "-u": "pyforward relays both directions",
    "-U": "pyforward relays both directions",
    "-s": "pyforward stops on every configuration error",
    "-g": "pyforward checks every option",
    "-D": "pyforward does not list file descriptors",
    "-L": "use systemd or a lock of your own",
    "-W": "use systemd or a lock of your own",
    "-4": "TCP-LISTEN listens on IPv4 and IPv6; name the version with TCP4-LISTEN or TCP6-LISTEN",
    "-6": "TCP-LISTEN listens on IPv4 and IPv6; name the version with TCP4-LISTEN or TCP6-LISTEN",
    "-lf": "pyforward logs to stderr (under systemd, the journal); "
    "to keep a file, set StandardError=append:FILE in the unit",
    "-ly": "pyforward logs to stderr (under systemd, the journal, which feeds syslog)",
    "-lm": "pyforward logs to stderr (under systemd, the journal, which feeds syslog)",
    "-lp": "pyforward names itself in its log lines",
    "-lu": "pyforward's timestamps come from its log format or the journal",
    "-lh": "pyforward's log lines come from one host; the journal records it",
}
_DEBUG_VERBOSITY = 4  # socat's -d -d -d -d: debug messages


def _is_option(word: str) -> bool:
    """A socat option (`-d`, `-T30`), not the STDIO address `-` (`-,echo=0`, `-!!...`)."""
    return word.startswith("-") and word[1:2] not in ("", ",", ":", "!")


def parse_socat_args(argv: Sequence[str]) -> SocatCommand:
    """Parse socat's arguments (without the program name) into a `SocatCommand`."""
    verbosity = 0
    idle_timeout: float | None = None
    close_delay: float | None = None
    buffer_size: int | None = None
    dumps: set[str] = set()
    index = 0
    # As in socat, options come first; the first word not starting with "-" (or a
    # lone "-", which is the STDIO address, also with options: "-,echo=0") begins the
    # addresses.
    while index < len(argv) and _is_option(argv[index]):
        arg = argv[index]
        index += 1
        if re.fullmatch(r"-d+", arg):
            verbosity += len(arg) - 1
            continue
        if arg[:2] in _OPTIONS_WITH_VALUE:
            # socat takes the value glued on (-T30) or as the next word (-T 30).
            flag, value = arg[:2], arg[2:]
            if not value:
                if index >= len(argv):
                    raise ConfigError(f"socat option {flag} needs a value, e.g. {flag} 30")
                value = argv[index]
                index += 1
            if flag == "-T":
                idle_timeout = _seconds(value, "-T")
            elif flag == "-t":
                close_delay = _seconds(value, "-t")
            else:
                buffer_size = _whole(value, "-b", minimum=1)
            continue
        if arg == "-ls":
            continue  # log to stderr: what pyforward does anyway
        if arg in ("-v", "-x"):
            dumps.add(arg)
            continue
        refused = arg[:3] if arg[:3] in _REFUSED_OPTIONS else arg[:2]
        if refused in _REFUSED_OPTIONS:
            raise ConfigError(
                f"socat option {refused} is not supported: {_REFUSED_OPTIONS[refused]}"
            )
        raise ConfigError(
            f"unknown socat option {arg!r}: pyforward-socat takes -d, -T SECONDS, "
            "-t SECONDS, -b SIZE, -ls, -v, -x"
        )
    addresses = list(argv[index:])
    if len(addresses) != 2:
        count = f"{len(addresses)} address{'es' if len(addresses) != 1 else ''}"
        raise ConfigError(
            f"socat takes two addresses, got {count}: e.g. "
            "TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653"
        )
    first, second = (_split_address(text) for text in addresses)
    from pyforward.socat import udp  # noqa: PLC0415 (it builds on this module)

    if udp.is_udp(first) or udp.is_udp(second):
        listen, connect = udp.parse_udp_pair(first, second)
        return SocatCommand(listen, connect, idle_timeout, verbosity, buffer_size, close_delay)
    for raw in (first, second):
        lowered = raw.keyword.lower()
        if lowered not in _LISTEN_PARSERS and lowered not in _CONNECT_PARSERS:
            raise _refuse_type(raw)
    if first.keyword.lower() not in _LISTEN_PARSERS:
        raise ConfigError(
            "the first address must be TCP-LISTEN or UNIX-LISTEN (pyforward listens, then "
            f"connects to the target for each client), got {first.keyword.upper()}"
        )
    if second.keyword.lower() not in _CONNECT_PARSERS:
        raise ConfigError(
            "the second address must be TCP:HOST:PORT or UNIX-CONNECT:PATH (the target), "
            f"got {second.keyword.upper()}"
        )
    return SocatCommand(
        listen=_LISTEN_PARSERS[first.keyword.lower()](first),
        connect=_CONNECT_PARSERS[second.keyword.lower()](second),
        idle_timeout=idle_timeout,
        verbosity=verbosity,
        buffer_size=buffer_size,
        close_delay=close_delay,
        dump_text="-v" in dumps,
        dump_hex="-x" in dumps,
    )


def split_command_line(text: str) -> list[str]:
    """Split a shell-style command line into words (quotes and backslashes as in sh)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise ConfigError(f"cannot split the command line: {exc}") from None


def parse_socat_line(text: str) -> SocatCommand:
    """Parse a whole command line as text; a leading `socat` (any path) is skipped."""
    words = split_command_line(text)
    if words and PurePosixPath(words[0]).name in PROGRAM_NAMES:
        words = words[1:]
    return parse_socat_args(words)


# --- back to a command line, and on to pyforward's settings


def _seconds_text(seconds: float) -> str:
    # Positional notation of the shortest repr: socat reads no exponents.
    text = format(Decimal(repr(seconds)), "f")
    return text.removesuffix(".0") if "." in text else text


_ESCAPE = re.compile(r"""([\\:,!"'()\[\]{}=])""")


def _escape(text: str) -> str:
    return _ESCAPE.sub(r"\\\1", text)


def _listen_keyword(listen: ListenAddress) -> str:
    if listen.transport is Transport.UDP:
        from pyforward.socat import udp  # noqa: PLC0415

        return udp.listen_keyword(listen)
    return f"TCP{listen.family.value}-LISTEN"


def _connect_keyword(connect: ConnectAddress) -> str:
    prefix = "UDP" if connect.transport is Transport.UDP else "TCP"
    return f"{prefix}{connect.family.value}"


def format_socat_args(command: SocatCommand) -> list[str]:
    """The canonical socat arguments for a command: parsing them gives it back."""
    argv: list[str] = []
    if command.verbosity:
        argv.append("-" + "d" * command.verbosity)
    if command.idle_timeout is not None:
        argv += ["-T", _seconds_text(command.idle_timeout)]
    if command.close_delay is not None:
        argv += ["-t", _seconds_text(command.close_delay)]
    if command.buffer_size is not None:
        argv += ["-b", str(command.buffer_size)]
    argv += ["-v"] * command.dump_text + ["-x"] * command.dump_hex
    argv.append(",".join(_listen_words(command.listen)))
    argv.append(",".join(_connect_words(command.connect)))
    return argv


def _listen_words(listen: Listen) -> list[str]:
    if isinstance(listen, UnixListenAddress):
        words = [f"{keyword_of_listen(listen)}:{_escape(socat_param(listen.name))}"]
        if listen.fork:
            words.append("fork")
    else:
        words = [f"{_listen_keyword(listen)}:{listen.port}"]
        if listen.fork:
            words.append("fork")
        if listen.reuseaddr:
            words.append("reuseaddr")
        if listen.bind is not None:
            bind = f"[{listen.bind}]" if ":" in listen.bind else _escape(listen.bind)
            words.append(f"bind={bind}")
    if listen.backlog is not None:
        words.append(f"backlog={listen.backlog}")
    if listen.max_children is not None:
        words.append(f"max-children={listen.max_children}")
    if isinstance(listen, UnixListenAddress):
        if listen.mode is not None:
            words.append(f"mode={listen.mode:04o}")
        words += [
            f"{key}={_escape(v)}"
            for key, v in (("user", listen.user), ("group", listen.group))
            if v
        ]
        if listen.unlink_early:
            words.append("unlink-early")
        if listen.unlink_close is not None:
            words.append(f"unlink-close={int(listen.unlink_close)}")
    else:
        if listen.keepalive:
            words.append("keepalive")
        if listen.nodelay:
            words.append("nodelay")
        if listen.allow is not None:
            network = f"[{listen.allow.replace('/', ']/')}" if ":" in listen.allow else listen.allow
            words.append(f"range={network}")
        if listen.ipv6_v6only is not None:
            words.append(f"ipv6-v6only={int(listen.ipv6_v6only)}")
        if listen.reuseport:
            words.append("reuseport")
    if listen.su is not None:
        words.append(f"su={_escape(listen.su)}")
    return words


def _connect_words(connect: Connect) -> list[str]:
    if isinstance(connect, UnixConnectAddress):
        words = [f"{keyword_of_connect(connect)}:{_escape(socat_param(connect.name))}"]
    else:
        host = f"[{connect.host}]" if ":" in connect.host else _escape(connect.host)
        words = [f"{_connect_keyword(connect)}:{host}:{connect.port}"]
    if connect.connect_timeout is not None:
        words.append(f"connect-timeout={_seconds_text(connect.connect_timeout)}")
    if isinstance(connect, ConnectAddress):
        if connect.keepalive:
            words.append("keepalive")
        if connect.nodelay:
            words.append("nodelay")
        if connect.sourceport is not None:
            words.append(f"sourceport={connect.sourceport}")
    retry = connect.retry
    if retry is not None:
        words.append("forever" if retry.times is None else f"retry={retry.times}")
        if retry.interval is not None:
            words.append(f"interval={_seconds_text(retry.interval)}")
    return words


def listen_text(listen: Listen) -> str:
    """The listen address in pyforward's form: `PORT`, `0.0.0.0:PORT`, `HOST:PORT` or
    `unix:PATH`."""
    if isinstance(listen, UnixListenAddress):
        return f"unix:{listen.name}"
    if listen.bind is not None:
        if listen.ipv6_v6only is False and listen.bind == "::":
            return str(listen.port)  # every interface, IPv4-mapped clients too
        return host_port(listen.bind, listen.port)
    if listen.family is Family.IPV4:
        return f"0.0.0.0:{listen.port}"
    if listen.ipv6_v6only:
        return f"[::]:{listen.port}"  # a named IPv6 address is bound IPv6-only
    # TCP6-LISTEN without ipv6only accepts IPv4-mapped clients on Linux, like
    # pyforward's every-interface listener; socat's TCP-LISTEN is IPv4 only, a subset.
    return str(listen.port)


def _target_text(connect: Connect) -> str:
    if isinstance(connect, UnixConnectAddress):
        return f"unix:{connect.name}"
    return host_port(connect.host, connect.port)


def to_flags(command: SocatCommand) -> dict[str, object]:
    """The settings flags (keys of pyforward's config schema) this command amounts to."""
    listen, connect = command.listen, command.connect
    flags: dict[str, object] = {"listen": listen_text(listen), "target": [_target_text(connect)]}
    if isinstance(listen, ListenAddress) and listen.transport is Transport.UDP:
        flags["protocol"] = Transport.UDP.value
        if command.idle_timeout:  # -T 0 (socat: none) keeps the default: a flow must end
            flags["udp_idle_timeout"] = command.idle_timeout
    elif command.idle_timeout is not None:
        flags["idle_timeout"] = command.idle_timeout
    if connect.connect_timeout is not None:
        flags["connect_timeout"] = connect.connect_timeout
    if listen.backlog is not None:
        flags["backlog"] = listen.backlog
    if listen.max_children:
        flags["max_connections"] = listen.max_children
    if isinstance(listen, UnixListenAddress):
        if listen.mode is not None:
            flags["unix_mode"] = f"{listen.mode:04o}"
        if listen.user is not None:
            flags["unix_user"] = listen.user
        if listen.group is not None:
            flags["unix_group"] = listen.group
    else:
        if listen.allow is not None:
            flags["allow"] = [listen.allow]
        if listen.reuseport:
            flags["reuseport"] = True
    if _keepalive(command):
        flags["keepalive"] = True
    if command.verbosity >= _DEBUG_VERBOSITY:
        flags["log_level"] = "debug"
    if command.dump is not DumpMode.OFF:
        flags["dump"] = command.dump.value
    if isinstance(connect, ConnectAddress) and connect.sourceport is not None:
        flags["source_port"] = connect.sourceport
    retry = connect.retry
    if retry is not None:
        flags["connect_retries"] = "forever" if retry.times is None else str(retry.times)
        if retry.interval is not None:
            flags["connect_retry_interval"] = retry.interval
    return flags


def _keepalive(command: SocatCommand) -> bool:
    listen, connect = command.listen, command.connect
    return (isinstance(listen, ListenAddress) and listen.keepalive) or (
        isinstance(connect, ConnectAddress) and connect.keepalive
    )


@dataclass(frozen=True)
class Summary:
    """What a socat command line carries into pyforward, and what it leaves behind."""

    carried: tuple[str, ...]
    dropped: tuple[str, ...]


def summarize(command: SocatCommand, *, as_service: bool = False) -> Summary:
    """Say, one line per item, what is carried over and what is dropped, and why.

    `as_service`: the command becomes a pyforward service (settings only), which serves
    every connection; run as `pyforward-socat`, a command without `fork` serves one.
    """
    listen, connect = command.listen, command.connect
    flags = to_flags(command)
    carried = [_listen_summary(listen), f"target {_target_text(connect)}"]
    dropped: list[str] = []
    if isinstance(listen, ListenAddress) and listen.transport is Transport.UDP:
        from pyforward.socat import udp  # noqa: PLC0415

        assert isinstance(connect, ConnectAddress), "a UDP listen forwards to a UDP target"
        carried[1] = f"target {host_port(connect.host, connect.port)} (UDP)"
        carried += udp.udp_summary(listen, command.idle_timeout, as_service=as_service)
        if not listen.fork and as_service:
            dropped.append(
                "no fork: socat served one peer per start; the pyforward service serves every peer"
            )
    elif listen.fork:
        carried.append("fork: every connection is served, all in one process")
    elif as_service:
        dropped.append(
            "no fork: socat served one connection per start; the pyforward service serves "
            "every connection"
        )
    else:
        carried.append("no fork: one connection is served, then pyforward exits")
    if isinstance(listen, ListenAddress):
        if listen.reuseaddr and listen.transport is Transport.TCP:
            carried.append(f"reuseaddr: {_ALWAYS_ON['reuseaddr']}")
        if listen.reuseport:
            carried.append("reuseport: SO_REUSEPORT on the listener (reuseport)")
        if listen.allow is not None:
            carried.append(f"range={listen.allow}: only clients in it are served (allow)")
        if listen.ipv6_v6only is not None:
            carried.append(f"ipv6-v6only={int(listen.ipv6_v6only)}: listen {listen_text(listen)}")
    else:
        carried += _unix_listen_summary(listen)
    if (isinstance(listen, ListenAddress) and listen.nodelay) or (
        isinstance(connect, ConnectAddress) and connect.nodelay
    ):
        carried.append(f"nodelay: {_ALWAYS_ON['nodelay']}")
    if listen.su is not None:
        if as_service:
            dropped.append(f"su={listen.su}: the service runs as its own unprivileged user")
        else:
            carried.append(f"su={listen.su}: pyforward becomes {listen.su} once it listens")
    udp_listen = isinstance(listen, ListenAddress) and listen.transport is Transport.UDP
    if command.idle_timeout and udp_listen:
        carried.append(f"flow idle timeout {_seconds_text(command.idle_timeout)}s (-T)")
    elif command.idle_timeout:
        carried.append(f"idle timeout {_seconds_text(command.idle_timeout)}s (-T)")
    elif command.idle_timeout is not None:
        carried.append("no idle timeout (-T 0)")
    if "connect_timeout" in flags:
        carried.append(f"connect timeout {_seconds_text(connect.connect_timeout or 0.0)}s")
    if "backlog" in flags:
        carried.append(f"backlog {listen.backlog}")
    if "max_connections" in flags:
        carried.append(f"max connections {listen.max_children} (max-children)")
    if "keepalive" in flags:
        carried.append("keepalive on both legs")
    if isinstance(connect, ConnectAddress) and connect.sourceport is not None:
        carried.append(
            f"sourceport={connect.sourceport}: connects from that port (source_port); one "
            "connection to the target at a time, as with socat"
        )
    if connect.retry is not None:
        times = "forever" if connect.retry.times is None else f"retry={connect.retry.times}"
        interval = _seconds_text(connect.retry.interval or 1.0)
        carried.append(
            f"{times}: a refused dial is tried again every {interval}s, the client waiting "
            "(connect_retries, connect_retry_interval)"
        )
    if command.dump is not DumpMode.OFF:
        shown = " ".join(["-v"] * command.dump_text + ["-x"] * command.dump_hex)
        carried.append(f"{shown}: the bytes are written to stderr as socat does (relay by copy)")
    if command.verbosity >= _DEBUG_VERBOSITY:
        carried.append("log level debug (-dddd)")
    elif command.verbosity:
        dropped.append(
            f"-{'d' * command.verbosity}: pyforward logs at info by default "
            "(start, listen, one line per connection)"
        )
    if command.buffer_size is not None:
        dropped.append(f"-b {command.buffer_size}: the relay sizes its own buffers")
    if command.close_delay is not None:
        dropped.append(
            f"-t {_seconds_text(command.close_delay)}: pyforward keeps each direction open "
            "until it ends (half-close), with no close delay"
        )
    return Summary(tuple(carried), tuple(dropped))


def _listen_summary(listen: Listen) -> str:
    if isinstance(listen, UnixListenAddress):
        return f"listen unix:{listen.name} (from {keyword_of_listen(listen)})"
    return f"listen {_listen_display(listen)} (from {_listen_keyword(listen)}:{listen.port}" + (
        f",bind={listen.bind})" if listen.bind else ")"
    )


def _unix_listen_summary(listen: UnixListenAddress) -> list[str]:
    lines = []
    if listen.mode is not None:
        lines.append(f"mode {listen.mode:04o} of the socket file (unix_mode)")
    if listen.user is not None:
        lines.append(f"owner {listen.user} of the socket file (unix_user)")
    if listen.group is not None:
        lines.append(f"group {listen.group} of the socket file (unix_group)")
    if listen.unlink_early:
        lines.append(
            "unlink-early: a stale socket file is replaced; unlike socat, one a server "
            "listens on is refused, and a file that is no socket is never removed"
        )
    if listen.unlink_close is not None:
        lines.append(
            "unlink-close: the socket file is removed on exit (always, as socat's default)"
        )
    return lines


def _listen_display(listen: ListenAddress) -> str:
    text = listen_text(listen)
    return f"*:{text}" if text.isdigit() else text
