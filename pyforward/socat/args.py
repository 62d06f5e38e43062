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
import ipaddress
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from pathlib import PurePosixPath

from pyforward.config.addresses import PortError, host_port, parse_listen, parse_target, port_number
from pyforward.config.settings import MAX_BACKLOG, Transport
from pyforward.errors import ConfigError

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


@dataclass(frozen=True)
class SocatCommand:
    """A parsed socat command line within the supported subset."""

    listen: ListenAddress
    connect: ConnectAddress
    idle_timeout: float | None = None  # -T; 0 means none, as in socat
    verbosity: int = 0  # number of -d
    buffer_size: int | None = None  # -b: accepted, not used
    close_delay: float | None = None  # -t: accepted, not used

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
    (("unix", "abstract", "local"), "pyforward forwards TCP, not Unix sockets"),
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
_SUPPORTED_HINT = "pyforward-socat takes TCP-LISTEN:PORT[,OPTIONS] TCP:HOST:PORT[,OPTIONS]"


def _refuse_type(raw: _RawAddress) -> ConfigError:
    keyword = raw.keyword
    lowered = keyword.lower()
    shown = keyword.upper()
    if keyword == "-":
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
}
_LISTEN_OPTIONS = ("fork", "reuseaddr", "bind", "backlog", "max-children", "keepalive", "nodelay")
_CONNECT_OPTIONS = ("connect-timeout", "keepalive", "nodelay")


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
    other = _CONNECT_OPTIONS if allowed is _LISTEN_OPTIONS else _LISTEN_OPTIONS
    if canonical in other:
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
        else:  # connect-timeout
            text = _needs(name, value, where, "5")
            seconds = _seconds(text, f"{where}: {name}")
            if seconds <= 0:
                raise ConfigError(f"{where}: {name} must be more than 0 seconds")
            address = replace(address, connect_timeout=seconds)
    return address


def _reason(exc: ConfigError) -> str:
    """The part of an address error after `invalid ... 'TEXT': `, which we replace."""
    message = str(exc)
    return message.split("': ", 1)[1] if "': " in message else message


# --- command-line options

_OPTIONS_WITH_VALUE = ("-T", "-t", "-b")
_REFUSED_OPTIONS = {
    "-v": "pyforward does not dump traffic",
    "-x": "pyforward does not dump traffic",
    "-r": "pyforward does not dump traffic",
    "-R": "pyforward does not dump traffic",
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


def parse_socat_args(argv: Sequence[str]) -> SocatCommand:
    """Parse socat's arguments (without the program name) into a `SocatCommand`."""
    verbosity = 0
    idle_timeout: float | None = None
    close_delay: float | None = None
    buffer_size: int | None = None
    index = 0
    # As in socat, options come first; the first word not starting with "-" (or a
    # lone "-", which is the STDIO address) begins the addresses.
    while index < len(argv) and argv[index].startswith("-") and argv[index] != "-":
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
        refused = arg[:3] if arg[:3] in _REFUSED_OPTIONS else arg[:2]
        if refused in _REFUSED_OPTIONS:
            raise ConfigError(
                f"socat option {refused} is not supported: {_REFUSED_OPTIONS[refused]}"
            )
        raise ConfigError(
            f"unknown socat option {arg!r}: pyforward-socat takes -d, -T SECONDS, "
            "-t SECONDS, -b SIZE, -ls"
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
        if lowered not in _LISTEN_TYPES and lowered not in _CONNECT_TYPES:
            raise _refuse_type(raw)
    if first.keyword.lower() not in _LISTEN_TYPES:
        raise ConfigError(
            "the first address must be TCP-LISTEN (pyforward listens, then connects to "
            f"the target for each client), got {first.keyword.upper()}"
        )
    if second.keyword.lower() not in _CONNECT_TYPES:
        raise ConfigError(
            f"the second address must be TCP:HOST:PORT (the target), got {second.keyword.upper()}"
        )
    return SocatCommand(
        listen=_parse_listen(first, _LISTEN_TYPES[first.keyword.lower()]),
        connect=_parse_connect(second, _CONNECT_TYPES[second.keyword.lower()]),
        idle_timeout=idle_timeout,
        verbosity=verbosity,
        buffer_size=buffer_size,
        close_delay=close_delay,
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
    listen = command.listen
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
    if listen.keepalive:
        words.append("keepalive")
    if listen.nodelay:
        words.append("nodelay")
    argv.append(",".join(words))
    connect = command.connect
    host = f"[{connect.host}]" if ":" in connect.host else _escape(connect.host)
    words = [f"{_connect_keyword(connect)}:{host}:{connect.port}"]
    if connect.connect_timeout is not None:
        words.append(f"connect-timeout={_seconds_text(connect.connect_timeout)}")
    if connect.keepalive:
        words.append("keepalive")
    if connect.nodelay:
        words.append("nodelay")
    argv.append(",".join(words))
    return argv


def listen_text(listen: ListenAddress) -> str:
    """The listen address in pyforward's form: `PORT`, `0.0.0.0:PORT` or `HOST:PORT`."""
    if listen.bind is not None:
        return host_port(listen.bind, listen.port)
    if listen.family is Family.IPV4:
        return f"0.0.0.0:{listen.port}"
    # TCP6-LISTEN without ipv6only accepts IPv4-mapped clients on Linux, like
    # pyforward's every-interface listener; socat's TCP-LISTEN is IPv4 only, a subset.
    return str(listen.port)


def to_flags(command: SocatCommand) -> dict[str, object]:
    """The settings flags (keys of pyforward's config schema) this command amounts to."""
    listen, connect = command.listen, command.connect
    flags: dict[str, object] = {
        "listen": listen_text(listen),
        "target": [host_port(connect.host, connect.port)],
    }
    if listen.transport is Transport.UDP:
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
    if listen.keepalive or connect.keepalive:
        flags["keepalive"] = True
    if command.verbosity >= _DEBUG_VERBOSITY:
        flags["log_level"] = "debug"
    return flags


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
    carried = [
        f"listen {_listen_display(listen)} (from {_listen_keyword(listen)}:{listen.port}"
        + (f",bind={listen.bind})" if listen.bind else ")"),
        f"target {host_port(connect.host, connect.port)}",
    ]
    dropped: list[str] = []
    if listen.transport is Transport.UDP:
        from pyforward.socat import udp  # noqa: PLC0415

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
    if listen.reuseaddr and listen.transport is Transport.TCP:
        carried.append(f"reuseaddr: {_ALWAYS_ON['reuseaddr']}")
    if listen.nodelay or connect.nodelay:
        carried.append(f"nodelay: {_ALWAYS_ON['nodelay']}")
    if command.idle_timeout and listen.transport is Transport.UDP:
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


def _listen_display(listen: ListenAddress) -> str:
    text = listen_text(listen)
    return f"*:{text}" if text.isdigit() else text
