"""The values and options of socat addresses: ports, seconds, numbers, families, option
names and their tables, bind=, range=, the retry options. Pure."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import replace

from pyforward.config.access import parse_network
from pyforward.config.addresses import PortError, host_port, parse_listen, port_number
from pyforward.config.model import MAX_BACKLOG
from pyforward.errors import ConfigError
from pyforward.socat.lexer import RawAddress
from pyforward.socat.model import Family, ListenAddress, Retry
from pyforward.socat.unix import UNIX_LISTEN_OPTIONS, UNIX_OPTION_ALIASES

INT_MAX = 2**31 - 1  # the kernel takes backlog and counts as a C int


# --- values


def parse_port(text: str, where: str, *, minimum: int) -> int:
    try:
        return port_number(text, minimum)
    except PortError as exc:
        # socat itself would look a name up in /etc/services.
        names = " (pyforward takes port numbers, not service names)" if exc.not_a_number else ""
        raise ConfigError(f"{where}: {exc}{names}") from None


_SECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def parse_seconds(text: str, what: str) -> float:
    if not _SECONDS.fullmatch(text):
        raise ConfigError(f"{what}: expected a number of seconds, got {text!r}")
    return float(text)


def parse_whole(text: str, what: str, *, minimum: int = 0, maximum: int = INT_MAX) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{what}: expected a whole number, got {text!r}")
    number = int(text)
    if not minimum <= number <= maximum:
        raise ConfigError(f"{what} must be {minimum}-{maximum}, got {number}")
    return number


def unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _literal_family(host: str) -> Family | None:
    try:
        version = ipaddress.ip_address(host.split("%", 1)[0]).version
    except ValueError:
        return None
    return Family.IPV4 if version == 4 else Family.IPV6


def check_family(host: str, family: Family, where: str, keyword: str) -> None:
    found = _literal_family(host)
    if family is not Family.ANY and found is not None and found is not family:
        version = "IPv4" if family is Family.IPV4 else "IPv6"
        raise ConfigError(f"{where}: {keyword.upper()} takes an {version} address, got {host!r}")


# --- options

ALWAYS_ON = {
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
LISTEN_OPTIONS = (
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
CONNECT_OPTIONS = (
    "connect-timeout",
    "keepalive",
    "nodelay",
    "forever",
    "retry",
    "interval",
    "sourceport",
)
UNIX_CONNECT_OPTIONS = ("connect-timeout", "forever", "retry", "interval")
# Every table of options, for "does not apply to" rather than "unknown".
_ALL_OPTIONS = (LISTEN_OPTIONS, CONNECT_OPTIONS, UNIX_LISTEN_OPTIONS, UNIX_CONNECT_OPTIONS)


def is_on(name: str, value: str | None, where: str) -> bool:
    """socat's boolean and integer switches: bare means on, =N means N != 0."""
    if value is None:
        return True
    return parse_whole(value, f"{where}: {name}={value}", minimum=0) != 0


def needs_value(name: str, value: str | None, where: str, example: str) -> str:
    if value is None or value == "":
        raise ConfigError(f"{where}: option {name} needs a value: {name}={example}")
    return value


def option_name(raw: RawAddress, name: str, allowed: tuple[str, ...], keyword: str) -> str:
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


def check_params(raw: RawAddress, expected: Sequence[str]) -> None:
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


def parse_bind(value: str, where: str) -> str:
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


def parse_timeout(name: str, value: str | None, where: str) -> float:
    seconds = parse_seconds(needs_value(name, value, where, "5"), f"{where}: {name}")
    if seconds <= 0:
        raise ConfigError(f"{where}: {name} must be more than 0 seconds")
    return seconds


RETRY_OPTIONS = ("forever", "retry", "interval")


def updated_retry(
    retry: Retry | None, option: str, name: str, value: str | None, where: str
) -> Retry | None:
    """forever / retry=N / interval=SECONDS, on top of what the address said so far."""
    current = retry or Retry(times=0)
    if option == "forever":
        return replace(current, times=None) if is_on(name, value, where) else current
    if option == "retry":
        times = parse_whole(needs_value(name, value, where, "5"), f"{where}: {name}")
        return replace(current, times=times)
    return replace(current, interval=parse_timeout(name, value, where))


def range_network(value: str, where: str) -> str:
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


def reason_of(exc: ConfigError) -> str:
    """The part of an address error after `invalid ... 'TEXT': `, which we replace."""
    message = str(exc)
    return message.split("': ", 1)[1] if "': " in message else message


def parse_backlog(name: str, value: str | None, where: str) -> int:
    text = needs_value(name, value, where, "128")
    return parse_whole(text, f"{where}: {name}", minimum=1, maximum=MAX_BACKLOG)


def parse_max_children(name: str, value: str | None, where: str) -> int:
    return parse_whole(needs_value(name, value, where, "100"), f"{where}: {name}")


def check_bind(address: ListenAddress, where: str, keyword: str) -> None:
    """A listener's bind= names an address of its family that can be listened on."""
    if address.bind is None:
        return
    check_family(address.bind, address.family, where, keyword)
    try:
        parse_listen(host_port(address.bind, address.port))
    except ConfigError as exc:
        raise ConfigError(f"{where}: bind={address.bind}: {reason_of(exc)}") from None
